"""Checkpoints written by someone else: crafted class names, pickled code, flipped bits,
truncations, another optimizer, files valid up to a broken part. Each is a `CheckpointError`
naming the file and the part; the learner is as it was, and nothing is built or run."""

import copy
import os
import random
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fluxpy as fp
import fluxpy.support.checkpoint
from fluxpy.support.checkpoint import checkpoint_digest, rng_state

# -- the learner under attack, and what "unchanged" means -----------------------------------


def make_learner(*extra: fp.Callback, seed: int = 0, optimizer=torch.optim.Adam) -> fp.Learner:
    """An MLP with Adam, Recorder, Metrics, `extra` and a throttled Scheduler."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    xs = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    data = DataLoader(TensorDataset(xs, xs.sum(1, keepdim=True)), batch_size=8)
    schedule = fp.Scheduler({fp.LearningRate: fp.linear(100, 1e-2, 1e-3)})
    return fp.Learner(model, torch.nn.functional.mse_loss, data=(data, data),
                      optimizer=lambda params: optimizer(params, lr=1e-2),
                      callbacks=[fp.Recorder(), fp.Metrics(), *extra,
                                 fp.throttle(schedule, fp.StepEnd, every=2)],
                      use_default_callbacks=False, device="cpu")


def snapshot(learner) -> dict:
    """Everything a load could change, copied."""
    return copy.deepcopy({
        "model": learner.model.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "callbacks": {name: cb.state_dict()
                      for name, cb in fluxpy.support.checkpoint.stateful_callbacks(learner)},
        "cbstate": dict(vars(learner.cbstate)),
        "rng": rng_state(),
    })


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (isinstance(b, dict) and list(a) == list(b)
                and all(same(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


@pytest.fixture
def good(tmp_path) -> Path:
    """A valid checkpoint of another learner, two epochs in (its Scheduler at step 8)."""
    learner = make_learner(seed=0)
    learner.fit(2)
    return fp.save_checkpoint(learner, tmp_path / "good.pt")


@pytest.fixture
def victim(good):
    """A learner one epoch in, made after `good`; every global random state has moved on
    since `good` was saved, so restoring them would show."""
    learner = make_learner(seed=5)
    learner.fit(1)
    random.random(), np.random.rand(), torch.rand(1)
    return learner


def rewrite(path: Path, change) -> Path:
    """Load `path`, `change(state)`, save it with a matching digest (a forger's file)."""
    state = torch.load(path, weights_only=True)
    change(state)
    state["digest"] = checkpoint_digest(state)
    torch.save(state, path)
    return path


def refused(learner, path: Path, match: str, part: str) -> fp.CheckpointError:
    before = snapshot(learner)
    with pytest.raises(fp.CheckpointError, match=match) as info:
        fp.load_checkpoint(learner, path)
    assert info.value.path == str(path)
    assert info.value.part == part
    assert f"{path} [{part}]: " in str(info.value)
    after = snapshot(learner)
    for key in before:
        assert same(before[key], after[key]), f"the load changed the learner's {key}"
    return info.value


def test_the_untouched_file_loads(victim, good):
    """The control: what the tests below damage loads when it is not damaged."""
    fp.load_checkpoint(victim, good)
    assert victim.get_callback(fp.ConditionalCallback).callback.step == 8


# -- crafted class names: nothing is built --------------------------------------------------


def _builds_a_checkpointer(folder: Path) -> dict:
    return {"__fluxpy__": "attrs", "class": "fluxpy.callbacks.checkpointer.Checkpointer",
            "fields": {"folder": str(folder)}}


@pytest.mark.parametrize("where", ["cbstate value", "cbstate key", "callback state"])
def test_a_crafted_class_name_builds_nothing(victim, good, tmp_path, where):
    target = tmp_path / "made-by-the-file"
    crafted = _builds_a_checkpointer(target)

    def change(state):
        if where == "cbstate value":
            state["cbstate"]["extra"] = crafted
        elif where == "cbstate key":
            state["cbstate"]["extra"] = {"__fluxpy__": "dict", "items": [(crafted, 1)]}
        else:
            state["callbacks"]["Metrics"] = {"x": crafted}

    part = "callbacks.Metrics" if where == "callback state" else "cbstate.extra"
    error = refused(victim, rewrite(good, change),
                    r"holds a fluxpy\.callbacks\.checkpointer\.Checkpointer, a class "
                    r"checkpoints do not build.*fp\.register_checkpoint_class", part)
    assert part in str(error)
    assert not target.exists()


def test_a_class_that_is_not_attrs_is_refused_too(victim, good):
    def change(state):
        state["cbstate"]["extra"] = {"__fluxpy__": "attrs", "class": "os.system",
                                     "fields": {"command": "touch pwned"}}

    refused(victim, rewrite(good, change), r"cbstate\.extra.*holds a os\.system", "cbstate.extra")
    assert not Path("pwned").exists()


@pytest.mark.parametrize("tag", [
    {"__fluxpy__": "ndarray", "data": "not a tensor"},
    {"__fluxpy__": "dict", "items": [(1, 2, 3)]},
    {"__fluxpy__": "namespace", "fields": {1: 2}},
    {"__fluxpy__": "attrs", "class": "fluxpy.core.phases.TrainingPhase", "fields": {"x": 1}},
    {"__fluxpy__": "something else"},
], ids=["ndarray", "dict", "namespace", "attrs fields", "kind"])
def test_a_malformed_tagged_value_is_refused(victim, good, tag):
    refused(victim, rewrite(good, lambda state: state["cbstate"].update(extra=tag)),
            r"cbstate\.extra", "cbstate.extra")


# -- pickled code: nothing runs ----------------------------------------------------------------


@attrs.define
class Payload:
    """Pickled, it makes a folder when unpickled: what a hostile file would run."""

    folder: str

    def __reduce__(self):
        return (os.makedirs, (self.folder,))


def test_a_pickled_payload_is_refused_and_does_not_run(victim, good, tmp_path):
    target = tmp_path / "made-by-unpickling"
    state = torch.load(good, weights_only=True)
    state["cbstate"]["extra"] = Payload(str(target))
    torch.save(state, good)
    refused(victim, good, "holds pickled Python objects", "file")
    assert not target.exists()


# -- changed bytes ----------------------------------------------------------------------------


def _flip_a_bit_in(path: Path, tensor: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().numpy().tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0, "the tensor's bytes are in the file once"
    data[at + len(raw) // 2] ^= 0b0000_0100
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("part", ["model", "optimizer", "rng"])
def test_one_flipped_bit_is_refused(victim, good, part):
    state = torch.load(good, weights_only=True)
    tensor = {"model": state["model"]["0.weight"],
              "optimizer": state["optimizer"]["state"][0]["exp_avg"],
              "rng": state["rng"]["torch"]}[part]
    _flip_a_bit_in(good, tensor)
    refused(victim, good, "the file's contents changed since it was written", "digest")


def test_a_changed_number_in_the_callback_state_is_refused(victim, good):
    def change(state):
        state["callbacks"]["ConditionalCallback"]["callback"]["step"] = 9

    state = torch.load(good, weights_only=True)
    change(state)
    torch.save(state, good)  # the old digest kept
    refused(victim, good, "the file's contents changed since it was written", "digest")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_a_truncated_file_is_refused(victim, good, keep):
    data = good.read_bytes()
    good.write_bytes(data[:int(len(data) * keep)])
    refused(victim, good, "is truncated or damaged", "file")


# -- another optimizer -----------------------------------------------------------------------


def test_an_sgd_checkpoint_is_refused_by_an_adam_learner_naming_both(tmp_path):
    sgd = make_learner(optimizer=torch.optim.SGD)
    sgd.fit(1)
    path = fp.save_checkpoint(sgd, tmp_path / "sgd.pt")
    adam = make_learner(seed=3)
    adam.fit(1)
    refused(adam, path, r"holds the state of a SGD optimizer \(torch\.optim\.sgd\.SGD\); this "
                        r"learner's optimizer is Adam \(torch\.optim\.adam\.Adam\)",
            "optimizer")


def test_an_optimizer_class_name_that_lies_is_caught_by_the_group_structure(victim, tmp_path):
    sgd = make_learner(optimizer=torch.optim.SGD)
    path = fp.save_checkpoint(sgd, tmp_path / "sgd.pt")
    rewrite(path, lambda state: state.update(optimizer_class="torch.optim.adam.Adam"))
    refused(victim, path, r"parameter group 0 lacks 'betas'", "optimizer")


# -- half-valid files: a valid model, a broken later part --------------------------------------


def _scheduler_step_is_text(state):
    state["callbacks"]["ConditionalCallback"]["callback"]["step"] = "eight"


HALF_VALID = {
    "rng is empty": (lambda s: s.update(rng={}), "rng", r"holds random states that lack 'python'"),
    "python rng": (lambda s: s["rng"].update(python=(3, (1, 2), None)), "rng", "rng"),
    "numpy rng": (lambda s: s["rng"].update(numpy=("MT19937",)), "rng", "rng"),
    "torch rng": (lambda s: s["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)),
                  "rng", "rng"),
    "optimizer groups": (lambda s: s["optimizer"].update(param_groups=[]), "optimizer",
                         "optimizer with 0 parameter groups"),
    "optimizer state": (lambda s: s["optimizer"]["state"].update({99: {}}), "optimizer",
                        "state for parameter 99"),
    "callback state": (_scheduler_step_is_text, "callbacks.ConditionalCallback",
                       "ConditionalCallback.load_state_dict failed"),
    "cbstate type": (lambda s: s["cbstate"].update(history=5), "cbstate.history",
                     r"cbstate\.history is an int in the checkpoint and a \w+ in this learner"),
    "model dtype": (lambda s: s["model"].update({"0.bias": s["model"]["0.bias"].double()}),
                    "model", r"'0\.bias' is torch\.float64 in the checkpoint and torch\.float32"),
    "scaler": (lambda s: s.update(scaler={"scale": 1.0}), "scaler", "scaler"),
}


@pytest.mark.parametrize("name", list(HALF_VALID))
def test_a_file_valid_up_to_a_broken_part_changes_nothing(victim, good, name):
    change, part, match = HALF_VALID[name]
    if part == "scaler":
        victim.scaler = torch.amp.GradScaler("cpu")
    refused(victim, rewrite(good, change), match, part)


@attrs.define
class Counter(fp.Callback):
    """State that a later callback's failed load must not leave changed."""

    n: int = 0

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]


def test_callbacks_loaded_before_the_one_that_fails_are_restored(tmp_path):
    source = make_learner(Counter(7))
    path = fp.save_checkpoint(source, tmp_path / "c.pt")
    rewrite(path, _scheduler_step_is_text)
    learner = make_learner(Counter(2), seed=1)
    refused(learner, path, "ConditionalCallback", "callbacks.ConditionalCallback")
    assert learner.get_callback(Counter).n == 2


def test_the_comparison_sees_what_a_load_changes(victim, good):
    """The control for `refused`: a load that succeeds changes every part it compares."""
    before = snapshot(victim)
    fp.load_checkpoint(victim, good)
    after = snapshot(victim)
    assert [key for key in before if same(before[key], after[key])] == []
