"""Checkpoints: one file with everything a learner needs to continue training exactly.

    fp.save_checkpoint(learner, "run/final.pt")
    fp.load_checkpoint(learner, "run/checkpoints")   # a file, or a folder: its latest checkpoint
    fp.load_checkpoint(learner, "run/checkpoints", which="best")  # the best monitored one
    learner.fit(3)                                   # as if training had never stopped

A checkpoint is one `torch.save` file holding a dict:

    format      "fluxpy.support.checkpoint", the marker that tells it from other torch files
    version     FORMAT_VERSION; files from a newer version are refused
    model       the model's state_dict (of `unwrap_model(model)`: without the wrapper of
                DistributedDataParallel or torch.compile, so checkpoints move freely between
                DDP and one process, compiled and plain models)
    optimizer   the optimizer's state_dict
    optimizer_class  its class ("torch.optim.adamw.AdamW"): another optimizer's state is refused
    scaler      `learner.scaler.state_dict()`, or None
    callbacks   {graph name ("Scheduler", "Metrics#2"): encoded state_dict()} of every callback
                with `state_dict()` and `load_state_dict(state)` methods (wrappers such as
                `throttle` hold the wrapped callback's)
    cbstate     {key: encoded value} of `learner.cbstate` (history, metricsepoch, ...)
    rng         {"python": random.getstate(),
                 "numpy": ("MT19937", keys as an int64 tensor, pos, has_gauss, cached_gaussian),
                 "torch": torch.get_rng_state(), "cuda": [one state per CUDA device]}
    digest      `checkpoint_digest` of the rest: a file whose contents changed is refused

A checkpoint taken in the middle of a training epoch (version 3) also holds:

    position    `learner.position.state()`: the phase of the round, the steps done in its
                training epoch, the data's length, batch size and dataset length, and the
                random state the epoch's batch order was drawn from
                (`fluxpy.engine.position`)
    grads       {parameter name: gradient} of the parameters that have one (the gradients
                `GradientAccumulation` has summed so far)
    ranks       under DDP, each rank's callbacks, rng and unsynchronised grads
                (`fluxpy.support.checkpoint_ranks`); each rank loads its own

Any checkpoint of a learner whose training data is a `DataLoader` with its own `generator`
holds `data_rng`, that generator's state, set on it when the next training epoch begins (so
the shuffling after a resume is the uninterrupted run's).

After loading one, the next `fit` first finishes that epoch, from the next batch on.

A learner whose model is sharded with FSDP writes a folder of that name instead, with the
model's and optimizer's shards written by every rank through `torch.distributed.checkpoint`
and the rest of this dict in it as `fluxpy.pt` (`fluxpy.support.checkpoint_sharded`).

It loads with `torch.load(weights_only=True)`: no pickled code. Encoded values hold only None,
bools, numbers, strings, bytes, tensors, and lists, tuples, sets and dicts with str or int keys
of those. Anything else is a tagged dict, `{"__fluxpy__": kind, ...}`:

    {"__fluxpy__": "attrs", "class": "fluxpy.core.phases.TrainingPhase", "fields": {...}}
    {"__fluxpy__": "dict", "items": [(key, value), ...]}    keys that are not str or int
    {"__fluxpy__": "namespace", "fields": {...}}             a types.SimpleNamespace
    {"__fluxpy__": "ndarray", "data": tensor}                a numpy array

So `cbstate.history[TrainingPhase()]`, a `History`, is an "attrs" value under an "attrs" key.
Only fluxpy's own values and classes registered with `fp.register_checkpoint_class` are
built; loading imports nothing.

Loading is all or nothing: the digest and every part are checked against the learner before
anything changes (see `load_checkpoint`). Version 1 files, written before digests, load with a
warning.

Files are written atomically: a temporary file in the same folder, created with the umask's
mode like any file the user writes, flushed and fsynced, moved over the target with
`os.replace`, then the folder is fsynced. A kill at any moment leaves either the old file or
the new one, never a partial file under the checkpoint's name.

Extending:
    A callback keeps its own state in checkpoints by defining `state_dict()` (returning values
    the encoding above can hold) and `load_state_dict(state)`. `load_state_dict` should raise
    for a state it cannot take: the load is then undone and refused.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import numbers
import os
import random
import re
import secrets
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import get_state_dict

from ..core.errors import CheckpointError
from ..engine.position import generator_state_of, mismatch
from .checkpoint_encoding import DecodeError, decode, encode, qualified_name
from .checkpoint_ranks import own_rank_state
from .compiling import is_compiled, without_compiled_prefix
from .strategies import is_sharded_model

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "best_checkpoint",
    "best_scored",
    "checkpoint_digest",
    "checkpoint_files",
    "checkpoint_state",
    "load_checkpoint",
    "replaced_atomically",
    "save_checkpoint",
    "write_atomically",
    "write_checkpoint",
]

FORMAT = "fluxpy.support.checkpoint"
FORMAT_VERSION = 3  # 2 added the digest and the optimizer class, 3 the mid-epoch position
#: Files without a position are written as version 2, which earlier fluxpy reads too.
_EPOCH_END_VERSION = 2

#: The names a `Checkpointer` gives its files; loading a folder looks only at these.
#: `epoch-NNNN.pt` after N rounds, `epoch-NNNN-step-SSSSSS.pt` S steps into the next one.
CHECKPOINT_NAME = re.compile(r"^epoch-(\d+)(?:-step-(\d+))?\.pt$")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes zip archives
#: In a sharded checkpoint's folder: everything but the model's and optimizer's shards.
SHARDED_META = "fluxpy.pt"


def save_checkpoint(learner, path: str | os.PathLike) -> Path:
    """Write `learner`'s complete training state to `path`, atomically; returns the path.

    Under FSDP `path` becomes a folder of shards that every rank writes: call it on every
    rank (`fluxpy.support.checkpoint_sharded`); else it is one file.
    """
    path = Path(path)
    state = checkpoint_state(learner)
    if state.get("sharded"):
        from .checkpoint_sharded import save_sharded

        save_sharded(state, path)
    else:
        write_checkpoint(state, path)
    return path


def load_checkpoint(learner, path: str | os.PathLike, *, which: str = "latest") -> Path:
    """Restore `learner` from a checkpoint file, or from a folder's latest (`epoch-NNNN.pt`
    or, taken in the middle of an epoch, `epoch-NNNN-step-SSSSSS.pt`), or with
    `which="best"` from the folder's checkpoint with the best `monitor` value of those a
    `Checkpointer(monitor=..., keep_best=...)` kept (see `best_checkpoint`).

    All or nothing: the file's digest and every part (model, optimizer, scaler, RNG, each
    callback's state, cbstate) are checked before anything changes, and a `CheckpointError`
    (naming the file and the part) leaves the learner as it was. Only fluxpy's values and
    registered classes are built (`register_checkpoint_class`). Callbacks with state that the
    checkpoint lacks keep theirs (with a warning), and so does the rest of `cbstate`.
    Returns the file that was loaded.
    """
    if which not in ("latest", "best"):
        raise ValueError(f"load_checkpoint(which={which!r}): 'latest' (the newest checkpoint "
                         "of a folder) or 'best' (the best monitored one)")
    path = Path(path)
    if which == "best" and not path.is_dir():
        raise CheckpointError(path, "is not a folder: which='best' picks among the files of a "
                              "Checkpointer's folder; give the folder, or load this file "
                              "without which.")
    file = best_checkpoint(path) if which == "best" else _resolve(path)
    if file.is_dir():  # a sharded checkpoint (`fluxpy.support.checkpoint_sharded`)
        from .checkpoint_sharded import load_sharded

        return load_sharded(learner, file)
    state = own_rank_state(_read(file), file)  # under DDP, this rank's part of a mid-epoch one
    state = without_compiled_prefix(state)  # written with a compiled model's keys

    def model_and_optimizer() -> None:
        model = unwrap_model(learner.model)
        if is_sharded_model(model):  # a one-file checkpoint into a model sharded with FSDP
            from .checkpoint_sharded import load_full_into_sharded

            load_full_into_sharded(learner, state)
            return
        model.load_state_dict(state["model"])
        learner.optimizer.load_state_dict(state["optimizer"])

    restore(learner, state, file, model_and_optimizer)
    return file


def restore(learner, state: dict[str, Any], file: Path,
            model_and_optimizer: Callable[[], None]) -> None:
    """Check every part of `state` (a checkpoint's dict, this rank's part) against `learner`,
    then load them; `model_and_optimizer()` loads those two, after the checks."""
    parts = _checked_parts(learner, state, file)
    position = _checked_position(learner, state, file)
    # Callbacks first: their own load_state_dict is their check, undone if it fails; every
    # part after them was checked above and goes in as it is.
    _load_callbacks(parts.callbacks, file)
    model_and_optimizer()
    if parts.scaler is not None:
        learner.scaler.load_state_dict(parts.scaler)
    _restore_cbstate(learner.cbstate, parts.cbstate)
    set_rng_state(state["rng"])
    if position[0] is not None:  # the gradients of an unfinished accumulation group
        for name, param in unwrap_model(learner.model).named_parameters():
            grad = position[1].get(name)
            param.grad = None if grad is None else grad.to(param.device)
    if hasattr(learner, "position"):
        learner.position.pending = position[0]
        learner.position.generator_state = state.get("data_rng")
        learner.position.schedule = _checked_schedule(state, file)


def best_checkpoint(folder: str | os.PathLike) -> Path:
    """The checkpoint of a `Checkpointer`'s folder with the best `monitor` value: the
    Checkpointer's state in the folder's newest checkpoint holds the value of each epoch file
    (`scores`) and whether lower or higher is better (`mode`). Ties go to the earlier epoch."""
    folder = Path(folder)
    newest = _resolve(folder)
    saved = _read(newest)["callbacks"].get("Checkpointer")
    ranking = _decode(saved, newest, "callbacks.Checkpointer") if saved is not None else {}
    best = best_scored(folder, ranking.get("scores", {}), ranking.get("mode"))
    if best is None:
        raise CheckpointError(folder, "has no checkpoint ranked by a monitored metric: the "
                              "Checkpointer that wrote it had no monitor. Save with "
                              "fp.Checkpointer(folder, monitor='loss', keep_best=1), or load "
                              "the latest with which='latest'.")
    return best


def best_scored(folder: Path, scores: Mapping[str, float], mode: str | None) -> Path | None:
    """The file of `folder` with the best score (`mode` "min" or "max") among `scores`
    ({file name: monitor value}), or None when none of them is there."""
    present = {path.name: path for _, path in checkpoint_files(folder)}
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted((sign * score, name) for name, score in scores.items()
                    if name in present and not math.isnan(score))
    return present[ranked[0][1]] if ranked and mode in ("min", "max") else None


def checkpoint_state(learner) -> dict[str, Any]:
    """The dict a checkpoint file holds, but its digest (tensors shared with the learner)."""
    position = getattr(learner, "position", None)
    mid_epoch = position is not None and position.mid_epoch
    model = unwrap_model(learner.model)
    extra = {} if not mid_epoch else {
        "position": position.state(),
        "grads": {name: p.grad for name, p in model.named_parameters() if p.grad is not None},
    }
    budget = getattr(learner, "budget", None)
    schedule = None if budget is None else budget.schedule(mid_epoch)
    if schedule is not None:  # where fit(validate_every=...) is in its schedule
        extra["schedule"] = schedule
    data = getattr(learner, "data", None)
    generator = generator_state_of(getattr(data, "training", None))
    if generator is not None:
        extra["data_rng"] = generator
    if is_sharded_model(model):  # DTensor shards keyed by name, for torch.distributed.checkpoint
        extra["sharded"] = True
        # DTensors cannot be detached under inference_mode (a validation epoch's EpochEnd)
        with torch.inference_mode(False):
            model_state, optimizer_state = get_state_dict(model, learner.optimizer)
    else:
        model_state, optimizer_state = model.state_dict(), learner.optimizer.state_dict()
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION if mid_epoch else _EPOCH_END_VERSION,
        **extra,
        "model": model_state,
        "optimizer": optimizer_state,
        "optimizer_class": qualified_name(type(learner.optimizer)),
        "scaler": None if learner.scaler is None else learner.scaler.state_dict(),
        "callbacks": {name: encode(cb.state_dict(), f"{name}.state_dict()")
                      for name, cb in stateful_callbacks(learner)},
        "cbstate": {key: encode(value, f"learner.cbstate.{key}")
                    for key, value in vars(learner.cbstate).items()},
        "rng": rng_state(),
    }


def write_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `checkpoint_state`'s dict to `path` atomically, with its digest."""
    write_atomically({**state, "digest": checkpoint_digest(state)}, path)


