"""A checkpoint taken in the middle of a training epoch resumes there, exactly.

Each test trains a reference run without interruption and a run that stops (or is
checkpointed) at step k and is resumed by a fresh learner; parameters, optimizer, RNG,
metrics and history must be equal bit for bit, and the counting dataset must have been read
for the remaining items only (the reads of the two parts, one after the other, are the
reference's reads).
"""

import shutil

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

import fluxpy as fp

N, BATCH = 40, 4  # 10 training steps an epoch


class Counted(Dataset):
    """A map-style dataset that records every index read."""

    def __init__(self, n: int = N, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.xs = torch.randn(n, 4, generator=generator)
        self.ys = self.xs.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=generator)
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.xs)

    def __getitem__(self, i: int):
        self.reads.append(int(i))
        return self.xs[i], self.ys[i]


def make(folder, *, every=1, accumulate=None, shuffle_generator=True, batch_size=BATCH,
         n=N, training=None, keep_last=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(16, 1))
    train = Counted(n)
    generator = torch.Generator().manual_seed(1) if shuffle_generator else None
    if training is None:
        training = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator)
    valid = DataLoader(Counted(12, seed=1), batch_size=5)
    callbacks = [fp.Recorder(), fp.Metrics(),
                 fp.Scheduler({fp.LearningRate: fp.cosine(30, 0.05, 0.001)})]
    if accumulate:
        callbacks.append(fp.GradientAccumulation(accumulate))
    if folder is not None:
        callbacks.append(fp.Checkpointer(folder, every=every, keep_last=keep_last))
    learner = fp.Learner(model, torch.nn.functional.mse_loss, data=(training, valid),
                         optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                         callbacks=callbacks, use_default_callbacks=False, device="cpu")
    return learner, train


def assert_same(a, b):
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for key in sa["state"]:
        assert torch.equal(sa["state"][key]["momentum_buffer"], sb["state"][key]["momentum_buffer"])
    assert sa["param_groups"] == sb["param_groups"]
    assert a.cbstate.metricsepoch == b.cbstate.metricsepoch
    for phase, history in a.cbstate.history.items():  # all but the epochs' wall times
        other = b.cbstate.history[phase]
        assert (history.epochs, history.steps, history.steps_epoch, len(history.epoch_times)) \
            == (other.epochs, other.steps, other.steps_epoch, len(other.epoch_times))
    assert torch.equal(torch.get_rng_state(), b.__dict__["_rng_after"])


def reference(epochs, **options):
    learner, train = make(None, **options)
    learner.fit(epochs)
    learner.__dict__["_rng_after"] = torch.get_rng_state()
    return learner, train


def finish(folder, epochs, **options):
    learner, train = make(folder.parent / f"{folder.name}-resumed", **options)
    fp.load_checkpoint(learner, folder)
    learner.fit(epochs)
    learner.__dict__["_rng_after"] = torch.get_rng_state()
    return learner, train


@pytest.mark.parametrize("k", [3, 10, 17])
@pytest.mark.parametrize("shuffle_generator", [True, False])
def test_a_fit_stopped_by_max_steps_resumes_where_it_stopped(tmp_path, k, shuffle_generator):
    ref, ref_reads = reference(3, shuffle_generator=shuffle_generator)
    first, first_reads = make(tmp_path, shuffle_generator=shuffle_generator)
    result = first.fit(3, max_steps=k)
    assert result.stop_reason == f"max_steps={k} reached"
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    if k % 10:  # stopped in the middle of an epoch: the final checkpoint is that step
        assert f"epoch-{k // 10:04d}-step-{k % 10:06d}.pt" in names
    rounds_done = k // 10
    resumed, resumed_reads = finish(tmp_path, 3 - rounds_done,
                                    shuffle_generator=shuffle_generator)
    assert_same(ref, resumed)
    assert first_reads.reads[:k * BATCH] + resumed_reads.reads == ref_reads.reads


def test_every_steps_writes_mid_epoch_checkpoints_that_resume_exactly(tmp_path):
    run, reads = make(tmp_path, every=fp.Every(steps=7))
    run.fit(3)
    run.__dict__["_rng_after"] = torch.get_rng_state()
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == ["epoch-0000-step-000007.pt", "epoch-0001-step-000004.pt",  # steps 7, 14
                     "epoch-0002-step-000001.pt", "epoch-0002-step-000008.pt",  # 21, 28
                     "epoch-0003.pt"]  # the last epoch, at FitEnd
    chosen = tmp_path / "resume"
    chosen.mkdir()
    shutil.copy(tmp_path / "epoch-0001-step-000004.pt", chosen)
    resumed, resumed_reads = finish(chosen, 2)
    assert_same(run, resumed)
    assert resumed_reads.reads == reads.reads[14 * BATCH:]


