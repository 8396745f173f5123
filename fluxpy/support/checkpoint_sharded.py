"""Sharded checkpoints: a model sharded with FSDP is saved by every rank, with
`torch.distributed.checkpoint` (DCP), into one folder.

    run/checkpoints/epoch-0003.pt/      the checkpoint: a folder, under the usual name
        .metadata                       DCP's index of the shards (written by rank 0)
        __0_0.distcp, __1_0.distcp      each rank's shards of "model", "optimizer" (and, in the
                                        middle of an accumulation group, "grads")
        fluxpy.pt                       everything else, as in a one-file checkpoint (format,
                                        callbacks, cbstate, rng, position, "ranks", digest),
                                        written by rank 0

The model's and optimizer's state are `torch.distributed.checkpoint.state_dict.get_state_dict`'s:
tensors by parameter name, so DCP can load them at another number of ranks (2 -> 1, 1 -> 2) and
in a single process without any process group, into a plain model.

Atomic like a file: the ranks write into `.NAME.sharded.tmp`, and rank 0 renames it to `NAME`
once every rank's shards and `fluxpy.pt` are written and fsynced. A kill at any moment (of any
rank) leaves the temporary folder, which loading ignores and the next save removes, and the
previous checkpoints as they were.

`save_sharded(state, path)` is a collective: every rank calls it with its own
`checkpoint_state`. In the background (`Checkpointer(async_save=True)`), each rank copies its
state to host memory and its `BackgroundWriter` thread writes the copy; DCP's collectives go
through a gloo group of their own (`background_group`), never the default group that training
uses meanwhile. DCP's save returns once rank 0 has written the index of every rank's shards,
so rank 0's thread then writes `fluxpy.pt` and renames the folder: the same folder, with the
same guarantees, as a synchronous save. `wait_on_every_rank` waits for the write on every
rank, and raises on every rank if it failed on any, so that no rank goes on alone into a
collective the others left.

`load_sharded(learner, path)` checks everything it can before changing the
learner (model names and shapes from DCP's metadata, the rest as for one file), loads the
shards into copies, and only then into the learner.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
from torch.utils._pytree import tree_map_only

from ..core.errors import CheckpointError
from .async_save import BackgroundWriter, host_snapshot
from .checkpoint import (
    SHARDED_META,
    _checked_parts,
    _fsync_folder,
    _read,
    restore,
    unwrap_model,
    write_checkpoint,
)
from .checkpoint_ranks import own_rank_state
from .distributed import all_gather_object, is_rank_zero, on_rank_zero
from .strategies import is_sharded_model

__all__ = ["background_group", "is_sharded", "load_full_into_sharded", "load_sharded",
           "on_writing_ranks", "release_group", "remove_checkpoint", "save_sharded",
           "wait_on_every_rank"]

#: The parts of a state that DCP writes, each rank its shards.
SHARDED_PARTS = ("model", "optimizer", "grads")


def is_sharded(state: dict[str, Any]) -> bool:
    """Whether `checkpoint_state` gave this state for a model sharded with FSDP."""
    return state.get("sharded") is True


def on_writing_ranks(learner, fn: Callable[[], Any]) -> Any:
    """`fn()` on every rank when the learner's checkpoints are sharded (each rank writes its
    shards), else on rank 0 only with the others waiting (`on_rank_zero`)."""
    if is_sharded_model(unwrap_model(learner.model)):
        with torch.inference_mode(False):  # DTensors cannot be detached or copied under it
            return fn()
    return on_rank_zero(fn)


def save_sharded(state: dict[str, Any], path: str | os.PathLike,
                 writer: BackgroundWriter | None = None, group: Any = None,
                 then: Callable[[], None] = lambda: None) -> None:
    """Write `state` (this rank's `checkpoint_state`) as the folder `path`, atomically, then
    call `then()` on rank 0 (e.g. to prune older checkpoints).

    A collective: every rank calls it with its own state, at the same point. A folder or file
    already at `path` is replaced. With `writer` (each rank's own), the call returns once the
    state is copied to host memory: the writer's thread writes the copy, DCP's collectives
    going through `group` (`background_group()`, not the group training uses), and rank 0
    renames the folder into place once DCP reports every rank's shards written. Wait for it
    with `wait_on_every_rank(writer)`.
    """
    path = Path(path)
    paths = all_gather_object(str(path.absolute()))
    if len(set(paths)) > 1:
        raise CheckpointError(path, f"is not where every rank saves: the ranks gave {paths}. "
                              "A sharded checkpoint is one folder that every rank writes its "
                              "shards into: give every rank the same path.")
    tmp = path.parent / f".{path.name}.sharded.tmp"
    on_rank_zero(lambda: remove_checkpoint(tmp))
    if writer is None:
        _write_shards(state, tmp, path, group=None)
        on_rank_zero(lambda: _complete(state, tmp, path, then))
        return
    snapshot = host_snapshot(state)  # the training thread waits for this copy only

    def write() -> None:  # on this rank's writer thread
        _write_shards(snapshot, tmp, path, group)
        if is_rank_zero():  # DCP returned: rank 0 wrote the index of every rank's shards
            _complete(snapshot, tmp, path, then)

    writer.submit(write, path)


def _write_shards(state: dict[str, Any], tmp: Path, path: Path, group: Any) -> None:
    """Every rank: write its shards into `tmp` with DCP (a collective on `group`)."""
    shards = {key: state[key] for key in SHARDED_PARTS if state.get(key)}
    try:
        dcp.save(shards, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True),
                 process_group=group)
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(path, f"could not be written: torch.distributed.checkpoint "
                              f"failed with {_failure(exc)}. The previous checkpoints are "
                              "unchanged.") from exc


def background_group() -> Any:
    """A gloo process group of every rank, for the collectives of background writes (a
    collective: every rank calls it). Training's collectives keep the default group to
    themselves: two threads must not use one group at once."""
    return torch.distributed.new_group(backend="gloo")


def release_group(group: Any) -> None:
    """Shut down a `background_group()` once no write uses it (its threads end now, not at
    the interpreter's exit, where their teardown can abort the process)."""
    torch.distributed.destroy_process_group(group)


def wait_on_every_rank(writer: BackgroundWriter) -> None:
    """Every rank: wait for its background write; if it failed on any rank, raise on every
    rank (its own error where it failed), so that the ranks go on, or stop, together."""
    error = None
    try:
        writer.wait()
    except BaseException as exc:  # raised below, once every rank knows
        error = exc
    failed = [rank for rank, bad in enumerate(all_gather_object(error is not None)) if bad]
    if error is not None:
        raise error
    if failed:
        raise CheckpointError(writer.target, f"was not written: the background write failed on "
                              f"rank {', '.join(map(str, failed))} (its error is raised there). "
                              f"{writer.owner} stops here, on every rank; the checkpoints "
                              "written before it are as they were.")


def _complete(state: dict[str, Any], tmp: Path, path: Path,
              then: Callable[[], None]) -> None:
    """Rank 0, once every shard is written: add `fluxpy.pt` and rename the folder to `path`,
    then call `then()`.

    A folder cannot replace another in one rename, so one already at `path` (a second
    `save_checkpoint` to the same path; a Checkpointer's names are new) is first moved aside:
    a kill between the two renames leaves neither under `path`, the new checkpoint complete
    in the temporary folder.
    """
    # What load_checkpoint checks the optimizer by (its kind, groups and hyperparameters);
    # the model's names and shapes are in DCP's metadata.
    rest = {key: value for key, value in state.items() if key not in SHARDED_PARTS}
    rest["model"] = {}
    rest["optimizer"] = {"param_groups": state["optimizer"]["param_groups"], "state": {}}
    write_checkpoint(rest, tmp / SHARDED_META)
    _fsync_folder(tmp)
    old = path.parent / f".{path.name}.old.tmp"
    if path.exists():
        remove_checkpoint(old)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_folder(path.parent)
    remove_checkpoint(old)
    then()


def remove_checkpoint(path: Path) -> None:
    """Remove a checkpoint file or folder (or an interrupted write's), if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def load_sharded(learner, path: Path) -> Path:
    """Restore `learner` from the sharded checkpoint folder `path`, at any number of ranks,
    FSDP or not; all or nothing (see the module docstring). Under a process group, every
    rank calls it."""
    state = own_rank_state(_read(path / SHARDED_META), path)
    saved = _saved_tensors(path)
    state["model"] = {name[len("model."):]: meta for name, meta in saved.items()
                      if name.startswith("model.")}
    with warnings.catch_warnings():  # names, shapes, kinds before reading a shard; restore
        warnings.simplefilter("ignore")  # checks again, and warns, below
        _checked_parts(learner, state, path)
    model, optimizer = learner.model, learner.optimizer
    fresh = not optimizer.state  # get_state_dict fills in an unused optimizer's state
    model_state, optimizer_state = get_state_dict(model, optimizer)
    # Copies, so that the learner changes only once every shard has been read.
    target = tree_map_only(torch.Tensor, lambda t: t.detach().clone(),
                           {"model": model_state, "optimizer": optimizer_state})
    params = dict(unwrap_model(model).named_parameters())
    grads = [name[len("grads."):] for name in saved if name.startswith("grads.")]
    if grads:  # names that are not this model's are refused by restore's check below
        target["grads"] = {name: torch.zeros_like(params[name]) for name in grads
                           if name in params}
    try:
        with warnings.catch_warnings():  # DCP warns that no process group means one process
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(target, storage_reader=dcp.FileSystemReader(path),
                     no_dist=not torch.distributed.is_initialized())
    except (Exception, CheckpointException) as exc:
        if fresh:
            optimizer.state.clear()
        raise CheckpointError(path, f"could not be loaded: torch.distributed.checkpoint failed "
                              f"with {_failure(exc)}: a shard is missing or damaged. The "
                              "learner is unchanged; load an earlier checkpoint.",
                              "model") from exc
    state["grads"] = target.get("grads", {})
    restore(learner, state, path, lambda: set_state_dict(
        model, optimizer, model_state_dict=target["model"],
        optim_state_dict=target["optimizer"]))
    return path


def _failure(exc: BaseException) -> str:
    """What went wrong, in a line: DCP's `CheckpointException` (a `BaseException`) wraps each
    rank's error."""
    if isinstance(exc, CheckpointException):
        rank, (error, _) = next(iter(exc.failures.items()))
        return f"{type(error).__name__} on rank {rank}: {error}".rstrip(": ")
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def _saved_tensors(path: Path) -> dict[str, torch.Tensor]:
    """{DCP key: an empty "meta" tensor of its shape and dtype} of the saved tensors."""
    try:
        metadata = dcp.FileSystemReader(path).read_metadata()
    except Exception as exc:
        raise CheckpointError(path, f"is damaged: its shards' index (.metadata) cannot be read "
                              f"({type(exc).__name__}: {exc}). Load an earlier checkpoint.",
                              "model") from exc
    return {key: torch.empty(meta.size, dtype=meta.properties.dtype, device="meta")
            for key, meta in metadata.state_dict_metadata.items()
            if isinstance(meta, TensorStorageMetadata)}


def load_full_into_sharded(learner, state: dict[str, Any]) -> None:
    """Load a one-file checkpoint's full model and optimizer state into a model sharded with
    FSDP: each rank keeps its shards of them (every rank reads the file)."""
    model, optimizer = learner.model, learner.optimizer
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, state["model"], options=options)
    names = {id(p): name for name, p in model.named_parameters()}
    index = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = state["optimizer"]
    by_name = {
        "state": {index[i]: value for i, value in saved["state"].items()},
        "param_groups": [{**group, "params": [index[i] for i in group["params"]]}
                         for group in saved["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=options)