def checkpoint_digest(state: dict[str, Any]) -> str:
    """sha256 over a canonical walk of `state` but its "digest" entry: each tensor's dtype,
    shape and bytes, each plain value with its type, containers in order (sets sorted).

    A walk, not the file's bytes, so the file stays one plain `torch.save` dict that
    `torch.load` reads, and the digest is the same before and after the round trip.
    """
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in state.items() if key != "digest"})
    return digest.hexdigest()


def write_atomically(state: dict[str, Any], path: Path) -> None:
    """`torch.save(state, path)` so that `path` is never seen half-written.

    A failure (disk full, no permission) raises `CheckpointError` naming `path`, removes the
    temporary file and leaves any previous file at `path` as it was.
    """
    try:
        with replaced_atomically(path) as f:
            torch.save(state, f)
    except Exception as exc:
        cause = _os_error(exc)
        if cause is None:
            raise
        raise CheckpointError(
            path, f"could not be written: {cause.strerror or cause}. No partial file was left "
            "and the learner is unchanged; free space or fix the folder, then save again."
        ) from cause


@contextlib.contextmanager
def replaced_atomically(path: Path) -> Iterator[BinaryIO]:
    """A binary file whose contents replace `path` when the block ends without an error.

    The temporary file is in the same folder (`.NAME.RANDOM.tmp`), created with mode 0o666
    less the umask like any file the user writes; it is flushed and fsynced, moved over
    `path` with `os.replace`, and the folder is fsynced. A kill at any moment leaves either
    the old file or the new one; an error removes the temporary file and raises.
    """
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def checkpoint_files(folder: Path) -> list[tuple[tuple[int, int], Path]]:
    """`((epochs, steps), path)` of the complete checkpoints in `folder`, oldest first:
    `epoch-NNNN.pt` is `(N, 0)`, `epoch-NNNN-step-SSSSSS.pt` (S steps into the round after
    N) is `(N, S)`.

    A sharded checkpoint is a folder of that name holding `fluxpy.pt`. Temporary files and
    folders of interrupted writes (`.epoch-NNNN.pt.*.tmp`) are not among them.
    """
    found = []
    for entry in os.scandir(folder):
        match = CHECKPOINT_NAME.match(entry.name)
        if match and (entry.is_file() or os.path.isfile(os.path.join(entry.path, SHARDED_META))):
            key = (int(match.group(1)), int(match.group(2) or 0))
            found.append((key, Path(entry.path)))
    return sorted(found)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's model inside the wrappers training adds, in any nesting:
    `DistributedDataParallel`, `DataParallel` and torch.compile's `OptimizedModule`
    (`Learner(compile=True)`). FSDP2's `fully_shard` changes the module in place (its class
    becomes a subclass of `FSDPModule`), so such a model is its own plain model."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif is_compiled(model):
            model = model._orig_mod
        else:
            return model


