"""Checkpoints: one file with everything a learner needs to continue training exactly.

    fp.save_checkpoint(learner, "run/final.pt")
    fp.load_checkpoint(learner, "run/checkpoints")   # a file, or a folder: its latest checkpoint
    learner.fit(3)                                   # as if training had never stopped

A checkpoint is one `torch.save` file holding a dict:

    format      "fluxpy.checkpoint", the marker that tells it from other torch files
    version     FORMAT_VERSION; files from a newer version are refused
    model       the model's state_dict (of `model.module` when the model is wrapped in
                DistributedDataParallel, so checkpoints move freely between DDP and one process)
    optimizer   the optimizer's state_dict
    scaler      `learner.scaler.state_dict()`, or None
    callbacks   {graph name ("Scheduler", "Metrics#2"): encoded state_dict()} of every callback
                with `state_dict()` and `load_state_dict(state)` methods
    cbstate     {key: encoded value} of `learner.cbstate` (history, metricsepoch, ...)
    rng         {"python": random.getstate(),
                 "numpy": ("MT19937", keys as an int64 tensor, pos, has_gauss, cached_gaussian),
                 "torch": torch.get_rng_state(), "cuda": [one state per CUDA device]}

It loads with `torch.load(weights_only=True)`: no pickled code. Encoded values hold only None,
bools, numbers, strings, bytes, tensors, and lists, tuples, sets and dicts with str or int keys
of those. Anything else is a tagged dict, `{"__fluxpy__": kind, ...}`:

    {"__fluxpy__": "attrs", "class": "fluxpy.phases.TrainingPhase", "fields": {...}}
    {"__fluxpy__": "dict", "items": [(key, value), ...]}    keys that are not str or int
    {"__fluxpy__": "namespace", "fields": {...}}             a types.SimpleNamespace
    {"__fluxpy__": "ndarray", "data": tensor}                a numpy array

So `cbstate.history[TrainingPhase()]`, a `History`, is an "attrs" value under an "attrs" key.
Classes are found by qualified name among the `Phase` subclasses and the modules already
imported; loading imports nothing.

Files are written atomically: a temporary file in the same folder, flushed and fsynced, moved
over the target with `os.replace`, then the folder is fsynced. A kill at any moment leaves
either the old file or the new one, never a partial file under the checkpoint's name.

Extending:
    A callback keeps its own state in checkpoints by defining `state_dict()` (returning values
    the encoding above can hold) and `load_state_dict(state)`.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint_encoding import decode, encode
from .errors import CheckpointError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "checkpoint_files",
    "checkpoint_state",
    "load_checkpoint",
    "save_checkpoint",
    "write_atomically",
]

FORMAT = "fluxpy.checkpoint"
FORMAT_VERSION = 1

#: The names a `Checkpointer` gives its files; loading a folder looks only at these.
CHECKPOINT_NAME = re.compile(r"^epoch-(\d+)\.pt$")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes zip archives


def save_checkpoint(learner, path: str | os.PathLike) -> Path:
    """Write `learner`'s complete training state to `path`, atomically; returns the path."""
    path = Path(path)
    write_atomically(checkpoint_state(learner), path)
    return path


def load_checkpoint(learner, path: str | os.PathLike) -> Path:
    """Restore `learner` from a checkpoint file, or from a folder's latest `epoch-NNNN.pt`.

    Everything is checked before anything changes: on a `CheckpointError` (missing, truncated,
    foreign or newer file, another model) the learner is as it was. Callbacks with state that
    the checkpoint lacks keep theirs (with a warning), and so does the rest of `cbstate`.
    Returns the file that was loaded.
    """
    file = _resolve(Path(path))
    state = _read(file)
    model = unwrap_model(learner.model)
    _check_model(model, state["model"], file)
    _check_optimizer(learner.optimizer, state["optimizer"], file)
    callbacks = {name: _decode(value, file, f"the state of {name}")
                 for name, value in state["callbacks"].items()}
    cbstate = {key: _decode(value, file, f"cbstate.{key}")
               for key, value in state["cbstate"].items()}

    model.load_state_dict(state["model"])
    learner.optimizer.load_state_dict(state["optimizer"])
    if state["scaler"] is not None:
        if learner.scaler is None:
            warnings.warn(f"{file} holds gradient scaler state but learner.scaler is None; add "
                          "the callback that installs the scaler before loading", stacklevel=2)
        else:
            learner.scaler.load_state_dict(state["scaler"])
    _restore_callbacks(learner, callbacks, file)
    _restore_cbstate(learner.cbstate, cbstate)
    set_rng_state(state["rng"])
    return file


