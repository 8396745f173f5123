"""What a `Learner` does under DistributedDataParallel (DDP), launched by `torchrun`.

The same script runs as `python train.py` and as `torchrun --nproc_per_node=N train.py` (also
multi-node, with torchrun's usual flags). `fp.Learner(..., distributed=None)` turns DDP on
under torchrun with `WORLD_SIZE > 1`, or when the user has initialised a process group with
more than one rank; `distributed=True` requires it, `distributed=False` leaves DDP to the
user. Then:

- `fp.init_distributed()` joins the process group unless the user did (NCCL with CUDA, gloo on
  the CPU) and binds the rank to `cuda:LOCAL_RANK`, the learner's device (else the CPU).
- The model moves to the device and is wrapped in `DistributedDataParallel`: `learner.model`
  is the wrapper (its forward and backward synchronise the gradients) and
  `learner.model.module` the plain model. Checkpoints hold the plain model's state, so they
  load in one process and under DDP alike. The optimizer is kept: DDP trains the same
  parameter objects.
- At each `fit` the data are sharded (`fluxpy.support.sharding`): DataLoaders are rebuilt with a
  `DistributedSampler` for training and an unpadded sampler for validation, lists of batches
  are split; the sharded data replace `learner.data`. Before each epoch the sampler's
  `set_epoch` gets the number of epochs that phase has completed (from the `Recorder`, whose
  history a checkpoint restores, so a resumed run shuffles as an uninterrupted one).
- `Metrics` all-reduces its sums and counts at epoch end: `metricsepoch` holds the values of
  the whole data on every rank (the validation loss is the loss of the full validation set).
  Per-step values (`metricsstep`) stay local and sync-free. Stateful metrics such as
  torchmetrics' synchronise themselves in `compute()`.
- `fp.RankZeroOnly` callbacks (`ProgressPrinter`, `MetricsPrinter`, the logging backends) run
  on rank 0 only; checkpoints are written by rank 0 while the other ranks wait in a barrier.
  A checkpoint taken in the middle of an epoch also holds what each rank has of its own there
  (its callbacks' state, such as the running `Metrics` means, its random states, and its
  gradients inside a `GradientAccumulation` group), gathered to rank 0; each rank resumes its
  own, so the run resumes with as many ranks (`fluxpy.support.checkpoint_ranks`).
- DDP all-reduces the gradients inside `backward()`, so `BackwardEnd` handlers (gradient
  clipping) see the synchronised, averaged gradients. `GradientAccumulation` turns the
  all-reduce off for the forward and backward of its intermediate steps (what
  `model.no_sync()` does), so the update step all-reduces the accumulated gradients once.
- `fp.explain` and the callback graph are the same as in one process; `explain` adds a line
  saying how the model is distributed.

`distributed=fp.DDP(**options)` passes options to `DistributedDataParallel`.
`distributed=fp.FSDP(...)` shards the model with FSDP2 instead of wrapping it
(`fluxpy.support.strategies`): `learner.model` stays the user's model, its parameters become
`DTensor` shards, the optimizer is built from them (a factory is required), and everything
above (data, metrics, stops, limits) is the same. Under FSDP `GradientAccumulation` keeps the
gradients in sync at every step (`set_gradient_sync` leaves an FSDP model alone): they
accumulate in their shards, so a short last group and a checkpoint inside a group need no
gradients that FSDP holds outside the parameters. Checkpoints are sharded folders written by
every rank (`fluxpy.support.checkpoint_sharded`). Under FSDP a forward pass is a collective,
so validation, `predict` and `evaluate` run as many forward passes on every rank, also when
the ranks' data have different numbers of batches (`fluxpy.support.joined`).

Stopping together. A rank that left `fit` alone would leave the others waiting forever in the
next gradient all-reduce. So under DDP a `CancelFitException` raised by a handler (early
stopping, `StopOnNaNLoss`, yours) does not end `fit` on its rank at once: the handler returns,
the request is recorded, and the step goes on (each handler is wrapped for this when the
learner plans it; the learner's executor is the user's). The same event's later handlers
still run on that rank, as on the others. Before every
optimizer step, and before and after every epoch, the ranks all-reduce a stop flag; if any
rank asked, every rank raises `CancelFitException` there with that rank's reason, and no rank
applies the update. The cost is one small CPU collective per optimizer step (no host-device
sync; tens of microseconds between processes on one node). The trade-off: a stop asked for
up to `BackwardEnd` skips that step's update on every rank, but one asked for at `StepEnd`
takes effect at the next optimizer step, one forward and backward later, and one asked for in
validation at the end of the epoch. A NaN loss caught before backward (`StopOnNaNLoss`) thus
stops every rank before any update. `EarlyStopping` decides on the all-reduced epoch metrics,
so all ranks decide alike anyway.

Limits of `fit`: `max_steps` and `validate_every=fp.Every(steps=...)` count training steps,
which are the same on every rank (the training sampler gives each rank as many batches), so
every rank stops, or validates in the middle of an epoch, at the same step without a
collective. `max_time` and `fp.Every(seconds=...)` read a clock, and the ranks' clocks
differ (they start `fit` at slightly different moments, on different machines), so the
decision is rank 0's: after each training step every rank reads its seconds since the start
of `fit`, and a broadcast gives every rank rank 0's reading (`agreed_seconds`, installed as
the budget's `agree` at each epoch), on which all ranks decide alike; a validation due by
seconds reads the agreed clock once more when it ends. That is one small CPU broadcast per
training step, only in a fit with `max_time` or `Every(seconds=...)` (~0.2 ms between two
gloo processes on a shared 2-core machine, next to the step's own gradient all-reduce); a
fit without them makes none. The stop is exact: every rank stops after the first step at
which rank 0's clock has passed `max_time`.

`CancelStepException` and `CancelEpochException` in training must be raised on all ranks
alike (decide on all-reduced values), or one rank skips a gradient all-reduce the others wait
in. Other errors end their rank, and torchrun then ends the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from .core.errors import CancelFitException
from .core.phases import AbstractTrainingPhase, Phase
from .core.state import Data
from .engine.loop import epoch
from .support.distributed import (
    all_gather_object,
    all_reduce_sum,
    broadcast_float,
    broadcast_int,
    init_distributed,
    is_distributed,
    launched_by_torchrun,
    rank,
    world_size,
)
from .support.joined import Joined
from .support.sharding import shard
from .support.strategies import DDP, FSDP, shard_model

__all__ = ["DistributedTraining"]


class DistributedTraining:
    """`learner.ddp` under DDP (`None` otherwise): the learner calls `setup` when it is built,
    `begin_fit` at the start of `fit` and `epoch` for each epoch."""

    def __init__(self, how: DDP | FSDP) -> None:
        self.how = how  # the options the model was distributed with
        self.sharded: list[str] = []  # under FSDP, the submodules sharded before the root
        self.reason: str | None = None  # this rank's stop request, until the ranks agree
        self._shards: dict[tuple[int, bool], tuple[Any, Any]] = {}
        self._epochs: dict[Phase, int] = {}
        self._seed: int | None = None
        self._hooked: tuple[torch.optim.Optimizer, Any] | None = None

    @classmethod
    def setup(cls, learner: Any, distributed: bool | DDP | FSDP | None, device: Any,
              optimizer: Any) -> DistributedTraining | None:
        """Join the process group and wrap or shard `learner.model` when `distributed` says so
        (`None`: DDP under torchrun with more than one rank, or in an initialised group of
        more than one); sets `learner.device`. `device` and `optimizer` are what the user passed
        to the learner, which builds the optimizer after this (FSDP replaces the parameters)."""
        if distributed is None:
            distributed = (launched_by_torchrun() and world_size() > 1) or is_distributed()
        if not distributed:
            return None
        how = distributed if isinstance(distributed, (DDP, FSDP)) else DDP()
        if isinstance(how, FSDP) and isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                "Learner(distributed=fp.FSDP(...)) needs an optimizer factory, not an "
                f"optimizer instance ({type(optimizer).__name__}): FSDP replaces the model's "
                "parameters by their shards, so the optimizer must be built after sharding. "
                f"Pass e.g. optimizer=lambda params: torch.optim.{type(optimizer).__name__}"
                "(params, lr=...)."
            )
        if not (launched_by_torchrun() or torch.distributed.is_initialized()):
            raise ValueError(
                f"Learner(distributed={distributed!r}): this process was not started by "
                "torchrun (WORLD_SIZE, RANK, LOCAL_RANK are unset) and no process group is "
                "initialised. Launch with `torchrun --nproc_per_node=N script.py`, call "
                "torch.distributed.init_process_group first, or pass distributed=None."
            )
        wanted = None if device is None else torch.device(device)
        if wanted is None or (wanted.type == "cuda" and wanted.index is None):
            learner.device = init_distributed(None if wanted is None else "nccl")
        else:  # an explicit device: the CPU (gloo), or a CUDA device by index
            init_distributed("nccl" if wanted.type == "cuda" else "gloo")
            if wanted.type == "cuda":
                torch.cuda.set_device(wanted)
            learner.device = wanted
        model = learner.model
        training = cls(how)
        if isinstance(how, FSDP):
            training.sharded = shard_model(model, how, learner.device)
        elif not isinstance(model, DistributedDataParallel):
            model.to(learner.device)
            ids = [learner.device.index] if learner.device.type == "cuda" else None
            learner.model = DistributedDataParallel(model, device_ids=ids, **how.options)
        return training

    def describe(self) -> str:
        """How the model is distributed, for `fp.explain`."""
        n = world_size()
        if isinstance(self.how, FSDP):
            inner = (f"on {len(self.sharded)} submodule(s) ({_few(self.sharded)}), then the "
                     "root" if self.sharded else "on the root only")
            precision = ("" if self.how.mixed_precision is None
                         else f"; mixed precision {self.how.mixed_precision}")
            return (f"FSDP over {n} ranks: fully_shard {inner}; each rank holds 1/{n} of the "
                    "parameters, gradients and optimizer state"
                    f"{'; resharded after forward' if self.how.reshard_after_forward else ''}"
                    f"{precision}. Checkpoints are sharded folders "
                    "(torch.distributed.checkpoint), written by every rank.")
        options = ", ".join(f"{k}={v!r}" for k, v in self.how.options.items())
        return (f"DDP over {n} ranks: the model replicated on each, gradients all-reduced in "
                f"backward{f' ({options})' if options else ''}. Checkpoints are one file, "
                "written by rank 0.")

    def begin_fit(self, learner: Any, plan: Sequence[tuple[Phase, Any]]) -> list[tuple[Phase, Any]]:
        """Shard the data of `plan` (and `learner.data`), and hook the optimizer's step to
        agree on a stop first; returns the sharded plan."""
        if self._seed is None:  # rank 0's seed, so that the ranks shuffle alike
            self._seed = broadcast_int(torch.initial_seed() % 2**31)
        self.reason = None
        optimizer = learner.optimizer
        if self._hooked is None or self._hooked[0] is not optimizer:
            if self._hooked is not None:
                self._hooked[1].remove()
            self._hooked = (optimizer, optimizer.register_step_pre_hook(self._before_step))
        if learner.data is not None:
            learner.data = Data(self._shard(learner.data.training, True),
                                self._shard(learner.data.validation, False))
        return [(phase, self._shard(data, isinstance(phase, AbstractTrainingPhase)))
                for phase, data in plan]

    def epoch(self, learner: Any, phase: Phase, data: Any) -> None:
        """`fp.epoch` with the sampler's epoch set, and the ranks agreeing on a stop before and
        after it."""
        self.agree_on_stop()
        budget = getattr(learner, "budget", None)
        if budget is not None:  # max_time and Every(seconds=) decide on rank 0's clock
            budget.agree = self.agreed_seconds
        sampler = getattr(data, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(self._epoch_number(learner, phase))
        epoch(learner, phase, self.in_step(learner, phase, data))
        self._epochs[phase] = self._epochs.get(phase, 0) + 1
        self.agree_on_stop()

    def in_step(self, learner: Any, phase: Phase, data: Any) -> Any:
        """`data` as `phase` iterates it: under FSDP a validation or prediction phase runs as
        many forward passes on every rank (`fluxpy.support.joined`); else `data` itself."""
        if isinstance(self.how, FSDP) and not isinstance(phase, AbstractTrainingPhase):
            return Joined(data, learner)
        return data

    def agree_on_stop(self) -> None:
        """Raise `CancelFitException` on every rank if any rank has recorded a stop request
        (every rank must call this at the same point)."""
        reason = self.reason
        flag = torch.tensor([0 if reason is None else 1], dtype=torch.int64)
        if all_reduce_sum(flag).item() == 0:
            return
        reasons = all_gather_object(reason)
        first = next(r for r, why in enumerate(reasons) if why is not None)
        self.reason = None
        raise _AgreedStop(f"{reasons[first]} (rank {first})")

    @staticmethod
    def agreed_seconds(seconds: float) -> float:
        """Rank 0's `seconds` since the start of `fit`, on every rank: the clock reading that
        `max_time` and `fp.Every(seconds=...)` decide on (every rank must call it at the same
        point; one broadcast)."""
        return broadcast_float(seconds)

    def deferring_stops(self, method: Callable[..., Any]) -> Callable[..., Any]:
        """The handler `method`, with a `CancelFitException` it raises recorded as this rank's
        stop request instead of ending its `fit` alone (the learner plans handlers with it)."""

        def run(event: Any, phase: Any, callback: Any, learner: Any) -> Any:
            try:
                return method(event, phase, callback, learner)
            except _AgreedStop:  # every rank raises it at the same point: it ends fit
                raise
            except CancelFitException as stop:
                if self.reason is None:
                    self.reason = str(stop) or "CancelFitException"

        run.__module__, run.__qualname__ = method.__module__, method.__qualname__
        return run

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """The optimizer's step pre-hook: stop together, without the update, if asked."""
        try:
            self.agree_on_stop()
        except CancelFitException:
            optimizer.zero_grad(set_to_none=True)
            raise

    def _shard(self, data: Any, training: bool) -> Any:
        if data is None:
            return None
        hit = self._shards.get((id(data), training))
        if hit is not None and hit[0] is data:
            return hit[1]
        if any(out is data for _, out in self._shards.values()):
            return data  # already this learner's shard
        sharded = shard(data, training=training, rank=rank(), world_size=world_size(),
                        seed=self._seed or 0)
        self._shards[(id(data), training)] = (data, sharded)
        return sharded

    def _epoch_number(self, learner: Any, phase: Phase) -> int:
        """Epochs of `phase` completed: the `Recorder`'s count, which a checkpoint restores,
        else this object's own."""
        history = vars(learner.cbstate).get("history")
        if history is not None and phase in history:
            return history[phase].epochs
        return self._epochs.get(phase, 0)


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


class _AgreedStop(CancelFitException):
    """The stop every rank raises together (from an optimizer step inside a handler too)."""