def stateful_callbacks(learner) -> list[tuple[str, Any]]:
    """`(graph name, callback)` of the callbacks with `state_dict` and `load_state_dict`."""
    graph = learner.graph
    return [(name, cb) for name, cb in zip(graph.names, graph.callbacks)
            if callable(getattr(cb, "state_dict", None))
            and callable(getattr(cb, "load_state_dict", None))]


def rng_state() -> dict[str, Any]:
    """The global random states of python, numpy, torch and every CUDA device."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (CUDA states only where there are such devices)."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


# -- loading -----------------------------------------------------------------------------------


def _resolve(path: Path) -> Path:
    if path.is_dir() and not (path / SHARDED_META).is_file():
        files = checkpoint_files(path)
        if not files:
            raise CheckpointError(path, "holds no checkpoint (no epoch-NNNN.pt file); point "
                                  "load_checkpoint at a checkpoint file or at a Checkpointer's "
                                  "folder that has saved one.")
        return files[-1][1]
    if not path.exists():
        raise CheckpointError(path, "does not exist; give a checkpoint file or a Checkpointer's "
                              "folder.")
    return path


def _read(file: Path) -> dict[str, Any]:
    """The file's dict, its format, version and digest checked, every entry there."""
    with open(file, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(file, "is empty (0 bytes): not a checkpoint.", "file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        if head != _ZIP_MAGIC:
            raise CheckpointError(file, "is not a checkpoint: it is not a file torch.save "
                                  "wrote.", "file") from exc
        if "Weights only load failed" in str(exc):
            raise CheckpointError(file, "is not a fluxpy checkpoint: it holds pickled Python "
                                  "objects, which fluxpy checkpoints never do (and "
                                  "torch.load(weights_only=True) refuses, running none of "
                                  "them).", "file") from exc
        raise CheckpointError(file, f"is truncated or damaged: torch.load failed with "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0]}. Load an "
                              "earlier checkpoint.", "file") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = (f"a dict with keys {sorted(map(str, state))[:6]}" if isinstance(state, dict)
                else f"a {type(state).__name__}")
        raise CheckpointError(file, f"is not a fluxpy checkpoint: it holds {what} without the "
                              f"format marker {FORMAT!r}. A plain state_dict loads with "
                              "model.load_state_dict(torch.load(path)).", "file")
    version = state.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(file, f"is damaged: its format version is {version!r}.", "file")
    if version > FORMAT_VERSION:
        raise CheckpointError(file, f"was written by a newer fluxpy (checkpoint format version "
                              f"{version}; this fluxpy reads up to {FORMAT_VERSION}): upgrade "
                              "fluxpy to load it.", "file")
    _check_digest(state, file)
    for key in ("model", "optimizer", "callbacks", "cbstate", "rng"):
        if not isinstance(state.get(key), dict):
            raise CheckpointError(file, f"is damaged: its {key!r} entry is missing or not a "
                                  "dict.", key)
    return state


