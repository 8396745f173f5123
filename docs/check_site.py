"""Check the built docs site as a reader sees it, in headless Chromium with no network.

    python docs/check_site.py [--site DIR] [--shots DIR]

Builds the site (unless `--site` names a built one), then for every page:

- no script or stylesheet comes from the network (`<script src="https://...">`);
- with every host unresolvable, each Mermaid diagram becomes a drawing (the theme replaces
  its `<pre class="mermaid">` only once the vendored Mermaid has rendered it), and a
  screenshot with the diagram scrolled into view shows it (ink where the diagram is);
- no code block, printed output or table is cut off (wider than its box).

A probe script is added to a copy of each page; Chromium runs it, then writes the DOM
(`--dump-dom`) or a screenshot: each page's first 1280 x 2000 screen, and each diagram cut
out of a screenshot of its whole page. They land in `--shots` (default `build/site-shots/`)
to look at. Exit status 1 and one line per problem if anything fails.
"""

from __future__ import annotations

import argparse
import html as html_module
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1280, 2000
REMOTE = re.compile(r'<(?:script|link)\b[^>]*\b(?:src|href)="(https?://[^"]+)"[^>]*>')
PROBE_ID = "fluxpy-site-check"

# Runs in the page after load (and after the theme has had time to render the diagrams) and
# reports what it finds in a <pre id=PROBE_ID> for --dump-dom: the diagrams drawn and where
# (page coordinates), the blocks cut off, the page's height.
PROBE = """
<script>
window.addEventListener("load", () => setTimeout(() => {
  const drawn = [...document.querySelectorAll("div.mermaid")].map(el => {
    const r = el.getBoundingClientRect();
    return [r.left, r.top + window.scrollY, r.width, r.height];
  });
  const cut = [...document.querySelectorAll(
      ".md-content pre > code, .md-content .md-typeset__scrollwrap")]
    .filter(el => el.scrollWidth > el.clientWidth + 1)
    .map(el => el.textContent.trim().split("\\n")[0].slice(0, 80));
  const report = document.createElement("pre");
  report.id = "PROBE_ID";
  report.textContent = JSON.stringify(
    {drawn: drawn, cut: cut, height: document.documentElement.scrollHeight});
  document.body.appendChild(report);
}, 4000));
</script>
""".replace("PROBE_ID", PROBE_ID)


@dataclass
class PageReport:
    """What the probe found on one page, and where its screenshots are."""

    page: str
    diagrams: int  # Mermaid blocks in the built HTML
    rendered: int = 0  # diagrams the theme replaced with Mermaid's drawing
    cut: list[str] = field(default_factory=list)
    shots: list[Path] = field(default_factory=list)
    blank_diagrams: list[int] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = []
        if self.rendered != self.diagrams:
            found.append(f"{self.page}: {self.rendered} of {self.diagrams} diagrams rendered "
                         "(without a network)")
        found += [f"{self.page}: diagram {k} is blank in its screenshot"
                  for k in self.blank_diagrams]
        found += [f"{self.page}: cut off at the column's edge: {text!r}" for text in self.cut]
        return found


def chromium() -> str | None:
    """The Chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def build_site(dest: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT))
    mkdocs = Path(sys.executable).with_name("mkdocs")
    subprocess.run([str(mkdocs), "build", "--strict", "--quiet", "-d", str(dest)], cwd=ROOT,
                   env=env, check=True, timeout=600)


def pages(site: Path) -> list[Path]:
    """Every page's index.html (not the search page or 404)."""
    return sorted(p for p in site.rglob("index.html") if p.parent.name != "search")


def remote_sources(site: Path) -> list[str]:
    """`page: url` for each script or stylesheet the built pages load from the network."""
    found = []
    for html in site.rglob("*.html"):
        for url in REMOTE.findall(html.read_text(encoding="utf-8")):
            found.append(f"{html.relative_to(site)}: {url}")
    return found


