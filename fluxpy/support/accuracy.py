"""Plain metric functions: `accuracy`, `top_k_accuracy(k)`, `error_rate`.

Each is `fn(preds, ys) -> 0-dim float tensor` on the device of `preds`, made of torch
operations only (no host sync), so it goes straight into `fp.Metrics(fp.accuracy)`, which
weights each batch's value by its size. For anything more (F1, AUROC, multi-label, ...)
torchmetrics' metrics work in `fp.Metrics` as they are.

What `preds` and `ys` may be (N examples, C classes, any further dimensions `...`, such as
the pixels of a segmentation, each counted as an example):

| preds            | ys                                    | compared                        |
|------------------|---------------------------------------|---------------------------------|
| `(N, C, ...)`    | class indices `(N, ...)`              | `preds.argmax(1) == ys`         |
| `(N, C, ...)`    | one-hot or probabilities `(N, C, ...)` | `preds.argmax(1) == ys.argmax(1)` |
| `(N,)` or `(N, 1, ...)` | 0/1 labels, same shape or without the 1 | `(preds > 0) == (ys > 0.5)` |

`preds` are scores per class: logits or probabilities, it does not matter for the argmax. A
single output per example is binary and taken as a logit, as `BCEWithLogitsLoss` takes it
(positive when above 0, i.e. a sigmoid above 0.5); for a model that ends in a sigmoid,
write `fp.Metric(lambda p, y: ((p > 0.5) == (y > 0.5)).float().mean(), name="accuracy")`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["accuracy", "error_rate", "top_k_accuracy"]


def accuracy(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The fraction of examples whose predicted class is the target's (see the module)."""
    predicted, target = _classes(preds, ys, "accuracy")
    return (predicted == target).float().mean()


def error_rate(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """`1 - accuracy(preds, ys)`: the fraction of examples classified wrongly."""
    return 1 - accuracy(preds, ys)


def top_k_accuracy(k: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A metric function, named `f"top{k}_accuracy"`: the fraction of examples whose target
    class is among the `k` highest of `preds` (`(N, C, ...)` with C >= k); `ys` as for
    `accuracy`, class indices or one-hot/probabilities."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k_accuracy(k={k!r}): k is a number of classes, an int >= 1")

    def top_k(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        name = f"top{k}_accuracy"
        if preds.ndim < 2 or preds.shape[1] < k:
            raise ValueError(f"{name} needs preds of shape (N, C, ...) with C >= {k} classes, "
                             f"got preds of shape {tuple(preds.shape)}")
        target = _target_classes(preds, ys, name)
        best = preds.topk(k, dim=1).indices
        return (best == target.unsqueeze(1)).any(dim=1).float().mean()

    top_k.__name__ = top_k.__qualname__ = f"top{k}_accuracy"
    return top_k


def _classes(preds: torch.Tensor, ys: torch.Tensor, name: str):
    """The predicted and the target class of each example (`True`/`False` when binary)."""
    if preds.ndim >= 2 and preds.shape[1] > 1:
        return preds.argmax(1), _target_classes(preds, ys, name)
    if preds.shape == ys.shape or (preds.ndim == ys.ndim + 1 and preds.shape[1] == 1
                                   and preds.shape[:1] + preds.shape[2:] == ys.shape):
        return preds.reshape(ys.shape) > 0, ys > 0.5
    raise _mismatch(preds, ys, name)


def _target_classes(preds: torch.Tensor, ys: torch.Tensor, name: str) -> torch.Tensor:
    """The target class of each example, for `preds` of shape `(N, C, ...)`."""
    if ys.shape == preds.shape:  # one-hot or probabilities
        return ys.argmax(1)
    if ys.shape == preds.shape[:1] + preds.shape[2:]:
        if ys.is_floating_point():
            raise TypeError(f"{name}: ys of shape {tuple(ys.shape)} are class indices and must "
                            f"be integers, got {ys.dtype} (convert with ys.long())")
        return ys
    raise _mismatch(preds, ys, name)


def _mismatch(preds: torch.Tensor, ys: torch.Tensor, name: str) -> ValueError:
    return ValueError(
        f"{name} cannot compare preds of shape {tuple(preds.shape)} with ys of shape "
        f"{tuple(ys.shape)}: give preds (N, C, ...) with class indices (N, ...) or one-hot/"
        "probability ys (N, C, ...), or one output per example, (N,) or (N, 1, ...), with "
        "0/1 labels (see fluxpy.support.accuracy)")