def _check_digest(state: dict[str, Any], file: Path) -> None:
    if "digest" not in state and state["version"] == 1:
        # Version 1 files were written before digests; everything else is checked as usual.
        warnings.warn(f"{file} was written by an earlier fluxpy, without a digest: that its "
                      "bytes are unchanged cannot be checked. Save it again (load it, then "
                      "fp.save_checkpoint) to add one.", stacklevel=4)
        return
    if not isinstance(state.get("digest"), str):
        raise CheckpointError(file, "is damaged: it has no digest, which every checkpoint of "
                              f"format version {state['version']} has.", "digest")
    if checkpoint_digest(state) != state["digest"]:
        raise CheckpointError(file, "the file's contents changed since it was written (its "
                              "digest does not match): it is damaged or was edited. Load an "
                              "earlier checkpoint.", "digest")


def _checked_schedule(state: dict[str, Any], file: Path) -> dict | None:
    """The saved `validate_every` schedule (`Budget.schedule`), or `None`."""
    schedule = state.get("schedule")
    if schedule is None:
        return None
    types = {"every": str, "steps": int, "rounds": int, "seconds": float, "due": bool}
    if not isinstance(schedule, dict) or any(
            not isinstance(schedule.get(key), kind) for key, kind in types.items()):
        raise CheckpointError(file, "is damaged: its 'schedule' entry is not a validation "
                              "schedule.", "schedule")
    return dict(schedule)


