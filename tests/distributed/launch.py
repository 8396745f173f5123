"""Launching the torchrun workers of tests/distributed from a test, on 127.0.0.1.

A launcher runs in a session of its own, so that a hang can be ended with every rank it
started; the ranks import this checkout's fluxpy, and use one thread each.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_worker(path: Path) -> ModuleType:
    """The worker script as a module, for the tests to build the learners the ranks built."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Set, with a value of its own, in the environment of each launcher, which its ranks inherit:
#: torchrun starts every rank in a session of its own, so a hang is ended by this mark.
MARK = "FLUXPY_TEST_LAUNCHER"


def torchrun(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """`python -m torch.distributed.run ARGS`, its stdout and stderr together in one pipe."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    mark = uuid.uuid4().hex
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath, MARK: mark}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=cwd, start_new_session=True)
    proc.mark = mark
    return proc


def launched_by(proc: subprocess.Popen) -> list[int]:
    """The running processes that carry the launcher `proc`'s mark: it and its ranks."""
    wanted = f"{MARK}={proc.mark}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and wanted in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def kill_launched(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher `proc` and its ranks."""
    for pid in launched_by(proc):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def two_ranks(script: Path, *args: str) -> list[str]:
    """The torchrun arguments that start `script ARGS` in two processes on this machine."""
    return ["--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
            str(script), *args]


def finish(launchers: list[subprocess.Popen], timeout: float) -> list[str]:
    """What each launcher printed; launchers still running after `timeout` seconds are
    killed with all their ranks, and the test fails as a hang."""
    outputs = []
    try:
        for proc in launchers:
            outputs.append(proc.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for proc in launchers:  # the ranks too: they keep the pipe open while they live
            kill_launched(proc)
        tail = launchers[len(outputs)].communicate()[0][-4000:]
        pytest.fail(f"the ranks did not finish in {timeout} s (a hang):\n{tail}")
    return outputs
