"""Helpers for distributed training on `torch.distributed`: where this process stands, small
collectives, side effects on rank 0 only, and DDP's gradient synchronisation.

    if fp.is_rank_zero():
        print("once, not once per process")

    @fp.rank_zero_only
    def save_plot(path): ...

    @attrs.define
    class MyLogger(fp.RankZeroOnly, fp.Callback): ...

They work the same in a plain `python train.py` (one process, rank 0, world size 1, the
collectives and `barrier` do nothing) and under `torchrun`, before and after the process
group is initialised (until then the rank comes from torchrun's environment). What the
`Learner` does under DDP is in `fluxpy.ddp`.

Extending:
    Decorate a function with `@rank_zero_only` to run it on rank 0 only. Subclass
    `RankZeroOnly` (before `fp.Callback`) to make a callback's `init` and all its handlers
    run on rank 0 only: printing, logging, writing files. Such a callback stays in the graph,
    so `fp.explain` is the same on every rank, but it must not produce state other callbacks
    read, nor do collectives (those must run on every rank). To write a file once and make
    the other ranks wait for it, call `rank_zero_only(write)(...)` then `barrier()` on every
    rank.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "RankZeroOnly",
    "all_gather_object",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "broadcast_float",
    "broadcast_int",
    "gradients_unsynchronised",
    "init_distributed",
    "is_distributed",
    "is_rank_zero",
    "launched_by_torchrun",
    "local_rank",
    "on_rank_zero",
    "rank",
    "rank_zero_only",
    "runs_on_this_rank",
    "set_gradient_sync",
    "sync_pending_gradients",
    "world_size",
]

F = TypeVar("F", bound=Callable[..., Any])

_TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


# -- where this process stands -------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """Whether torchrun's `WORLD_SIZE`, `RANK` and `LOCAL_RANK` are set (any world size)."""
    return all(v in os.environ for v in _TORCHRUN_VARIABLES)


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank: from the process group, else torchrun's `RANK`, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    """This process's rank on its node (torchrun's `LOCAL_RANK`), 0 without torchrun."""
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    """The number of ranks: from the process group, else torchrun's `WORLD_SIZE`, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_rank_zero() -> bool:
    """Whether this process is rank 0 (always true without distributed training)."""
    return rank() == 0


def init_distributed(backend: str | None = None) -> torch.device:
    """Join the process group torchrun describes, unless one is initialised; this rank's device.

    Args:
        backend: `None` picks `"nccl"` when CUDA is available, else `"gloo"`. With NCCL the
            rank is bound to `cuda:LOCAL_RANK` (`torch.cuda.set_device`) before joining.

    Returns:
        `cuda:LOCAL_RANK` when the group's backend is NCCL, else the CPU.
    """
    if not dist.is_available():
        raise RuntimeError("this build of torch has no torch.distributed; install one that has")
    if not dist.is_initialized():
        if not launched_by_torchrun():
            raise RuntimeError(
                "init_distributed() needs torchrun's environment (WORLD_SIZE, RANK, "
                "LOCAL_RANK): launch with `torchrun --nproc_per_node=N script.py`, or call "
                "torch.distributed.init_process_group yourself first."
            )
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            _bind_cuda(local_rank())
        dist.init_process_group(backend=backend)
    if is_distributed():
        _control_group()  # made now, while every rank is here
    if "nccl" in str(dist.get_backend()):
        return _bind_cuda(local_rank())
    return torch.device("cpu")


def _bind_cuda(index: int) -> torch.device:
    if index >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK is {index}, but this node has {torch.cuda.device_count()} CUDA "
            "device(s): start at most that many processes per node (--nproc_per_node)."
        )
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


# -- collectives ---------------------------------------------------------------------------

_CONTROL: list[Any] = [None, None]  # [the default group it belongs to, the gloo group]


def _control_group() -> Any:
    """A gloo group for small CPU collectives (flags, seeds, barriers): the default group when
    that is gloo, else one made once (every rank must get here together the first time)."""
    world = dist.group.WORLD
    if _CONTROL[0] is not world:
        backend = str(dist.get_backend())
        _CONTROL[:] = [world, None if backend == "gloo" else dist.new_group(backend="gloo")]
    return _CONTROL[1]


def barrier() -> None:
    """Wait until every rank gets here (no-op without distributed training)."""
    if is_distributed():
        dist.barrier(group=_control_group())


def on_rank_zero(fn: Callable[[], Any]) -> Any:
    """`fn()` on rank 0 only (its result there, `None` elsewhere), then a barrier.

    The barrier makes every rank wait until rank 0 is done (e.g. until a checkpoint file is
    complete), so no rank runs ahead of a file it may read. Rank 0 reaches the barrier also
    when `fn` raises, so the other ranks are not left waiting for it. Without distributed
    training it is a plain call.
    """
    if not is_distributed():
        return fn()
    result = None
    try:
        if is_rank_zero():
            result = fn()
    finally:
        barrier()
    return result


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place, and return it (unchanged without distributed
    training). CPU tensors go through gloo, so this works under NCCL too."""
    if is_distributed():
        group = _control_group() if tensor.device.type == "cpu" else None
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on any rank (one small CPU all-reduce; `flag` itself without
    distributed training)."""
    if not is_distributed():
        return flag
    return bool(all_reduce_sum(torch.tensor([int(flag)], dtype=torch.int64)).item())


def broadcast_int(value: int) -> int:
    """Rank 0's `value`, on every rank."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(tensor, src=0, group=_control_group())
    return int(tensor.item())


def broadcast_float(value: float) -> float:
    """Rank 0's `value`, on every rank (float64; unchanged without distributed training).
    What the ranks agree on for a decision taken on rank 0's clock, e.g. `fit(max_time=)`."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(tensor, src=0, group=_control_group())
    return float(tensor.item())


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order: `[obj]` without distributed training."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj, group=_control_group())
    return gathered


# -- side effects on rank 0 only -----------------------------------------------------------


class RankZeroOnly:
    """Mixin for callbacks whose `init` and handlers run on rank 0 only (printing, logging,
    writing files); see the module docstring for what such a callback must not do."""


def runs_on_this_rank(callback: Any) -> bool:
    """False for a `RankZeroOnly` callback on a rank other than 0."""
    return not isinstance(callback, RankZeroOnly) or is_rank_zero()


def rank_zero_only(fn: F) -> F:
    """Decorator: `fn` runs on rank 0 only; on other ranks the call does nothing and returns
    `None`. For callbacks subclass `RankZeroOnly` instead."""
    if isinstance(fn, type):
        raise TypeError(
            f"rank_zero_only decorates functions; to make the callback {fn.__name__} run on "
            f"rank 0 only, subclass it: class {fn.__name__}(fp.RankZeroOnly, fp.Callback)"
        )

    @functools.wraps(fn)
    def on_rank_zero(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if is_rank_zero() else None

    return on_rank_zero  # type: ignore[return-value]


# -- gradients -----------------------------------------------------------------------------


def set_gradient_sync(model: torch.nn.Module, enabled: bool) -> None:
    """Turn DDP's gradient all-reduce in the next forward and backward on or off.

    What `DistributedDataParallel.no_sync()` does, split across events: set it off at
    `StepBegin` of the intermediate steps of gradient accumulation (the gradients accumulate
    locally) and on for the step that updates (its backward all-reduces the accumulated
    gradients). A no-op for a model that is not wrapped in DDP (one sharded with FSDP keeps
    reduce-scattering each backward's gradients into their shards, where they accumulate).
    """
    if isinstance(model, DistributedDataParallel):
        model.require_backward_grad_sync = enabled


def gradients_unsynchronised(model: torch.nn.Module) -> bool:
    """Whether DDP's all-reduce is off for `model` (`set_gradient_sync(model, False)`): its
    gradients, if any, are this rank's own, accumulated without the other ranks'."""
    return isinstance(model, DistributedDataParallel) and not model.require_backward_grad_sync


def sync_pending_gradients(model: torch.nn.Module) -> None:
    """Average the gradients over the ranks now if the last backward ran without DDP's
    all-reduce (the last, short group of an accumulation at epoch end), and turn it back on.

    Every rank must call it at the same point; a no-op when the gradients are in sync.
    """
    if not isinstance(model, DistributedDataParallel) or model.require_backward_grad_sync:
        return
    model.require_backward_grad_sync = True
    n = world_size()
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:  # every rank must take part in every all-reduce
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(n)
