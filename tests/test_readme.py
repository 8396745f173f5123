"""The README's example runs as it is written."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_trains_and_explains(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], str(README), "exec"), namespace)
    printed = out.getvalue()
    assert "Callbacks in run order" in printed
    assert "valid accuracy" in printed
    learner = namespace["learner"]
    import fluxpy as fp

    assert learner.cbstate.history[fp.TrainingPhase()].epochs == 3