def _checked_position(learner, state: dict[str, Any], file: Path) -> tuple[dict | None, dict]:
    """The saved mid-epoch position (or None) and gradients, checked against the learner's
    model and, when it has them (and no DDP shards them later), its training data."""
    position, grads = state.get("position"), state.get("grads", {})
    data_rng = state.get("data_rng")
    if data_rng is not None and (not isinstance(data_rng, torch.Tensor)
                                 or data_rng.dtype != torch.uint8):
        raise CheckpointError(file, "is damaged: its 'data_rng' entry is not a generator's "
                              "state.", "data_rng")
    if position is None:
        return None, {}
    keys = {"kind", "length", "batch_size", "dataset_length", "rng", "phase", "steps"}
    if not isinstance(position, dict) or not keys <= set(position) or not isinstance(
            grads, dict):
        raise CheckpointError(file, "is damaged: its 'position' entry is not a position.",
                              "position")
    params = dict(unwrap_model(learner.model).named_parameters())
    for name, grad in grads.items():
        if name not in params or not isinstance(grad, torch.Tensor) or (
                grad.shape != params[name].shape):
            raise CheckpointError(file, f"holds a gradient for {name!r} that this model's "
                                  "parameters do not match.", "grads")
    data = getattr(learner, "data", None)
    training = getattr(data, "training", None) if data is not None else None
    # Under DDP the data is sharded when fit begins: fit checks the position against it.
    if training is not None and getattr(learner, "ddp", None) is None:
        problem = mismatch(position, training)
        if problem:
            raise CheckpointError(file, problem, "position")
    return position, grads