def test_a_folder_loads_its_newest_checkpoint_epoch_or_step(tmp_path):
    run, _ = make(tmp_path, every=fp.Every(steps=7))
    run.fit(1, max_steps=8)  # epoch-0000-step-000007.pt, then the final one at step 8
    learner, _ = make(tmp_path / "other")
    assert fp.load_checkpoint(learner, tmp_path).name == "epoch-0000-step-000008.pt"
    assert learner.position.pending["steps"] == 8


def test_gradient_accumulation_resumes_inside_a_group(tmp_path):
    ref, ref_reads = reference(2, accumulate=4)
    first, first_reads = make(tmp_path, accumulate=4)
    first.fit(2, max_steps=6)  # 2 steps into the second group of 4
    saved = torch.load(tmp_path / "epoch-0000-step-000006.pt", weights_only=True)
    assert saved["callbacks"]["GradientAccumulation"] == {"count": 2}
    assert sorted(saved["grads"]) == ["0.bias", "0.weight", "3.bias", "3.weight"]
    resumed, resumed_reads = finish(tmp_path, 2, accumulate=4)
    assert_same(ref, resumed)
    assert first_reads.reads[:6 * BATCH] + resumed_reads.reads == ref_reads.reads


def test_max_time_stops_with_a_final_checkpoint_that_resumes_exactly(tmp_path, monkeypatch):
    from fluxpy.engine import budget

    now = [0.0]

    def clock():
        now[0] += 1.0  # one second a reading
        return now[0]

    monkeypatch.setattr(budget, "clock", clock)
    ref, ref_reads = reference(2)
    first, first_reads = make(tmp_path)
    result = first.fit(2, max_time=6.5)
    assert result.stop_reason == "max_time=6.5 s reached"
    monkeypatch.undo()
    (name,) = [p.name for p in tmp_path.glob("*.pt")]
    steps = int(name.rpartition("-")[2][:-3])
    assert 0 < steps < 10
    resumed, resumed_reads = finish(tmp_path, 2)
    assert_same(ref, resumed)
    assert first_reads.reads[:steps * BATCH] + resumed_reads.reads == ref_reads.reads


@pytest.mark.parametrize(("options", "problem"), [
    ({"batch_size": 5}, "its batch size was 4, this learner's is 5"),
    ({"n": 44}, "its dataset length was 40, this learner's is 44"),
])
def test_a_mid_epoch_checkpoint_with_other_data_is_a_checkpoint_error(tmp_path, options,
                                                                      problem):
    first, _ = make(tmp_path)
    first.fit(1, max_steps=3)
    learner, _ = make(tmp_path / "other", **options)
    before = [p.detach().clone() for p in learner.model.parameters()]
    with pytest.raises(fp.CheckpointError, match=r"\[position\]: was taken at step 3 of an "
                       r"epoch over other training data: " + problem):
        fp.load_checkpoint(learner, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, learner.model.parameters()))
    assert learner.position.pending is None


def test_other_data_given_to_fit_after_loading_is_a_checkpoint_error(tmp_path):
    first, _ = make(tmp_path)
    first.fit(1, max_steps=3)
    learner, _ = make(tmp_path / "other")
    fp.load_checkpoint(learner, tmp_path)
    other = DataLoader(Counted(), batch_size=8, shuffle=True)
    with pytest.raises(fp.CheckpointError, match="its batch size was 4, this learner's is 8"):
        learner.fit(1, data=(other, None))
    assert learner.cbstate.history[fp.TrainingPhase()].steps == 3  # nothing ran


class Stream(IterableDataset):
    def __len__(self):
        return N

    def __iter__(self):
        generator = torch.Generator().manual_seed(0)
        for _ in range(N):
            xs = torch.randn(4, generator=generator)
            yield xs, xs.sum(0, keepdim=True)


@pytest.mark.parametrize("training", [
    DataLoader(Stream(), batch_size=BATCH),
    (lambda: ((torch.randn(4, 4), torch.randn(4, 1)) for _ in range(10))),
], ids=["IterableDataset", "a generator"])
def test_a_mid_epoch_checkpoint_of_data_that_cannot_resume_is_refused(tmp_path, training):
    data = training() if callable(training) else training
    learner, _ = make(tmp_path, training=data)
    with pytest.raises(fp.CheckpointError, match=r"cannot be resumed in the middle of an "
                       r"epoch: fluxpy resumes a list or tuple of batches and a DataLoader "
                       r"over a map-style dataset\. Use one of those, or checkpoint only at "
                       r"epoch ends \(Checkpointer\(folder, every=1\)\)"):
        learner.fit(1, max_steps=3)
    assert not list(tmp_path.glob("*.pt"))


