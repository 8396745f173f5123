"""The tutorials' code, run: every ```python block of `tutorials/*.md`, page by page, in order.

The blocks of one page share one namespace (a module named after the page) and run in a
working directory of their own, so files the examples write land there. Code compiled from a
block keeps the page's line numbers, so a traceback points at the Markdown line.

Conventions the pages follow:

- `<!-- no-test -->` on the line right before a fence: that block is shown, not run.
- `![...](assets/generated/NAME.png)`: an image the page's code writes as `NAME.png` in its
  working directory; it is copied to `tutorials/assets/generated/` for the site.
- `<!-- generated: VAR -->` right before a fenced block: that block's text must equal the
  value the page's code leaves in the variable `VAR` (tests/test_tutorials.py checks it).
- `<!-- output -->` right before a fenced block: that block is what the python block before
  it prints (checked too, so the output shown is the output the code gives).

Two users: `tests/test_tutorials.py` (one pytest item per block) and the docs build
(`docs/hooks.py`), which runs the pages whose figures are missing or older than the page before
a build, so a fresh clone builds without running the tests first.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
GENERATED = TUTORIALS / "assets" / "generated"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^`]*)$")
_NO_TEST = "<!-- no-test -->"
_OUTPUT = "<!-- output -->"
_GENERATED_MARK = re.compile(r"^\s*<!--\s*generated:\s*(?P<var>\w+)\s*-->\s*$")
_IMAGE = re.compile(r"\(assets/generated/(?P<name>[\w.-]+)\)")


@dataclass(frozen=True)
class Fence:
    """A fenced block: its language, its text (dedented), the line of its first text line,
    and the HTML comment on the line before the fence, if any."""

    page: Path
    lang: str
    info: str
    line: int
    text: str
    mark: str

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def fences(page: Path) -> list[Fence]:
    """Every fenced block of `page`, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Fence] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, info = m["indent"], m["ticks"], m["info"].strip()
        closing = re.compile(rf"^{re.escape(indent)}`{{{len(ticks)},}}\s*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"{page.name}:{i + 1}: the fence opened here is never closed")
        body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip()
                for ln in lines[i + 1:end]]
        previous = lines[i - 1].strip() if i > 0 else ""
        lang = info.split()[0] if info else ""
        found.append(Fence(page, lang, info, i + 2, "\n".join(body) + "\n",
                           previous if previous.startswith("<!--") else ""))
        i = end + 1
    return found


def pages() -> list[Path]:
    return sorted(TUTORIALS.glob("*.md"))


def code_blocks(page: Path) -> list[Fence]:
    """The ```python blocks of `page` that run (all but those marked `<!-- no-test -->`)."""
    return [f for f in fences(page) if f.lang == "python" and f.mark != _NO_TEST]


def expected_outputs(page: Path) -> dict[int, Fence]:
    """For python blocks followed by an `<!-- output -->` block: block line -> that block."""
    result: dict[int, Fence] = {}
    last: Fence | None = None
    for f in fences(page):
        if f.lang == "python":
            last = f
        elif f.mark == _OUTPUT:
            if last is None or last.mark == _NO_TEST:
                raise ValueError(f"{f.id}: an output block needs a running python block before it")
            result[last.line] = f
            last = None
    return result


def generated_fences(page: Path) -> list[tuple[str, Fence]]:
    """`(variable, fence)` for each block marked `<!-- generated: variable -->`."""
    result = []
    for f in fences(page):
        m = _GENERATED_MARK.match(f.mark)
        if m:
            result.append((m["var"], f))
    return result


def generated_images(page: Path) -> list[str]:
    """Names of the images under `assets/generated/` that `page` shows."""
    names = _IMAGE.findall(page.read_text(encoding="utf-8"))
    return sorted({n for n in names if "/" not in n})


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


class _Tee(io.TextIOBase):
    """Writes to two streams: what a block prints is shown and kept."""

    def __init__(self, first, second) -> None:
        self.streams = (first, second)

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


class PageRun:
    """One page's namespace and working directory; runs its blocks in order."""

    def __init__(self, page: Path, workdir: Path) -> None:
        self.page = page
        self.workdir = workdir
        self.blocks = code_blocks(page)
        self.done = 0
        self.failed: Fence | None = None
        self.outputs: dict[int, str] = {}
        self._rng = None
        name = "tutorial_" + re.sub(r"\W", "_", page.stem)
        self.module = types.ModuleType(name)
        self.module.__file__ = str(page)
        sys.modules[name] = self.module
        os.environ.setdefault("MPLBACKEND", "Agg")

    @property
    def namespace(self) -> dict:
        return self.module.__dict__

    def run_next(self) -> Fence:
        """Run the next block; on error, re-raise with a note naming the page and line."""
        import torch

        block = self.blocks[self.done]
        code = compile("\n" * (block.line - 1) + block.text, str(self.page), "exec")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: threads only add contention (and vary results)
        try:
            if self._rng is not None:  # as if the page ran as one script, whatever ran between
                torch.set_rng_state(self._rng)
            printed = io.StringIO()
            with _working_directory(self.workdir), contextlib.redirect_stdout(
                _Tee(sys.stdout, printed)
            ):
                exec(code, self.namespace)
            self.outputs[block.line] = printed.getvalue()
            self._rng = torch.get_rng_state()
        except BaseException as exc:
            self.failed = block
            exc.add_note(f"in the python block at {self.page.relative_to(ROOT)}:{block.line}")
            raise
        finally:
            torch.set_num_threads(threads)
            self.done += 1
            self.collect_images()
        return block

    def run_all(self) -> None:
        while self.done < len(self.blocks):
            self.run_next()

    def collect_images(self) -> list[str]:
        """Copy the images the page shows from the working directory to the site's assets."""
        copied = []
        for name in generated_images(self.page):
            made = self.workdir / name
            if made.exists():
                GENERATED.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(made, GENERATED / name)
                copied.append(name)
        return copied

    def missing_images(self) -> list[str]:
        return [n for n in generated_images(self.page) if not (self.workdir / n).exists()]


def stale_pages() -> list[Path]:
    """Pages whose generated images are missing or older than the page."""
    stale = []
    for page in pages():
        for name in generated_images(page):
            image = GENERATED / name
            if not image.exists() or image.stat().st_mtime < page.stat().st_mtime:
                stale.append(page)
                break
    return stale


def make_images(selected: list[Path]) -> None:
    """Run `selected` pages, quietly, to (re)make their images; errors name the block."""
    for page in selected:
        with tempfile.TemporaryDirectory(prefix=f"fluxpy-{page.stem}-") as tmp:
            run = PageRun(page, Path(tmp))
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                run.run_all()
            missing = run.missing_images()
            if missing:
                raise RuntimeError(f"{page.name} shows {missing}, which its code did not write")
