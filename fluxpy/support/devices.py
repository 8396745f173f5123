"""Which device a learner or a callback trains on, checked with an error that says what is
available."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["resolve_device"]


def resolve_device(device: Any) -> torch.device:
    """`device` as a `torch.device`; `None` picks CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a device torch knows: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} asks for CUDA, but CUDA is not available here; "
                             "use device='cpu' or leave device=None to pick automatically.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: there are only {torch.cuda.device_count()} "
                             "CUDA devices.")
    else:  # mps, xpu, ...: the backends torch knows say whether they are there
        available = getattr(getattr(torch, dev.type, None), "is_available", None)
        if callable(available) and not available():
            raise ValueError(f"device={device!r} asks for {dev.type}, which is not available "
                             "here; use device='cpu' or leave device=None to pick automatically.")
    return dev
