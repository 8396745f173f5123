"""Checkpoint files: what they hold, exact resume, and clear errors for bad files."""

import os
import random
import stat
import subprocess
import sys

import attrs
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fluxpy as fp
import fluxpy.support.checkpoint
from fluxpy.support.checkpoint import checkpoint_digest
from fluxpy.support.checkpoint_encoding import decode, encode
from fluxpy.testing import test_learner

# -- a learner whose training draws on every random source ------------------------------------


@attrs.define
class NoisyTargets(fp.Callback):
    """Adds noise from torch's, numpy's and python's global RNGs to the training targets; the
    noise grows with `steps`, its state."""

    steps: int = 0

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


@fp.stateaccess.dispatch
def _noisy_access(cb: NoisyTargets):
    return fp.Access(batch=fp.Access(ys=fp.Write()))


@fp.on.dispatch
def _noisy_step_begin(event: fp.StepBegin, phase: fp.TrainingPhase, cb: NoisyTargets, learner):
    scale = 0.01 * (1 + cb.steps % 3) * (1 + random.random() + float(np.random.rand()))
    learner.batch.ys = learner.batch.ys + scale * torch.randn_like(learner.batch.ys)
    cb.steps += 1


STEPS_PER_EPOCH = 6


def resumable_learner(*callbacks: fp.Callback, seed: int = 0) -> fp.Learner:
    """Dropout, a shuffled DataLoader, AdamW, a one-cycle Scheduler and NoisyTargets; every
    global RNG seeded with `seed`."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(16, 1))
    data = torch.Generator().manual_seed(123)
    xs = torch.randn(48, 4, generator=data)
    ys = xs.sum(1, keepdim=True)
    train = DataLoader(TensorDataset(xs, ys), batch_size=8, shuffle=True)
    valid = DataLoader(TensorDataset(xs[:16], ys[:16]), batch_size=8)
    schedule = fp.Scheduler({fp.LearningRate: fp.one_cycle(4 * STEPS_PER_EPOCH, 0.05)})
    return fp.Learner(model, torch.nn.functional.mse_loss, data=(train, valid),
                      optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
                      callbacks=[fp.Recorder(), fp.Metrics(), schedule, NoisyTargets(),
                                 *callbacks],
                      use_default_callbacks=False, device="cpu")


def _histories(learner):
    return {str(p): (h.epochs, h.steps, h.steps_epoch, len(h.epoch_times))
            for p, h in learner.cbstate.history.items()}


@pytest.fixture(scope="module")
def uninterrupted():
    """Four epochs in one go, without any checkpointing."""
    learner = resumable_learner()
    learner.fit(4)
    return learner


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Two epochs with a Checkpointer, then a new learner loads the folder and trains two more."""
    folder = tmp_path_factory.mktemp("resume")
    resumable_learner(fp.Checkpointer(folder)).fit(2)
    learner = resumable_learner(fp.Checkpointer(folder), seed=99)
    random.random(), np.random.rand(), torch.rand(3)  # nothing drawn before loading matters
    loaded = fp.load_checkpoint(learner, folder)
    learner.fit(2)
    return learner, loaded


def test_resume_loads_the_latest_checkpoint_of_a_folder(resumed):
    assert resumed[1].name == "epoch-0002.pt"


def test_resumed_parameters_equal_the_uninterrupted_run_bit_for_bit(uninterrupted, resumed):
    ours = dict(resumed[0].model.named_parameters())
    for name, param in uninterrupted.model.named_parameters():
        assert torch.equal(param, ours[name]), name


def test_resumed_optimizer_state_equals_the_uninterrupted_run(uninterrupted, resumed):
    theirs = uninterrupted.optimizer.state_dict()
    ours = resumed[0].optimizer.state_dict()
    assert theirs["param_groups"] == ours["param_groups"]  # the scheduled LR among them
    for index, state in theirs["state"].items():
        for key, value in state.items():
            assert torch.equal(value, ours["state"][index][key]), (index, key)


