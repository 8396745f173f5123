"""The launch helpers end a hang: the ranks torchrun starts in sessions of their own too."""

from __future__ import annotations

import time

import pytest
from launch import finish, launched_by, torchrun, two_ranks


def test_a_hang_fails_the_test_and_leaves_no_rank_running(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    proc = torchrun(*two_ranks(script))
    deadline = time.monotonic() + 60
    while len(launched_by(proc)) < 3 and time.monotonic() < deadline:  # launcher + 2 ranks
        time.sleep(0.2)
    assert len(launched_by(proc)) >= 3
    with pytest.raises(pytest.fail.Exception, match=r"the ranks did not finish in 1 s \(a hang\)"):
        finish([proc], timeout=1)
    deadline = time.monotonic() + 10
    while launched_by(proc) and time.monotonic() < deadline:  # SIGKILLed: reaped shortly
        time.sleep(0.1)
    assert launched_by(proc) == []