@attrs.frozen
class _Parts:
    """What a checkpoint restores besides model, optimizer and RNG, decoded and checked."""

    callbacks: list[tuple[str, Any, Any]]  # (graph name, callback, decoded state)
    cbstate: dict[str, Any]
    scaler: dict[str, Any] | None  # None: nothing to load into learner.scaler


def _checked_parts(learner, state: dict[str, Any], file: Path) -> _Parts:
    """Check every part of `state` against `learner`, changing nothing."""
    _check_model(unwrap_model(learner.model), state["model"], file)
    _check_optimizer(learner.optimizer, state["optimizer"], state.get("optimizer_class"), file)
    scaler = _checked_scaler(learner, state.get("scaler"), file)
    _check_rng(state["rng"], file)
    callbacks = _checked_callbacks(learner, state["callbacks"], file)
    cbstate = {}
    for key, value in state["cbstate"].items():
        cbstate[key] = _decode(value, file, f"cbstate.{key}")
        current = vars(learner.cbstate).get(key)
        if current is not None and _kind(cbstate[key]) is not _kind(current):
            raise CheckpointError(file, f"cbstate.{key} is {_a(type(cbstate[key]))} in the "
                                  f"checkpoint and {_a(type(current))} in this learner.",
                                  f"cbstate.{key}")
    return _Parts(callbacks, cbstate, scaler)


def _check_model(model: torch.nn.Module, saved: dict[str, Any], file: Path) -> None:
    current = model.state_dict()
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"this model has {_few(missing)} which the checkpoint lacks")
        if unexpected:
            parts.append(f"the checkpoint has {_few(unexpected)} which this model lacks")
        raise CheckpointError(file, f"holds another model: {'; '.join(parts)}.", "model")
    for name, tensor in current.items():
        other = saved[name]
        if not isinstance(other, torch.Tensor) or other.shape != tensor.shape:
            shape = tuple(other.shape) if isinstance(other, torch.Tensor) else type(other).__name__
            raise CheckpointError(file, f"holds another model: parameter {name!r} has shape "
                                  f"{shape} in the checkpoint and {tuple(tensor.shape)} in this "
                                  "learner's model.", "model")
        if other.dtype != tensor.dtype:
            raise CheckpointError(file, f"holds another model: parameter {name!r} is "
                                  f"{other.dtype} in the checkpoint and {tensor.dtype} in this "
                                  "learner's model; convert the model (e.g. model.to(dtype)) "
                                  "to the checkpoint's dtype before loading.", "model")


