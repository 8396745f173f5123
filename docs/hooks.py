"""mkdocs hooks (`hooks:` in mkdocs.yml) for the tutorials site.

- Before a build, the pages whose generated figures are missing or older than the page are run
  (`tutorial_pages.make_images`), so a fresh clone builds without running the tests first.
- The comparison page's `<!-- benchmark-results -->` marker becomes the tables and plots that
  `make bench` wrote to `benchmarks/results/`.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

# mkdocs loads this file by path, not as a package: its sibling is found through sys.path.
sys.path.insert(0, str(Path(__file__).parent))

from tutorial_pages import GENERATED, ROOT, make_images, stale_pages

BENCHMARK_RESULTS = ROOT / "benchmarks" / "results"
BENCHMARK_MARKER = "<!-- benchmark-results -->"
_BENCHMARK_ORDER = ("results", "overhead", "threaded", "dispatch")


def on_pre_build(config) -> None:
    make_images(stale_pages())
    pngs = sorted(BENCHMARK_RESULTS.glob("*.png")) if BENCHMARK_RESULTS.is_dir() else []
    if pngs:
        target = GENERATED / "benchmarks"
        target.mkdir(parents=True, exist_ok=True)
        for png in pngs:
            _copy_if_changed(png, target / png.name)


def _copy_if_changed(source: Path, target: Path) -> None:
    """Copy unless `target` already holds the same bytes (`mkdocs serve` rebuilds on writes)."""
    if not target.exists() or target.read_bytes() != source.read_bytes():
        shutil.copyfile(source, target)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if BENCHMARK_MARKER in markdown:
        markdown = markdown.replace(BENCHMARK_MARKER, benchmark_results())
    return markdown


def benchmark_results() -> str:
    """The Markdown tables and plots of `benchmarks/results/`, as the comparison page shows them:
    the summary against the targets first, then each benchmark's table with its plot."""
    missing = "*No results yet: `make bench` writes them to `benchmarks/results/`.*"
    if not BENCHMARK_RESULTS.is_dir():
        return missing
    files = sorted(BENCHMARK_RESULTS.glob("*.md")) + sorted(BENCHMARK_RESULTS.glob("*.png"))
    rank = {stem: i for i, stem in enumerate(_BENCHMARK_ORDER)}
    files.sort(key=lambda f: (rank.get(f.stem, len(rank)), f.stem, f.suffix != ".md"))
    parts = []
    for file in files:
        if file.suffix == ".md":
            parts.append(_demote_headings(file.read_text(encoding="utf-8").strip()))
        else:
            title = file.stem.replace("_", " ")
            parts.append(f"![{title}](assets/generated/benchmarks/{file.name})")
    return "\n\n".join(parts) or missing


def _demote_headings(text: str) -> str:
    """Put a results file's headings under the page's own section (level 3 and below)."""
    return re.sub(r"^(#{1,4}) ", lambda m: "#" * (len(m[1]) + 2) + " ", text, flags=re.M)