def test_a_list_of_batches_resumes_at_its_kth_batch(tmp_path):
    generator = torch.Generator().manual_seed(3)
    batches = [(torch.randn(4, 4, generator=generator), torch.randn(4, 1, generator=generator))
               for _ in range(10)]
    ref, _ = reference(2, training=list(batches))
    first, _ = make(tmp_path, training=list(batches))
    first.fit(2, max_steps=4)
    resumed, _ = finish(tmp_path, 2, training=list(batches))
    assert_same(ref, resumed)


def test_a_torchdata_stateful_dataloader_resumes_from_its_own_state(tmp_path):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")

    def loader(train):
        return stateful.StatefulDataLoader(train, batch_size=BATCH, shuffle=True,
                                           generator=torch.Generator().manual_seed(1))

    reference_train = Counted()
    ref, _ = reference(3, training=loader(reference_train))
    first_train = Counted()
    first, _ = make(tmp_path, training=loader(first_train))
    first.fit(3, max_steps=13)
    resumed_train = Counted()
    resumed, _ = finish(tmp_path, 2, training=loader(resumed_train))
    assert_same(ref, resumed)
    assert first_train.reads[:13 * BATCH] + resumed_train.reads == reference_train.reads


def test_a_checkpoint_at_an_epochs_last_step_resumes_with_only_its_end(tmp_path):
    run, reads = make(tmp_path, every=fp.Every(steps=10))
    run.fit(2)
    run.__dict__["_rng_after"] = torch.get_rng_state()
    chosen = tmp_path / "resume"
    chosen.mkdir()
    shutil.copy(tmp_path / "epoch-0000-step-000010.pt", chosen)
    resumed, resumed_reads = finish(chosen, 2)  # the end of the first epoch, then the second
    assert_same(run, resumed)
    assert resumed_reads.reads == reads.reads[10 * BATCH:]


# With fit(validate_every=...): the validation schedule goes on across a resume. 64 items of
# 4 are 16 training steps an epoch.
@pytest.mark.parametrize("k", [2, 6, 16, 18, 20])
def test_validate_every_steps_goes_on_after_a_max_steps_resume(tmp_path, k):
    every = fp.Every(steps=3)
    ref, _ = make(None, n=64)
    ref.fit(2, validate_every=every)
    ref.__dict__["_rng_after"] = torch.get_rng_state()
    first, _ = make(tmp_path, n=64)
    assert first.fit(2, max_steps=k, validate_every=every).stop_reason == \
        f"max_steps={k} reached"
    resumed, _ = make(tmp_path.parent / f"{tmp_path.name}-resumed", n=64)
    fp.load_checkpoint(resumed, tmp_path)
    resumed.fit(2 - k // 16, validate_every=every)
    resumed.__dict__["_rng_after"] = torch.get_rng_state()
    assert_same(ref, resumed)
    valid = resumed.cbstate.history[fp.ValidationPhase()]
    assert valid.epochs == 32 // 3


@pytest.mark.parametrize(("n", "saves", "name"), [
    (3, 6, "epoch-0000-step-000006.pt"), (3, 6, "epoch-0001-step-000002.pt"),  # steps 6, 18
    (4, 16, "epoch-0000-step-000016.pt")])  # an epoch's last step: only its EpochEnd is left
def test_validate_every_steps_goes_on_from_a_step_checkpoint_at_a_validation(tmp_path, n, saves,
                                                                              name):
    every = fp.Every(steps=n)  # the Checkpointer saves at steps where validation is due
    run, _ = make(tmp_path, n=64, every=fp.Every(steps=saves))
    run.fit(2, validate_every=every)
    run.__dict__["_rng_after"] = torch.get_rng_state()
    chosen = tmp_path / "resume"
    chosen.mkdir()
    shutil.copy(tmp_path / name, chosen)
    resumed, _ = make(tmp_path / "resumed", n=64)
    fp.load_checkpoint(resumed, chosen)
    resumed.fit(2 - int(name[9]), validate_every=every)
    resumed.__dict__["_rng_after"] = torch.get_rng_state()
    assert_same(run, resumed)


@pytest.mark.parametrize("k", [16, 24, 32])
def test_validate_every_epochs_goes_on_after_a_resume(tmp_path, k):
    every = fp.Every(epochs=2)  # validation after rounds 2 and 4
    ref, _ = make(None, n=64)
    ref.fit(4, validate_every=every)
    ref.__dict__["_rng_after"] = torch.get_rng_state()
    first, _ = make(tmp_path, n=64)
    first.fit(4, max_steps=k, validate_every=every)
    resumed, _ = make(tmp_path.parent / f"{tmp_path.name}-resumed", n=64)
    fp.load_checkpoint(resumed, tmp_path)
    resumed.fit(4 - k // 16, validate_every=every)
    resumed.__dict__["_rng_after"] = torch.get_rng_state()
    assert_same(ref, resumed)
    assert resumed.cbstate.history[fp.ValidationPhase()].epochs == 2
