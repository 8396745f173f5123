"""`kill -9` at random moments of a run with a Checkpointer, saves included.

A driver process imports torch and fluxpy once, then for each moment forks a child that
trains (a model of a few MB, tiny epochs, a checkpoint every epoch, so most of the time is
spent saving) and kills it with SIGKILL: after a random delay, or from inside a save (half
of the file written; or written and synced but not yet renamed). After each kill the folder
must load with `load_checkpoint`: its latest complete checkpoint, every `epoch-NNNN.pt` whole,
leftover temporary files ignored, and removed by the next save of a resumed run. The children
log their metrics to `FOLDER.csv`; a resumed run logs on without repeating an epoch.
"""

import csv
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fluxpy as fp

DRIVER = textwrap.dedent('''
    """Forks training children on request and SIGKILLs them (see test_kill.py)."""
    import os
    import signal
    import sys
    import time

    import torch

    import fluxpy as fp


    def make_learner(folder):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 1))
        xs = torch.randn(64, 1024)
        data = [(xs[:32], xs[:32, :1]), (xs[32:], xs[32:, :1])]
        return fp.Learner(model, torch.nn.functional.mse_loss, data=(data, data[:1]),
                          callbacks=[fp.Recorder(), fp.Metrics(),
                                     fp.LogMetrics(fp.CSVBackend(f"{folder}.csv")),
                                     fp.Checkpointer(folder, keep_last=2)],
                          use_default_callbacks=False, device="cpu")


    def die_in(module, name, call, partial):
        """Replace module.name so that its `call`-th use kills this process (`partial`: the
        write puts half of the file down first)."""
        real = getattr(module, name)
        calls = [0]

        def dying(*args, **kwargs):
            calls[0] += 1
            if calls[0] == call:
                if partial:
                    import io
                    buffer = io.BytesIO()
                    real(args[0], buffer)
                    args[1].write(buffer.getvalue()[: buffer.tell() // 2])
                    args[1].flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        setattr(module, name, dying)


    def train(folder, mode, started):
        if mode.startswith("midwrite:"):
            die_in(torch, "save", int(mode.split(":")[1]), partial=True)
        elif mode.startswith("beforereplace:"):
            die_in(os, "replace", int(mode.split(":")[1]), partial=False)
        learner = make_learner(folder)
        os.write(started, b"s")
        learner.fit(100_000)


    def warm_up():
        """Build and train a learner once, so the children start with plum's caches filled
        instead of spending seconds resolving methods."""
        import tempfile

        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as folder:
            make_learner(folder).fit(1)


    if __name__ == "__main__":
        warm_up()
        print("ready", flush=True)
        for line in sys.stdin:
            folder, delay, mode = line.split()
            read, write = os.pipe()
            sys.stdout.flush()
            child = os.fork()
            if child == 0:
                os.close(read)
                try:
                    train(folder, mode, write)
                finally:
                    os._exit(1)
            os.close(write)
            os.read(read, 1)  # training has started
            os.close(read)
            if mode == "random":
                time.sleep(float(delay))
                os.kill(child, signal.SIGKILL)
            _, status = os.waitpid(child, 0)
            print("killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
                  else f"status {status}", flush=True)
''')


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver process and its module (for building the same learner here)."""
    tmp_path = tmp_path_factory.mktemp("driver")
    script = tmp_path / "killdriver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "ready"
        sys.path.insert(0, str(tmp_path))
        import killdriver

        yield proc, killdriver
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("killdriver", None)
        proc.stdin.close()
        proc.kill()
        proc.wait()


def kill_once(driver, folder: Path, delay: float = 0.0, mode: str = "random") -> dict:
    """Run one child in `folder`, kill it, check the folder; returns what was found."""
    proc, module = driver
    proc.stdin.write(f"{folder} {delay:.3f} {mode}\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "killed"
    files = sorted(p.name for p in folder.iterdir())
    complete = [n for n in files if re.fullmatch(r"epoch-\d{4}\.pt", n)]
    leftovers = [n for n in files if n.endswith(".tmp")]
    assert set(files) == set(complete) | set(leftovers), files
    assert all(re.fullmatch(r"\.epoch-\d{4}\.pt\.\w+\.tmp", n) for n in leftovers), leftovers
    found = {"complete": complete, "leftovers": leftovers, "loaded": None}
    for name in complete:  # every file under a checkpoint's name is whole
        state = torch.load(folder / name, weights_only=True)
        assert state["callbacks"]["Checkpointer"]["epoch"] == int(name[6:10])
    learner = module.make_learner(folder)
    if complete:
        found["loaded"] = fp.load_checkpoint(learner, folder).name
        assert found["loaded"] == complete[-1]
        assert learner.cbstate.history[fp.TrainingPhase()].epochs == int(complete[-1][6:10])
    else:
        with pytest.raises(fp.CheckpointError, match="holds no checkpoint"):
            fp.load_checkpoint(learner, folder)
    if leftovers:  # the next save of the resumed run removes them
        learner.fit(1)
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    return found


def test_a_kill_halfway_through_writing_leaves_the_previous_checkpoint(driver, tmp_path):
    found = kill_once(driver, tmp_path / "mid", mode="midwrite:3")
    assert found["complete"] == ["epoch-0001.pt", "epoch-0002.pt"]
    assert len(found["leftovers"]) == 1
    assert found["loaded"] == "epoch-0002.pt"


def test_a_run_resumed_after_a_kill_logs_the_epoch_it_repeats_once(driver, tmp_path):
    """Killed writing epoch 3's checkpoint, after epoch 3 was logged; resumed from epoch 2."""
    kill_once(driver, tmp_path / "logged", mode="midwrite:3")  # resumes, trains epoch 3
    with open(tmp_path / "logged.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["step"]) for r in rows if r["phase"] == "ValidationPhase"
              and r["name"] == "loss"]
    assert epochs == [1, 2, 3]


def test_a_kill_between_sync_and_rename_leaves_the_previous_checkpoint(driver, tmp_path):
    found = kill_once(driver, tmp_path / "rename", mode="beforereplace:2")
    assert found["complete"] == ["epoch-0001.pt"]
    assert len(found["leftovers"]) == 1
    assert found["loaded"] == "epoch-0001.pt"


def test_a_kill_at_a_random_moment_leaves_a_loadable_folder(driver, tmp_path):
    found = kill_once(driver, tmp_path / "random", delay=random.Random(1).uniform(0.2, 0.8))
    assert found["loaded"] is not None or not found["complete"]


@pytest.mark.slow
def test_kills_at_many_random_moments_always_leave_a_loadable_folder(driver, tmp_path):
    rng = random.Random(8)
    delays = [rng.uniform(0.0, 1.0) for _ in range(32)]
    outcomes = [kill_once(driver, tmp_path / f"m{i:02d}", delay=d) for i, d in enumerate(delays)]
    loaded = sum(o["loaded"] is not None for o in outcomes)
    during_save = sum(bool(o["leftovers"]) for o in outcomes)
    print(f"{len(outcomes)} kills: {loaded} folders loaded their latest checkpoint, "
          f"{len(outcomes) - loaded} had none yet, {during_save} kills landed inside a write")
    assert loaded > 0
