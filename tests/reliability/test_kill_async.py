"""`kill -9` and Ctrl-C while `Checkpointer(async_save=True)` writes in the background.

A child process trains a model whose checkpoint is about 50 MB, saving every epoch on the
background thread. Its `torch.save` reports on stdout when the background write of the
second checkpoint starts (the first is then complete), and a callback reports a training
step that ends while that write goes on. The test kills the child on these reports:
- halfway: the write has put down half of the file and is held there, training goes on;
- at a random moment of the real write, which takes a while (50 MB, fsynced);
- Ctrl-C: SIGINT while the write is held; another callback's FitEnd handler lets it go on.
The folder must load its latest complete checkpoint, and Ctrl-C must leave the second one
complete when KeyboardInterrupt reaches the caller.
"""

import random
import re
import signal
import subprocess
import textwrap

import pytest
import torch
from children import child_script, interrupt, start, wait_for

import fluxpy as fp

CHILD = textwrap.dedent('''
    import io
    import sys
    import threading

    import attrs
    import torch

    import fluxpy as fp


    def make_learner(folder, *callbacks):
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(4)])
        xs = torch.randn(96, 1024)
        data = [(xs[i:i + 32], xs[i:i + 32]) for i in (0, 32, 64)]
        return fp.Learner(model, torch.nn.functional.mse_loss, data=(data, data[:1]),
                          callbacks=[fp.Recorder(), *callbacks,
                                     fp.Checkpointer(folder, keep_last=2, async_save=True)],
                          use_default_callbacks=False, device="cpu")


    writing, release = threading.Event(), threading.Event()


    def say(word):
        sys.stdout.write(word + "\\n")
        sys.stdout.flush()


    @attrs.define
    class Report(fp.Callback):
        """In the third epoch (the second checkpoint being written), reports a step."""

        epochs: int = 0
        told: bool = False


    @fp.on.dispatch
    def _report_epoch_begin(event: fp.EpochBegin, phase: fp.TrainingPhase, cb: Report, learner):
        cb.epochs += 1


    @fp.on.dispatch
    def _report_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Report, learner):
        if cb.epochs == 3 and not cb.told:
            writing.wait()
            cb.told = True
            say("step")


    @fp.on.dispatch
    def _report_fit_end(event: fp.FitEnd, phase: fp.Phase, cb: Report, learner):
        release.set()  # before the Checkpointer's FitEnd, which runs last


    def reporting(mode):
        real = torch.save
        writes = [0]

        def save(obj, f, *args, **kwargs):
            writes[0] += 1
            if writes[0] == 2:
                if mode == "halfway":
                    buffer = io.BytesIO()
                    real(obj, buffer)
                    f.write(buffer.getvalue()[: buffer.tell() // 2])
                    f.flush()
                say("writing " + threading.current_thread().name)
                writing.set()
                if mode in ("halfway", "interrupt"):
                    release.wait()  # halfway: never (the kill comes first)
            return real(obj, f, *args, **kwargs)

        return save


    if __name__ == "__main__":
        folder, mode = sys.argv[1], sys.argv[2]
        torch.set_num_threads(1)
        torch.save = reporting(mode)
        make_learner(folder, Report()).fit(100_000)
''')


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    return child_script(tmp_path_factory.mktemp("child"), "asyncchild", CHILD)


def start_writing(child, folder):
    proc = start(child[0], str(folder), folder.name)
    line = wait_for(proc, "writing")
    assert line != "writing MainThread"  # the file is written off the training thread
    return proc


def check_folder(child, folder) -> dict:
    """The folder holds whole checkpoints and temporary files only; it loads its newest."""
    files = sorted(p.name for p in folder.iterdir())
    complete = [n for n in files if re.fullmatch(r"epoch-\d{4}\.pt", n)]
    leftovers = [n for n in files if re.fullmatch(r"\.epoch-\d{4}\.pt\.\w+\.tmp", n)]
    assert sorted(complete + leftovers) == files
    learner = child[1].make_learner(folder)
    loaded = fp.load_checkpoint(learner, folder).name
    assert loaded == complete[-1]
    assert learner.cbstate.history[fp.TrainingPhase()].epochs == int(loaded[6:10])
    return {"complete": complete, "leftovers": leftovers, "learner": learner}


def test_a_kill_halfway_through_the_background_write_leaves_the_previous_checkpoint(
        child, tmp_path):
    folder = tmp_path / "halfway"
    proc = start_writing(child, folder)
    assert proc.stdout.readline().strip() == "step"  # training goes on during the write
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    found = check_folder(child, folder)
    assert found["complete"] == ["epoch-0001.pt"]
    assert len(found["leftovers"]) == 1  # the half-written second checkpoint
    found["learner"].fit(1)  # the resumed run's save removes it
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]


def test_a_kill_at_a_random_moment_of_the_background_write_leaves_a_loadable_folder(
        child, tmp_path):
    folder = tmp_path / "random"
    proc = start_writing(child, folder)
    delay = random.Random(3).uniform(0.0, 0.3)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    found = check_folder(child, folder)
    assert found["complete"][0] == "epoch-0001.pt"


def test_ctrl_c_during_the_background_write_finishes_it_before_fit_raises(child, tmp_path):
    folder = tmp_path / "interrupt"
    proc = start_writing(child, folder)
    assert proc.stdout.readline().strip() == "step"
    stderr = interrupt(proc)
    assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in stderr, stderr[-3000:]
    found = check_folder(child, folder)
    assert found["complete"] == ["epoch-0001.pt", "epoch-0002.pt"]
    assert found["leftovers"] == []
    state = torch.load(folder / "epoch-0002.pt", weights_only=True)
    assert state["callbacks"]["Checkpointer"]["epoch"] == 2