def _check_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any],
                     saved_class: str | None, file: Path) -> None:
    ours = qualified_name(type(optimizer))
    if saved_class is not None and saved_class != ours:
        theirs = saved_class.rpartition(".")[2]
        raise CheckpointError(
            file, f"holds the state of a {theirs} optimizer ({saved_class}); this learner's "
            f"optimizer is {type(optimizer).__name__} ({ours}). Build the learner with the "
            "optimizer the checkpoint was trained with.", "optimizer")
    groups, state = saved.get("param_groups"), saved.get("state")
    mine = optimizer.param_groups
    if not isinstance(groups, list) or len(groups) != len(mine):
        n = len(groups) if isinstance(groups, list) else groups
        raise CheckpointError(file, f"holds an optimizer with {n} parameter groups; this "
                              f"learner's {type(optimizer).__name__} has {len(mine)}.",
                              "optimizer")
    for i, (theirs, ours_group) in enumerate(zip(groups, mine)):
        params = theirs.get("params") if isinstance(theirs, dict) else None
        if not isinstance(params, list) or len(params) != len(ours_group["params"]):
            n = len(params) if isinstance(params, list) else params
            raise CheckpointError(file, f"holds an optimizer whose parameter group {i} has "
                                  f"{n} parameters; this learner's has "
                                  f"{len(ours_group['params'])}.", "optimizer")
        # A missing flag (a bool or None, e.g. `foreach`) is filled in by torch on load; a
        # missing hyperparameter (`betas`) would be a KeyError at the first step.
        lacking = [key for key, value in ours_group.items()
                   if key not in theirs and not isinstance(value, (bool, type(None)))]
        if lacking:
            raise CheckpointError(file, f"holds an optimizer whose parameter group {i} lacks "
                                  f"{_few(lacking)}, which this learner's "
                                  f"{type(optimizer).__name__} uses: it is another kind of "
                                  "optimizer.", "optimizer")
    count = sum(len(group["params"]) for group in mine)
    if not isinstance(state, dict):
        raise CheckpointError(file, "holds an optimizer without its state dict.", "optimizer")
    for index, value in state.items():
        if not (isinstance(index, int) and 0 <= index < count and isinstance(value, dict)):
            raise CheckpointError(file, f"holds optimizer state for parameter {index!r}; this "
                                  f"learner's {type(optimizer).__name__} has parameters 0 to "
                                  f"{count - 1}.", "optimizer")


def _checked_scaler(learner, saved: Any, file: Path) -> dict[str, Any] | None:
    """The scaler state to load, or None (no state, or no scaler to load it into)."""
    if saved is None:
        return None
    if learner.scaler is None:
        warnings.warn(f"{file} holds gradient scaler state but learner.scaler is None; add "
                      "the callback that installs the scaler before loading", stacklevel=4)
        return None
    expected = set(learner.scaler.state_dict())
    if not isinstance(saved, dict) or not expected <= set(saved):
        have = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise CheckpointError(file, f"holds gradient scaler state {have}; this learner's "
                              f"scaler needs {sorted(expected)}.", "scaler")
    return saved


