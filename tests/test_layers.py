"""The package tree is the architecture: core < engine < support < callbacks < the learner and
what drives it. import-linter's layers contract (pyproject.toml) checks every import, lazy
ones inside functions included."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_the_layers_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fluxpy's layers KEPT" in result.stdout


@pytest.mark.parametrize(("module", "upward"), [
    ("fluxpy/core/graph.py", "from ..callbacks.metrics import Metrics"),
    ("fluxpy/engine/loop.py", "from ..learner import Learner"),
    ("fluxpy/callbacks/recorder.py", "from ..explain import explain"),
])
def test_an_upward_import_breaks_the_contract_even_inside_a_function(tmp_path, module, upward):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "fluxpy", copy / "fluxpy")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    source = copy / module
    source.write_text(source.read_text() + f"\n\ndef _sneaky():\n    {upward}\n")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "fluxpy's layers BROKEN" in result.stdout