def checkpoint_state(learner) -> dict[str, Any]:
    """The dict a checkpoint file holds (tensors shared with the learner, not copied)."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": unwrap_model(learner.model).state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "scaler": None if learner.scaler is None else learner.scaler.state_dict(),
        "callbacks": {name: encode(cb.state_dict(), f"{name}.state_dict()")
                      for name, cb in stateful_callbacks(learner)},
        "cbstate": {key: encode(value, f"learner.cbstate.{key}")
                    for key, value in vars(learner.cbstate).items()},
        "rng": rng_state(),
    }


def write_atomically(state: dict[str, Any], path: Path) -> None:
    """`torch.save(state, path)` so that `path` is never seen half-written.

    A failure (disk full, no permission) raises `CheckpointError` naming `path`, removes the
    temporary file and leaves any previous file at `path` as it was.
    """
    folder = path.parent
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(folder)
    except Exception as exc:
        cause = _os_error(exc)
        if cause is None:
            raise
        raise CheckpointError(
            path, f"could not be written: {cause.strerror or cause}. No partial file was left "
            "and the learner is unchanged; free space or fix the folder, then save again."
        ) from cause
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def checkpoint_files(folder: Path) -> list[tuple[int, Path]]:
    """`(epoch, path)` of the complete checkpoints (`epoch-NNNN.pt`) in `folder`, oldest first.

    Temporary files of interrupted writes (`.epoch-NNNN.pt.*.tmp`) are not among them.
    """
    found = []
    for entry in os.scandir(folder):
        match = CHECKPOINT_NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside `DistributedDataParallel` / `DataParallel`, else `model` itself."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


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
    if path.is_dir():
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
    with open(file, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(file, "is empty (0 bytes): not a checkpoint.")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        if head != _ZIP_MAGIC:
            raise CheckpointError(file, "is not a checkpoint: it is not a file torch.save "
                                  "wrote.") from exc
        if "Weights only load failed" in str(exc):
            raise CheckpointError(file, "is not a fluxpy checkpoint: it holds pickled Python "
                                  "objects, which fluxpy checkpoints never do (and "
                                  "torch.load(weights_only=True) refuses).") from exc
        raise CheckpointError(file, f"is truncated or damaged: torch.load failed with "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0]}. Load an "
                              "earlier checkpoint.") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = (f"a dict with keys {sorted(map(str, state))[:6]}" if isinstance(state, dict)
                else f"a {type(state).__name__}")
        raise CheckpointError(file, f"is not a fluxpy checkpoint: it holds {what} without the "
                              f"format marker {FORMAT!r}. A plain state_dict loads with "
                              "model.load_state_dict(torch.load(path)).")
    version = state.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(file, f"is damaged: its format version is {version!r}.")
    if version > FORMAT_VERSION:
        raise CheckpointError(file, f"was written by a newer fluxpy (checkpoint format version "
                              f"{version}; this fluxpy reads up to {FORMAT_VERSION}): upgrade "
                              "fluxpy to load it.")
    for key, kind in (("model", dict), ("optimizer", dict), ("callbacks", dict),
                      ("cbstate", dict), ("rng", dict)):
        if not isinstance(state.get(key), kind):
            raise CheckpointError(file, f"is damaged: its {key!r} entry is missing or not a "
                                  f"{kind.__name__}.")
    return state


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
        raise CheckpointError(file, f"holds another model: {'; '.join(parts)}.")
    for name, tensor in current.items():
        other = saved[name]
        if not isinstance(other, torch.Tensor) or other.shape != tensor.shape:
            shape = tuple(other.shape) if isinstance(other, torch.Tensor) else type(other).__name__
            raise CheckpointError(file, f"holds another model: parameter {name!r} has shape "
                                  f"{shape} in the checkpoint and {tuple(tensor.shape)} in this "
                                  "learner's model.")


def _check_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any], file: Path) -> None:
    groups = saved.get("param_groups")
    ours = optimizer.param_groups
    if not isinstance(groups, list) or len(groups) != len(ours):
        n = len(groups) if isinstance(groups, list) else groups
        raise CheckpointError(file, f"holds an optimizer with {n} parameter groups; this "
                              f"learner's {type(optimizer).__name__} has {len(ours)}.")
    for i, (theirs, mine) in enumerate(zip(groups, ours)):
        if len(theirs.get("params", ())) != len(mine["params"]):
            raise CheckpointError(file, f"holds an optimizer whose parameter group {i} has "
                                  f"{len(theirs.get('params', ()))} parameters; this learner's "
                                  f"has {len(mine['params'])}.")


def _decode(value: Any, file: Path, what: str) -> Any:
    try:
        return decode(value)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(file, f"cannot restore {what}: {exc}") from exc


def _restore_callbacks(learner, states: dict[str, Any], file: Path) -> None:
    stateful = dict(stateful_callbacks(learner))
    for name, cb in stateful.items():
        if name in states:
            cb.load_state_dict(states[name])
        else:
            warnings.warn(f"{file} holds no state for {name}; it keeps its current state",
                          stacklevel=3)
    unused = [name for name, state in states.items() if name not in stateful and state]
    if unused:
        warnings.warn(f"{file} holds state for {', '.join(unused)}, which this learner does "
                      "not have; that state is not restored", stacklevel=3)


def _restore_cbstate(cbstate: types.SimpleNamespace, saved: dict[str, Any]) -> None:
    """Set each saved key; dicts are refilled in place, so callbacks holding them see it."""
    for key, value in saved.items():
        current = getattr(cbstate, key, None)
        if isinstance(current, dict) and isinstance(value, dict):
            current.clear()
            current.update(value)
        else:
            setattr(cbstate, key, value)


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


def _few(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")
