"""Child processes for the kill and Ctrl-C tests: a script the test writes, starts, waits
for (the child reports on stdout when it reaches the moment of interest), and then kills or
interrupts."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest


def child_script(folder: Path, name: str, source: str) -> tuple[Path, ModuleType]:
    """Writes `source` to `folder/NAME.py` and imports it too: the child runs the file, and
    the test builds with the module's own functions the learner it checks the child's files
    against."""
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def start(script: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, report: str) -> str:
    """The child's next line, which must start with `report`; a child that says something
    else, or ends first, is killed and fails the test with its stderr."""
    line = proc.stdout.readline().strip()
    if not line.startswith(report):
        proc.kill()
        pytest.fail(f"the child did not report {report!r} but {line!r}\n{proc.stderr.read()}")
    return line


def interrupt(proc: subprocess.Popen) -> str:
    """Ctrl-C: SIGINT to the child, which must end within two minutes; its stderr."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