def run_chromium(url: str, profile: Path, height: int, *extra: str) -> str:
    """Chromium headless on `url` with every host name unresolvable; its stdout."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
               f"--window-size={WIDTH},{height}", "--hide-scrollbars",
               "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=15000",
               *extra, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return done.stdout


def check_page(site: Path, html: Path, shots: Path, work: Path,
               first_screen: bool = True) -> PageReport:
    """Probe one page of `site` and screenshot it into `shots`: its first screen (unless
    `first_screen` is false), and, for a page with diagrams, the whole page in one tall window
    with each diagram cut out of it."""
    name = html.parent.relative_to(site).as_posix() if html.parent != site else "index"
    text = html.read_text(encoding="utf-8")
    report = PageReport(name, diagrams=text.count('<pre class="mermaid">'))
    probed = html.with_name("index.probe.html")
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    try:
        url, slug, profile = probed.as_uri(), name.replace("/", "-"), work / "profile"
        found = _probe(url, profile, name, HEIGHT)
        report.rendered, report.cut = len(found["drawn"]), found["cut"]
        if first_screen:
            report.shots.append(shots / f"{slug}.png")
            run_chromium(url, profile, HEIGHT, f"--screenshot={report.shots[-1]}")
        if found["drawn"]:
            tall = min(int(found["height"]) + 1, 16000)
            whole = work / f"{slug}-whole.png"
            drawn = _probe(url, profile, name, tall)["drawn"]
            run_chromium(url, profile, tall, f"--screenshot={whole}")
            for k, rect in enumerate(drawn):
                report.shots.append(shots / f"{slug}-diagram-{k}.png")
                if not _cut_out(whole, rect, report.shots[-1]):
                    report.blank_diagrams.append(k)
    finally:
        probed.unlink()
    return report


def _probe(url: str, profile: Path, page: str, height: int) -> dict:
    dom = run_chromium(url, profile, height, "--dump-dom")
    found = re.search(rf'<pre id="{PROBE_ID}">(.*?)</pre>', dom, re.S)
    if found is None:
        raise RuntimeError(f"{page}: the probe did not report (did the page load?)")
    return json.loads(html_module.unescape(found[1]))


def _cut_out(whole: Path, rect: list[float], dest: Path) -> bool:
    """Save the diagram's box of the page's screenshot to `dest`; whether it holds a
    drawing (at least 2% of its pixels clearly darker than the page's white)."""
    from PIL import Image

    left, top, width, height = rect
    if width < 50 or height < 30:
        return False
    image = Image.open(whole).convert("RGB").crop(
        (int(left) - 8, int(top) - 8, int(left + width) + 8, int(top + height) + 8))
    image.save(dest)
    grey = image.convert("L").histogram()
    return sum(grey[:200]) > 0.02 * image.width * image.height


def check_site(site: Path, shots: Path,
               first_screens: bool = True) -> tuple[list[PageReport], list[str]]:
    """Every page's report and every problem found, as lines."""
    shots.mkdir(parents=True, exist_ok=True)
    problems = [f"fetched from the network: {s}" for s in remote_sources(site)]
    reports = []
    with tempfile.TemporaryDirectory() as work:
        for html in pages(site):
            reports.append(check_page(site, html, shots, Path(work), first_screens))
    problems += [line for r in reports for line in r.problems()]
    return reports, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, help="a built site (default: build one)")
    parser.add_argument("--shots", type=Path, default=ROOT / "build" / "site-shots")
    args = parser.parse_args(argv)
    if chromium() is None:
        print("check_site: Chromium is not installed (apt-get install chromium)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        site = args.site
        if site is None:
            site = Path(tmp) / "site"
            build_site(site)
        reports, problems = check_site(site, args.shots)
    for r in reports:
        print(f"{r.page}: {r.rendered}/{r.diagrams} diagrams drawn, {len(r.cut)} cut off; "
              f"{', '.join(str(s) for s in r.shots)}")
    for line in problems:
        print(f"PROBLEM {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