def test_resumed_history_metrics_and_callback_state_equal_the_uninterrupted_run(
        uninterrupted, resumed):
    learner = resumed[0]
    assert _histories(learner) == _histories(uninterrupted)
    assert _histories(learner)["TrainingPhase"] == (4, 4 * STEPS_PER_EPOCH, STEPS_PER_EPOCH, 4)
    assert learner.cbstate.metricsepoch == uninterrupted.cbstate.metricsepoch
    assert learner.get_callback(fp.Scheduler).step == 4 * STEPS_PER_EPOCH
    assert learner.get_callback(NoisyTargets).steps == 4 * STEPS_PER_EPOCH
    assert learner.optimizer.param_groups[0]["lr"] == uninterrupted.optimizer.param_groups[0]["lr"]


def test_resume_without_restoring_the_rng_would_differ(uninterrupted, tmp_path):
    """The control: the same resume with the random states left alone does not match."""
    resumable_learner(fp.Checkpointer(tmp_path)).fit(2)
    learner = resumable_learner(fp.Checkpointer(tmp_path / "control"), seed=99)
    state = torch.get_rng_state()
    fp.load_checkpoint(learner, tmp_path)
    torch.set_rng_state(state)
    learner.fit(2)
    assert not torch.equal(learner.model[0].weight, uninterrupted.model[0].weight)


# -- what a file holds ---------------------------------------------------------------------


def test_a_checkpoint_holds_format_model_optimizer_callbacks_cbstate_and_rng(tmp_path):
    learner = resumable_learner()
    learner.fit(1)
    path = fp.save_checkpoint(learner, tmp_path / "one.pt")
    state = torch.load(path, weights_only=True)
    assert sorted(state) == ["callbacks", "cbstate", "digest", "format", "model", "optimizer",
                             "optimizer_class", "rng", "scaler", "version"]
    assert (state["format"], state["version"]) == ("fluxpy.support.checkpoint", 2)
    assert state["optimizer_class"] == "torch.optim.adamw.AdamW"
    assert state["digest"] == checkpoint_digest(state) and len(state["digest"]) == 64
    assert list(state["model"]) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert torch.equal(state["model"]["0.weight"], learner.model[0].weight)
    assert state["optimizer"]["param_groups"] == learner.optimizer.state_dict()["param_groups"]
    assert state["scaler"] is None
    assert state["callbacks"] == {"Metrics": {}, "Recorder": {"running": {}},
                                  "Scheduler": {"step": STEPS_PER_EPOCH},
                                  "NoisyTargets": {"steps": STEPS_PER_EPOCH}}
    assert sorted(state["cbstate"]) == ["history", "metricsepoch", "metricsstep"]
    assert sorted(state["rng"]) == ["cuda", "numpy", "python", "torch"]
    assert torch.equal(state["rng"]["torch"], torch.get_rng_state())


def test_cbstate_keyed_by_phases_is_stored_as_tagged_plain_values(tmp_path):
    learner = test_learner(fp.Recorder())
    learner.fit(1)
    state = torch.load(fp.save_checkpoint(learner, tmp_path / "c.pt"), weights_only=True)
    key, history = state["cbstate"]["history"]["items"][0]
    assert key == {"__fluxpy__": "attrs", "class": "fluxpy.core.phases.TrainingPhase", "fields": {}}
    assert history["class"] == "fluxpy.callbacks.recorder.History"
    assert (history["fields"]["epochs"], history["fields"]["steps"]) == (1, 16)


@fp.register_checkpoint_class
@attrs.frozen
class Point:
    x: int
    y: float


def test_encoding_round_trips_phases_attrs_values_namespaces_arrays_and_containers():
    @fp.register_checkpoint_class
    @attrs.frozen
    class LocalPhase(fp.AbstractTrainingPhase):
        pass

    value = {
        fp.TrainingPhase(): [1, 2.5, None, "s", b"b", (True, 3)],
        LocalPhase(): {"point": Point(1, 2.0), "set": {1, 2}},
        "ns": fluxpy.core.state.State(a=1),
        "array": np.arange(3, dtype=np.int32),
        "scalar": np.float32(1.5),
        "__fluxpy__": "a user key that looks like the tag",
    }
    back = decode(encode(value, "x"))
    assert back[fp.TrainingPhase()] == [1, 2.5, None, "s", b"b", (True, 3)]
    assert back[LocalPhase()] == {"point": Point(1, 2.0), "set": {1, 2}}
    assert vars(back["ns"]) == {"a": 1}
    assert back["array"].dtype == np.int32 and back["array"].tolist() == [0, 1, 2]
    assert back["scalar"] == 1.5
    assert back["__fluxpy__"] == "a user key that looks like the tag"