def _check_rng(saved: dict[str, Any], file: Path) -> None:
    """Set each state on a generator of its own: what `set_rng_state` would refuse fails here."""
    lacking = [key for key in ("python", "numpy", "torch", "cuda") if key not in saved]
    if lacking:
        raise CheckpointError(file, f"holds random states that lack {_few(lacking)}.", "rng")
    try:
        random.Random().setstate(saved["python"])
        kind, keys, pos, has_gauss, cached = saved["numpy"]
        np.random.RandomState().set_state(
            (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.Generator().set_state(saved["torch"])
        cuda = saved["cuda"]
        if not (isinstance(cuda, list) and all(isinstance(s, torch.Tensor)
                                               and s.dtype == torch.uint8 for s in cuda)):
            raise TypeError("the CUDA states are not a list of byte tensors")
    except Exception as exc:
        raise CheckpointError(file, f"holds random states that cannot be set: "
                              f"{type(exc).__name__}: {exc}", "rng") from exc


def _checked_callbacks(learner, saved: dict[str, Any], file: Path) -> list[tuple[str, Any, Any]]:
    stateful = dict(stateful_callbacks(learner))
    for name in stateful:
        if name not in saved:
            warnings.warn(f"{file} holds no state for {name}; it keeps its current state",
                          stacklevel=4)
    unused = [name for name, state in saved.items() if name not in stateful and state]
    if unused:
        warnings.warn(f"{file} holds state for {', '.join(unused)}, which this learner does "
                      "not have; that state is not restored", stacklevel=4)
    return [(name, cb, _decode(saved[name], file, f"callbacks.{name}"))
            for name, cb in stateful.items() if name in saved]


def _load_callbacks(callbacks: list[tuple[str, Any, Any]], file: Path) -> None:
    """Load each callback's state; if one refuses its state, put back the state of those
    loaded so far (and its own), so the failure changes nothing."""
    done: list[tuple[Any, Any]] = []
    for name, cb, state in callbacks:
        own = copy.deepcopy(cb.state_dict())
        try:
            cb.load_state_dict(state)
        except Exception as exc:
            for restored, previous in [*done, (cb, own)]:
                restored.load_state_dict(previous)
            raise CheckpointError(file, f"{name}.load_state_dict failed with "
                                  f"{type(exc).__name__}: {exc}. The state is not one "
                                  f"{name} wrote, or {name} changed since.",
                                  f"callbacks.{name}") from exc
        done.append((cb, own))


def _decode(value: Any, file: Path, part: str) -> Any:
    try:
        return decode(value)
    except DecodeError as exc:
        raise CheckpointError(file, f"cannot restore {part}: {exc}", part) from exc


def _restore_cbstate(cbstate: types.SimpleNamespace, saved: dict[str, Any]) -> None:
    """Set each saved key; dicts are refilled in place, so callbacks holding them see it."""
    for key, value in saved.items():
        current = getattr(cbstate, key, None)
        if isinstance(current, dict) and isinstance(value, dict):
            current.clear()
            current.update(value)
        else:
            setattr(cbstate, key, value)


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
        if getattr(value, "_metadata", None) is not None:  # a module state_dict's versions
            _feed(digest, value._metadata)
    elif isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"  # torch.Size is a tuple
        digest.update(f"{kind} {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, (set, frozenset)):  # iteration order differs between processes
        digest.update(f"set {len(value)};".encode())
        for item in sorted(checkpoint_digest({"item": item}) for item in value):
            digest.update(item.encode())
    elif isinstance(value, bytes):
        digest.update(f"bytes {len(value)};".encode())
        digest.update(value)
    else:
        text = repr(value)
        digest.update(f"{type(value).__name__} {len(text)};{text}".encode())


def _os_error(exc: BaseException) -> OSError | None:
    """The `OSError` behind `exc`: torch.save reports a failed write (disk full) as a
    `RuntimeError` whose context is the `OSError`."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _kind(value: Any) -> type:
    """What a `cbstate` value must stay across a load: a dict (refilled in place, subclasses
    included), a list, a number, ... or, for anything else, its exact type."""
    for kind in (Mapping, list, tuple, set, str, bytes, numbers.Number, torch.Tensor,
                 np.ndarray):
        if isinstance(value, kind):
            return kind
    return type(value)


def _a(what: type | str) -> str:
    name = what if isinstance(what, str) else what.__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def _few(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")
