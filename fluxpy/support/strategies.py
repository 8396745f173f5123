"""How a model is spread over the ranks: `fp.DDP(...)` replicates it, `fp.FSDP(...)` shards it.

    fp.Learner(model, loss, optimizer=factory, distributed=fp.DDP(find_unused_parameters=True))
    fp.Learner(model, loss, optimizer=factory, distributed=fp.FSDP(shard=(Block,)))

`DDP(**options)` passes its options to `DistributedDataParallel`. `FSDP` applies FSDP2's
`torch.distributed.fsdp.fully_shard` to every submodule `shard` picks, innermost first, then
to the root: each such module's parameters become `DTensor` shards (one slice per rank), are
gathered for its forward and backward, and its gradients are reduce-scattered, so each rank
holds 1/N of the parameters, gradients and optimizer state. Sharding replaces the parameters,
which is why the optimizer must be built after it (give the `Learner` a factory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

__all__ = ["DDP", "FSDP", "is_sharded_model", "shard_model"]


@attrs.frozen(init=False)
class DDP:
    """Replicate the model on every rank with `DistributedDataParallel(model, **options)`
    (e.g. `find_unused_parameters=True`, `gradient_as_bucket_view=True`)."""

    options: dict[str, Any] = attrs.field(factory=dict)

    def __init__(self, **options: Any) -> None:
        self.__attrs_init__(options)


def _classes_as_tuple(value: Any) -> Any:
    """`shard=[nn.Linear]` (a list, or a set) means what the tuple means."""
    return tuple(value) if isinstance(value, (list, set, frozenset)) else value


def _shard_choice(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    ok = (callable(value) and not isinstance(value, type)) or (
        isinstance(value, tuple) and all(isinstance(t, type) and issubclass(t, torch.nn.Module)
                                         for t in value))
    if not ok:
        raise TypeError(f"FSDP(shard={value!r}): give module classes, e.g. "
                        "shard=(nn.TransformerEncoderLayer,), or a function module -> bool")


@attrs.frozen
class FSDP:
    """Shard the model with FSDP2 (`fully_shard`).

    Args:
        shard: which submodules get their own `fully_shard` (each is gathered and freed on
            its own, which is what bounds memory): module classes (a tuple or list), or a function
            `module -> bool`. The root is always sharded last, taking what is left.
        mixed_precision: an FSDP2 `MixedPrecisionPolicy` (e.g. `param_dtype=torch.bfloat16`
            for the gathered parameters and `reduce_dtype=torch.float32` for the gradients),
            or `None` to compute in the parameters' dtype.
        reshard_after_forward: free the gathered parameters after each forward and gather them
            again for backward (less memory, more communication).
    """

    shard: tuple[type[torch.nn.Module], ...] | Callable[[torch.nn.Module], bool] = attrs.field(
        default=(), converter=_classes_as_tuple, validator=_shard_choice)
    mixed_precision: MixedPrecisionPolicy | None = None
    reshard_after_forward: bool = True

    def picks(self, module: torch.nn.Module) -> bool:
        if isinstance(self.shard, tuple):
            return isinstance(module, self.shard)
        return bool(self.shard(module))


def is_sharded_model(model: torch.nn.Module) -> bool:
    """Whether `model` was sharded with `fully_shard` (its parameters are `DTensor` shards)."""
    return isinstance(model, FSDPModule)


def shard_model(model: torch.nn.Module, options: FSDP, device: torch.device) -> list[str]:
    """Apply `fully_shard` to the submodules `options` picks, innermost first, then to `model`
    itself, on a one-dimensional mesh of all ranks, starting from rank 0's parameters and
    buffers (broadcast first, as DDP does); returns the names of those submodules."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"Learner(distributed=fp.FSDP(...)): the model {type(model).__name__} has no "
            "trainable parameters to shard. Give the learner a model with parameters, or "
            "leave FSDP out (distributed=None) for a model without any."
        )
    model.to(device)
    with torch.no_grad():  # start from rank 0's weights, as DDP does
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor, src=0)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": options.reshard_after_forward}
    if options.mixed_precision is not None:
        kwargs["mp_policy"] = options.mixed_precision
    chosen = [(name, m) for name, m in model.named_modules()
              if m is not model and options.picks(m) and any(True for _ in m.parameters())]
    for _, module in reversed(chosen):  # named_modules lists parents first
        fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return [name for name, _ in chosen]