def test_a_value_a_checkpoint_cannot_hold_is_an_error_naming_its_path(tmp_path):
    learner = test_learner(fp.Recorder())
    learner.cbstate.handle = open(__file__)  # noqa: SIM115
    try:
        with pytest.raises(TypeError, match=r"learner\.cbstate\.handle is a TextIOWrapper"):
            fp.save_checkpoint(learner, tmp_path / "c.pt")
    finally:
        learner.cbstate.handle.close()
    assert list(tmp_path.iterdir()) == []


def test_load_restores_the_python_numpy_and_torch_random_states(tmp_path):
    learner = test_learner()
    path = fp.save_checkpoint(learner, tmp_path / "c.pt")
    expected = (random.random(), float(np.random.rand()), torch.rand(2))
    fp.load_checkpoint(learner, path)
    assert random.random() == expected[0]
    assert float(np.random.rand()) == expected[1]
    assert torch.equal(torch.rand(2), expected[2])


def test_a_checkpoint_of_a_wrapped_model_loads_into_the_plain_model(tmp_path):
    learner = test_learner()
    learner.fit(1)
    wrapped = test_learner(seed=1)
    wrapped.model = torch.nn.DataParallel(wrapped.model)  # on the CPU: the module, wrapped
    wrapped.model.module.load_state_dict(learner.model.state_dict())
    path = fp.save_checkpoint(wrapped, tmp_path / "c.pt")
    assert list(torch.load(path, weights_only=True)["model"]) == ["coeff"]
    plain = test_learner(seed=2)
    fp.load_checkpoint(plain, path)
    assert torch.equal(plain.model.coeff, learner.model.coeff)


def test_state_for_a_callback_the_learner_lacks_is_a_warning(tmp_path):
    path = fp.save_checkpoint(resumable_learner(fp.EarlyStopping(3)), tmp_path / "c.pt")
    with pytest.warns(UserWarning, match="state for EarlyStopping, which this learner does not"):
        fp.load_checkpoint(resumable_learner(), path)


def test_a_callback_without_state_in_the_checkpoint_keeps_its_own_with_a_warning(tmp_path):
    path = fp.save_checkpoint(resumable_learner(), tmp_path / "c.pt")
    learner = resumable_learner(fp.EarlyStopping(3))
    learner.get_callback(fp.EarlyStopping).wait = 2
    with pytest.warns(UserWarning, match="holds no state for EarlyStopping; it keeps its current"):
        fp.load_checkpoint(learner, path)
    assert learner.get_callback(fp.EarlyStopping).wait == 2


# -- bad files are clear errors, and leave the learner as it was --------------------------


@pytest.fixture
def saved(tmp_path):
    learner = test_learner()
    learner.fit(1)
    return fp.save_checkpoint(learner, tmp_path / "good.pt")


