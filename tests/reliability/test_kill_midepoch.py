"""`kill -9` in the middle of epochs, then an exact resume from the newest checkpoint.

A child process trains (a shuffled DataLoader with a seeded generator, dropout, a schedule,
a checkpoint every 7 steps) and is killed with SIGKILL once it reports a random step (the
kill lands wherever the child is by then: in a step, in a save).
A fresh learner in this process loads the folder's newest checkpoint (mid-epoch, or an epoch
end), finishes the run, and must equal an uninterrupted run bit for bit, having read only the
dataset items the killed run had not trained on since that checkpoint.
"""

import random
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from children import child_script

import fluxpy as fp

ROUNDS = 4

SETUP = textwrap.dedent('''
    import sys

    import torch
    from torch.utils.data import DataLoader, Dataset

    import fluxpy as fp


    class Counted(Dataset):
        def __init__(self):
            generator = torch.Generator().manual_seed(0)
            self.xs = torch.randn(1600, 8, generator=generator)
            self.ys = self.xs.sum(1, keepdim=True).sin()
            self.reads = []

        def __len__(self):
            return len(self.xs)

        def __getitem__(self, i):
            self.reads.append(int(i))
            return self.xs[i], self.ys[i]


    def make_learner(folder, every=7):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(),
                                    torch.nn.Dropout(0.2), torch.nn.Linear(64, 1))
        train = Counted()
        loader = DataLoader(train, batch_size=8, shuffle=True,
                            generator=torch.Generator().manual_seed(1))
        callbacks = [fp.Recorder(), fp.Metrics(),
                     fp.Scheduler({fp.LearningRate: fp.cosine(800, 0.05, 0.001)})]
        if folder is not None:
            callbacks.append(fp.Checkpointer(folder, every=fp.Every(steps=every), keep_last=2))
        learner = fp.Learner(model, torch.nn.functional.mse_loss, data=(loader, None),
                             optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                             callbacks=callbacks, use_default_callbacks=False, device="cpu")
        return learner, train


    class Steps(fp.Callback):
        """Prints the number of each training step as it ends (the parent kills on one)."""

        count = 0


    @fp.on.dispatch
    def _print_step(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Steps, learner):
        cb.count += 1
        print(cb.count, flush=True)


    if __name__ == "__main__":
        learner, _ = make_learner(sys.argv[1])
        learner.add_callback(Steps())
        learner.fit(int(sys.argv[2]))
''')


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path, module = child_script(tmp_path_factory.mktemp("kill"), "setup_midepoch", SETUP)
    reference, train = module.make_learner(None)
    reference.fit(ROUNDS)
    module.reference, module.reference_reads = reference, train.reads
    return path, module


@pytest.mark.parametrize("moment", range(3))
def test_a_run_killed_mid_epoch_resumes_exactly(tmp_path, setup, moment):
    path, module = setup
    folder = tmp_path / "run"
    child = subprocess.Popen([sys.executable, str(path), str(folder), str(ROUNDS)],
                             stdout=subprocess.PIPE, text=True)
    target = random.Random(moment).randrange(10, 600)  # of 800 steps
    try:
        for line in child.stdout:  # the kill lands a few steps later, wherever the child is
            if int(line) == target:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL, "the run ended before it was killed"

    resumed, train = module.make_learner(tmp_path / "resumed")
    loaded = fp.load_checkpoint(resumed, folder)
    rounds_done = resumed.get_callback(fp.Checkpointer).epoch
    assert rounds_done < ROUNDS
    resumed.fit(ROUNDS - rounds_done)

    for a, b in zip(module.reference.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), loaded.name
    assert resumed.cbstate.metricsepoch == module.reference.cbstate.metricsepoch
    steps = torch.load(loaded, weights_only=True).get("position", {}).get("steps", 0)
    done = (rounds_done * 200 + steps) * 8  # 200 steps of 8 items a round
    assert train.reads == module.reference_reads[done:]
