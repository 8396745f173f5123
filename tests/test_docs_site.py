"""The built docs site, as a reader sees it: every page in headless Chromium with no network
(docs/check_site.py, also `make docs-check`). Needs Chromium from the system's packages."""

import shutil

import pytest
from check_site import PageReport, build_site, check_page, check_site, chromium

pytestmark = pytest.mark.skipif(chromium() is None,
                                reason="Chromium is not installed (apt-get install chromium)")

VENDORED = '<script src="../assets/javascripts/mermaid-11.17.2.min.js"></script>'
STYLES = '<link rel="stylesheet" href="../assets/stylesheets/fluxpy.css">'


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs") / "site"
    build_site(path)
    return path


@pytest.fixture(scope="module")
def checked(site, tmp_path_factory):
    return check_site(site, tmp_path_factory.mktemp("shots"), first_screens=False)


def test_every_page_passes_the_check(checked):
    reports, problems = checked
    assert problems == []
    assert {r.page for r in reports} >= {"index", "getting-started", "dependencies", "reference"}


def test_every_diagram_is_drawn_offline_and_visible_in_a_screenshot(checked):
    reports, _ = checked
    drawn = {r.page: (r.diagrams, r.rendered, r.blank_diagrams) for r in reports if r.diagrams}
    # The events of a training step, and the callback graph of the dependencies page.
    assert drawn == {"getting-started": (1, 1, []), "dependencies": (1, 1, [])}
    shots = [s for r in reports for s in r.shots]
    assert sorted(s.name for s in shots) == ["dependencies-diagram-0.png",
                                             "getting-started-diagram-0.png"]
    assert all(s.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for s in shots)


def test_no_page_loads_anything_from_the_network(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "https://fonts.g" not in text and "unpkg.com" not in text, page
    assert (site / "assets/javascripts/mermaid-11.17.2.min.js").stat().st_size > 1_000_000


def broken_copy(site, tmp_path, page, remove):
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    html = copy / page / "index.html"
    text = html.read_text(encoding="utf-8")
    assert remove in text
    html.write_text(text.replace(remove, ""), encoding="utf-8")
    return copy, html


def test_a_page_without_the_vendored_mermaid_is_caught(site, tmp_path):
    # The theme would fetch Mermaid from a CDN, which cannot be reached.
    copy, html = broken_copy(site, tmp_path, "getting-started", VENDORED)
    report = check_page(copy, html, tmp_path, tmp_path, first_screen=False)
    assert (report.diagrams, report.rendered) == (1, 0)
    assert report.problems() == ["getting-started: 0 of 1 diagrams rendered (without a network)"]


def test_code_cut_off_at_the_columns_edge_is_caught(site, tmp_path):
    copy, html = broken_copy(site, tmp_path, "state-and-permissions", STYLES)
    report: PageReport = check_page(copy, html, tmp_path, tmp_path, first_screen=False)
    assert any(line.startswith("L1Penalty may not write learner.batch.loss") for line in report.cut)


def test_the_reference_documents_fluxpys_own_words(site):
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    # Class attributes (CSVBackend.HEADER, LearningRate.key) are not documented with
    # Python's docstrings of tuple and str.
    assert "Built-in immutable sequence" not in reference
    assert "str(object=" not in reference
    # explain is the function, documented once, not its module.
    assert reference.count('id="fluxpy.explain.explain"') == 1
    assert 'id="fluxpy.explain"' not in reference
