"""Ctrl-C (SIGINT) during `fit`, in a real process: FitEnd handlers run, the Checkpointer
writes its final checkpoint, a log file is closed, and KeyboardInterrupt reaches the caller."""

import textwrap

import pytest
import torch
from children import interrupt, start, wait_for

import fluxpy as fp
from fluxpy.testing import test_learner

SCRIPT = textwrap.dedent('''
    import sys
    import time

    import attrs

    import fluxpy as fp
    from fluxpy.testing import test_learner


    @attrs.define
    class CSVLog(fp.Callback):
        """Writes one row per completed epoch; closes the file at FitEnd."""

        path: str
        file: object = None

    @fp.stateaccess.dispatch
    def _csv_access(cb: CSVLog):
        return fp.Access(cbstate=fp.Access(history=fp.Read()))

    @fp.on.dispatch
    def _csv_fit_begin(event: fp.FitBegin, phase: fp.Phase, cb: CSVLog, learner):
        cb.file = open(cb.path, "w")
        cb.file.write("epoch\\n")

    @fp.on.dispatch
    def _csv_epoch_end(event: fp.EpochEnd, phase: fp.ValidationPhase, cb: CSVLog, learner):
        cb.file.write(f"{learner.cbstate.history[phase].epochs}\\n")

    @fp.on.dispatch
    def _csv_fit_end(event: fp.FitEnd, phase: fp.Phase, cb: CSVLog, learner):
        cb.file.write(f"closed,{sys.exc_info()[0].__name__}\\n")
        cb.file.close()


    @attrs.define
    class WaitInEpoch(fp.Callback):
        """In the second step of epoch `epoch`, says so and waits (for the Ctrl-C)."""

        epoch: int
        steps: int = 0

    @fp.on.dispatch
    def _wait_step_begin(event: fp.StepBegin, phase: fp.TrainingPhase, cb: WaitInEpoch, learner):
        cb.steps += 1
        if cb.steps == (cb.epoch - 1) * 4 + 2:
            print("waiting", flush=True)
            time.sleep(120)


    folder, log = sys.argv[1:3]
    learner = test_learner(fp.Recorder(), fp.Metrics(), CSVLog(log), WaitInEpoch(5),
                           fp.Checkpointer(folder, every=3, keep_last=None), n_batches=4)
    learner.fit(10)
''')


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The script, interrupted with SIGINT in the second step of its fifth epoch."""
    tmp = tmp_path_factory.mktemp("interrupt")
    script = tmp / "train.py"
    script.write_text(SCRIPT)
    proc = start(script, str(tmp / "ckpt"), str(tmp / "log.csv"))
    wait_for(proc, "waiting")
    stderr = interrupt(proc)
    return proc.returncode, stderr, tmp


def test_keyboard_interrupt_reaches_the_caller_with_its_traceback(interrupted):
    returncode, stderr, _ = interrupted
    assert returncode != 0
    assert "Traceback (most recent call last)" in stderr
    assert stderr.rstrip().splitlines()[-1] == "KeyboardInterrupt"


def test_fit_end_handlers_run_and_the_log_file_is_closed_complete(interrupted):
    lines = (interrupted[2] / "log.csv").read_text().splitlines()
    assert lines == ["epoch", "1", "2", "3", "4", "closed,KeyboardInterrupt"]


def test_the_checkpointer_writes_the_last_completed_epoch_as_its_final_checkpoint(interrupted):
    folder = interrupted[2] / "ckpt"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0003.pt", "epoch-0004.pt"]
    resumed = test_learner(fp.Recorder(), fp.Metrics(), fp.Checkpointer(folder), n_batches=4)
    assert fp.load_checkpoint(resumed, folder).name == "epoch-0004.pt"
    uninterrupted = test_learner(fp.Recorder(), fp.Metrics(), n_batches=4)
    uninterrupted.fit(4)
    assert torch.equal(resumed.model.coeff, uninterrupted.model.coeff)
    assert resumed.cbstate.history[fp.TrainingPhase()].epochs == 4