def _load_fails(path, match):
    learner = test_learner(seed=5)
    before = learner.model.coeff.detach().clone()
    with pytest.raises(fp.CheckpointError, match=match) as info:
        fp.load_checkpoint(learner, path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert torch.equal(learner.model.coeff, before)


def test_a_missing_file_is_an_error(tmp_path):
    _load_fails(tmp_path / "nope.pt", "does not exist")


def test_an_empty_folder_is_an_error(tmp_path):
    (tmp_path / ".epoch-0001.pt.abc.tmp").write_bytes(b"partial")
    _load_fails(tmp_path, r"holds no checkpoint \(no epoch-NNNN.pt file\)")


def test_a_truncated_file_is_an_error(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    _load_fails(saved, "is truncated or damaged: torch.load failed")


def test_an_empty_file_is_an_error(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    _load_fails(tmp_path / "empty.pt", r"is empty \(0 bytes\)")


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _load_fails(path, "is not a checkpoint: it is not a file torch.save wrote")


def test_a_torch_file_without_the_format_marker_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(test_learner().model.state_dict(), path)
    _load_fails(path, r"not a fluxpy checkpoint: it holds a dict with keys \['coeff'\] without "
                      "the format marker")


def test_a_torch_file_with_pickled_objects_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"format": "fluxpy.support.checkpoint", "point": Point(1, 2.0)}, path)
    _load_fails(path, "holds pickled Python objects")


def _rewrite(path, change):
    """`path` changed by `change(state)`, with a digest that matches (as a forger would)."""
    state = torch.load(path, weights_only=True)
    change(state)
    state["digest"] = checkpoint_digest(state)
    torch.save(state, path)


def test_a_checkpoint_from_a_newer_format_is_an_error(saved):
    _rewrite(saved, lambda state: state.update(version=4))
    _load_fails(saved, r"newer fluxpy \(checkpoint format version 4; this fluxpy reads up to 3\)")


def test_a_checkpoint_missing_an_entry_is_damaged(saved):
    _rewrite(saved, lambda state: state.pop("rng"))
    _load_fails(saved, r"\[rng\]: is damaged: its 'rng' entry is missing")


def test_a_checkpoint_of_another_model_names_the_parameter_and_both_shapes(tmp_path):
    other = test_learner()
    other.model.coeff = torch.nn.Parameter(torch.ones(2))
    other.optimizer = torch.optim.SGD(other.model.parameters(), lr=0.1)
    path = fp.save_checkpoint(other, tmp_path / "other.pt")
    _load_fails(path, r"another model: parameter 'coeff' has shape \(2,\) in the checkpoint "
                      r"and \(1,\) in this learner's model")


def test_a_checkpoint_of_a_model_with_other_parameters_lists_them(tmp_path):
    learner = resumable_learner()
    path = fp.save_checkpoint(learner, tmp_path / "mlp.pt")
    _load_fails(path, r"this model has 'coeff' which the checkpoint lacks; the checkpoint has "
                      r"'0.weight', '0.bias', '3.weight' and 1 more")


def test_a_checkpoint_of_another_optimizer_layout_is_an_error(tmp_path, saved):
    learner = test_learner()
    learner.optimizer = torch.optim.SGD([{"params": [learner.model.coeff]}, {"params": []}])
    with pytest.raises(fp.CheckpointError, match="optimizer with 1 parameter groups; this "
                                                 "learner's SGD has 2"):
        fp.load_checkpoint(learner, saved)


def test_a_class_neither_fluxpys_nor_registered_is_an_error_naming_the_fix(saved):
    _rewrite(saved, lambda state: state["cbstate"].update(
        thing={"__fluxpy__": "attrs", "class": "nowhere.Thing", "fields": {}}))
    _load_fails(saved, r"\[cbstate\.thing\]: cannot restore cbstate\.thing: it holds a "
                       r"nowhere\.Thing, a class checkpoints do not build: only fluxpy's values "
                       r"and registered classes are\. If the file is yours, call "
                       r"fp\.register_checkpoint_class\(Thing\) where Thing is defined")


def test_the_gradient_scaler_state_is_saved_and_restored(tmp_path):
    learner = test_learner()
    learner.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    path = fp.save_checkpoint(learner, tmp_path / "c.pt")
    assert torch.load(path, weights_only=True)["scaler"]["scale"] == 256.0
    resumed = test_learner()
    resumed.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    fp.load_checkpoint(resumed, path)
    assert resumed.scaler.state_dict()["scale"] == 256.0


# -- only fluxpy's values and registered classes ------------------------------------------


@attrs.frozen
class PretrainingPhase(fp.AbstractTrainingPhase):
    """A custom phase, unregistered: Recorder keys its history by it."""


def test_saving_an_unregistered_attrs_value_is_an_error_naming_the_fix(tmp_path):
    learner = test_learner(fp.Recorder())
    learner.fit(1, phases=[(PretrainingPhase(), learner.data.training)])
    with pytest.raises(TypeError, match=r"learner\.cbstate\.history key PretrainingPhase\(\) is "
                                        r"a test_checkpoint\.PretrainingPhase, which checkpoints "
                                        r"hold only when the class is registered.*call "
                                        r"fp\.register_checkpoint_class\(PretrainingPhase\)"):
        fp.save_checkpoint(learner, tmp_path / "c.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_registered_phase_is_saved_and_loaded(tmp_path):
    @fp.register_checkpoint_class
    @attrs.frozen
    class Finetuning(fp.AbstractTrainingPhase):
        pass

    learner = test_learner(fp.Recorder())
    learner.fit(2, phases=[(Finetuning(), learner.data.training)])
    path = fp.save_checkpoint(learner, tmp_path / "c.pt")
    resumed = test_learner(fp.Recorder(), seed=1)
    fp.load_checkpoint(resumed, path)
    assert resumed.cbstate.history[Finetuning()].epochs == 2


def test_only_attrs_classes_can_be_registered():
    with pytest.raises(TypeError, match=r"register_checkpoint_class\(<class 'dict'>\): "
                                        "checkpoints hold instances of attrs classes"):
        fp.register_checkpoint_class(dict)


# -- the digest ----------------------------------------------------------------------------


def test_a_file_of_format_version_1_without_a_digest_loads_with_a_warning(saved):
    state = torch.load(saved, weights_only=True)
    del state["digest"], state["optimizer_class"]
    state["version"] = 1
    torch.save(state, saved)
    learner = test_learner(seed=5)
    with pytest.warns(UserWarning, match="written by an earlier fluxpy, without a digest: that "
                                         "its bytes are unchanged cannot be checked"):
        fp.load_checkpoint(learner, saved)
    assert torch.equal(learner.model.coeff, state["model"]["coeff"])


def test_a_version_1_file_naming_phases_where_they_used_to_live_loads(tmp_path):
    learner = test_learner(fp.Recorder())
    learner.fit(1)
    path = fp.save_checkpoint(learner, tmp_path / "c.pt")
    state = torch.load(path, weights_only=True)

    def earlier(value):  # how a version 1 file names the phases: fluxpy.phases.<Phase>
        if isinstance(value, dict):
            return {k: earlier(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(earlier(v) for v in value)
        if isinstance(value, str) and value.startswith("fluxpy.core.phases."):
            return value.replace("fluxpy.core.phases.", "fluxpy.phases.")
        return value

    state = earlier(state)
    del state["digest"], state["optimizer_class"]
    state["version"] = 1
    torch.save(state, path)
    resumed = test_learner(fp.Recorder(), seed=1)
    with pytest.warns(UserWarning, match="written by an earlier fluxpy"):
        fp.load_checkpoint(resumed, path)
    assert resumed.cbstate.history[fp.TrainingPhase()].epochs == 1


def test_a_file_of_format_version_2_without_a_digest_is_an_error(saved):
    state = torch.load(saved, weights_only=True)
    del state["digest"]
    torch.save(state, saved)
    _load_fails(saved, r"\[digest\]: is damaged: it has no digest, which every checkpoint of "
                       "format version 2 has")


def test_the_digest_does_not_depend_on_the_order_of_a_set_in_another_process(tmp_path):
    learner = test_learner()
    learner.cbstate.tags = {f"tag{i}" for i in range(20)}
    path = fp.save_checkpoint(learner, tmp_path / "c.pt")
    code = ("import sys, fluxpy as fp; from fluxpy.testing import test_learner; "
            "learner = test_learner(); fp.load_checkpoint(learner, sys.argv[1]); "
            "print(learner.cbstate.tags == {f'tag{i}' for i in range(20)})")
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONHASHSEED": seed}, check=False)
        assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr


# -- file permissions ----------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_checkpoint_file_gets_the_mode_the_umask_gives_new_files(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = fp.save_checkpoint(test_learner(), tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
