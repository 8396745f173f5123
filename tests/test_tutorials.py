"""The tutorials are tests: every ```python block of `tutorials/*.md` runs, page by page.

One item per block (`test_tutorial_block[custom-callbacks.md:57]`, the page and the line of
the block's first line); the blocks of a page share a namespace and run in order in a working
directory of their own. Selecting one block runs the blocks before it on its page first.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tutorial_pages import (
    TUTORIALS,
    PageRun,
    code_blocks,
    expected_outputs,
    generated_fences,
    pages,
)

import fluxpy

BLOCKS = [block for page in pages() for block in code_blocks(page)]
GENERATED = [(var, fence) for page in pages() for var, fence in generated_fences(page)]
_RUNS: dict[Path, PageRun] = {}


def _page_run(page: Path, tmp_path_factory: pytest.TempPathFactory) -> PageRun:
    run = _RUNS.get(page)
    if run is None:
        run = _RUNS[page] = PageRun(page, tmp_path_factory.mktemp(page.stem))
    if run.failed is not None:
        pytest.fail(f"not run: the block at {run.failed.id} failed before it", pytrace=False)
    return run


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_tutorial_block(block, tmp_path_factory):
    run = _page_run(block.page, tmp_path_factory)
    index = run.blocks.index(block)
    if run.done > index:
        pytest.fail(f"{block.id} already ran in this session", pytrace=False)
    while run.done <= index:
        run.run_next()
    expected = expected_outputs(block.page).get(block.line)
    if expected is not None:
        printed = _normalised(run.outputs[block.line])
        assert printed == _normalised(expected.text), (
            f"the output shown at {expected.id} is not what the block at {block.id} prints; "
            f"it printed:\n{printed}"
        )
    if run.done == len(run.blocks):
        missing = run.missing_images()
        assert not missing, f"{block.page.name} shows {missing}, which its code did not write"


def _normalised(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


@pytest.mark.parametrize(("var", "fence"), GENERATED, ids=[f.id for _, f in GENERATED])
def test_generated_block_matches_the_code(var, fence, tmp_path_factory):
    run = _page_run(fence.page, tmp_path_factory)
    run.run_all()
    assert var in run.namespace, f"{fence.page.name} marks {fence.id} as {var}, never assigned"
    produced = str(run.namespace[var]).rstrip("\n") + "\n"
    assert fence.text == produced, (
        f"the block at {fence.id} is not what the page's code produces; replace it with:\n"
        f"{produced}"
    )


def test_tutorials_have_many_code_blocks():
    assert len(pages()) >= 11
    assert len(BLOCKS) >= 25


def test_api_reference_lists_every_public_name():
    text = (TUTORIALS / "reference.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: fluxpy\.(\w+)\s*$", text, flags=re.M))
    missing = [n for n in fluxpy.__all__ if n not in documented and f"`fluxpy.{n}`" not in text]
    assert missing == []
