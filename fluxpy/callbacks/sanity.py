"""`SanityCheck`: one batch through data, model and loss at `FitBegin`, all problems at once.

Mistakes in the data, the model's input layer or the loss usually surface one at a time, deep
in the first step (or after the first training epoch, for the validation data). This callback
takes the first batch of the training and of the validation data in `learner.data`, moves it
to `learner.device`, and checks that

- the data can be iterated and yields `(xs, ys)` pairs,
- the model is a `torch.nn.Module` (a handler or the user may have replaced it),
- the model accepts `xs` (in training mode for the training batch, evaluation mode for the
  validation batch),
- the loss accepts `(preds, ys)` and returns a scalar tensor.

Every problem found is reported in one `fp.SanityCheckError`, each with its fix. The check
changes nothing: it runs without gradients, puts back every module's train/eval mode and every
buffer (e.g. BatchNorm statistics) and the random generators (torch, CUDA, numpy, Python)
that drawing a batch or dropout used, and never touches the optimizer. It runs at the start of
every `fit`, after the callbacks that set up the model and loss (e.g. `ToDevice`,
`MixedPrecision`). Not checked: data of custom phases given to `fit(phases=...)`, and one-shot
iterators (peeking would use up their first batch).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import numpy as np
import torch

from ..core.access import Access, Read, Write
from ..core.callback import Callback, NoConflict, RunFirst, on, resolveconflict, stateaccess
from ..core.errors import SanityCheckError
from ..core.events import FitBegin
from ..core.phases import Phase
from ..core.readonly import ReadOnlySequence
from .gradients import GradientAccumulation, GradientClipping
from .precision import MixedPrecision
from .todevice import ToDevice, to_device

__all__ = ["SanityCheck"]


@attrs.define
class SanityCheck(Callback):
    """Checks data, model and loss on one batch before training; see the module docstring."""


@stateaccess.dispatch
def _sanity_access(cb: SanityCheck):
    # `model` is written: the check switches train/eval mode and runs the forward, which
    # updates BatchNorm statistics, before it puts both back. No other handler may see that.
    return Access(data=Read(), model=Write(), loss_fn=Read(), device=Read())


@resolveconflict.dispatch
def _sanity_after_setup(check: SanityCheck, setup: ToDevice | MixedPrecision):
    return RunFirst(setup)  # check the model as training will run it: moved, autocast on


@resolveconflict.dispatch
def _sanity_with_gradients(check: SanityCheck,
                           other: GradientClipping | GradientAccumulation):
    return NoConflict()  # they write gradients during steps; the check runs before any


@on.dispatch
def _sanity_fit_begin(event: FitBegin, phase: Phase, cb: SanityCheck, learner):
    data = learner.data
    if data is None:
        return
    problems: list[str] = []
    if not isinstance(learner.model, torch.nn.Module):
        problems.append(f"learner.model is {_describe(learner.model)}, not a torch.nn.Module: "
                        "the loop switches it between train() and eval() and the optimizer "
                        "updates its parameters; wrap it in a torch.nn.Module whose forward "
                        "calls it")
    with _unchanged(learner.model, learner.device), torch.no_grad():
        for name, phase_data, training in (("training", data.training, True),
                                           ("validation", data.validation, False)):
            if phase_data is not None:
                problems += _check(learner, name, phase_data, training)
    if problems:
        raise SanityCheckError(problems)


def _check(learner, name: str, data: Any, training: bool) -> list[str]:
    batch, problem = _first_batch(name, data)
    if batch is None:
        return [problem] if problem else []
    model = learner.model
    if not isinstance(model, torch.nn.Module):
        return []  # reported once, before the data
    xs, ys = (to_device(v, learner.device) for v in batch)
    model.train(training)
    try:
        preds = model(xs)
    except Exception as exc:
        return [f"the model raised {_error(exc)} on a {name} batch with xs {_describe(xs)}: "
                "make the model's first layer fit the inputs (shape, dtype, device)"]
    try:
        loss = learner.loss_fn(preds, ys)
    except Exception as exc:
        return [f"loss_fn(preds, ys) raised {_error(exc)} on a {name} batch with preds "
                f"{_describe(preds)} and ys {_describe(ys)}: make the model's output fit the "
                "loss function and the labels (e.g. class indices for cross_entropy)"]
    if not isinstance(loss, torch.Tensor):
        return [f"loss_fn returned {_describe(loss)} on a {name} batch: return a scalar tensor"]
    if loss.ndim != 0:
        return [f"loss_fn returned {_describe(loss)} on a {name} batch, not a scalar: reduce "
                "it (reduction='mean', or .mean() at the end of loss_fn)"]
    return []


def _first_batch(name: str, data: Any) -> tuple[Any, str | None]:
    """The first `(xs, ys)` of `data` (`None` for a one-shot iterator, which a peek would
    consume), or a description of what is wrong with it."""
    try:
        iterator = iter(data)
    except TypeError:
        return None, (f"the {name} data is {_describe(data)}, which cannot be iterated: pass a "
                      "list of (xs, ys) pairs or a DataLoader")
    if iterator is data:
        return None, None
    try:
        batch = next(iterator)
    except StopIteration:
        return None, (f"the {name} data yielded no batches: check the dataset's size and the "
                      "DataLoader's batch_size / drop_last")
    except Exception as exc:
        return None, f"iterating the {name} data raised {_error(exc)}"
    if isinstance(batch, (tuple, list, ReadOnlySequence)) and len(batch) == 2:
        return (batch[0], batch[1]), None
    return None, (f"the {name} data yields {_describe(batch)}, not (xs, ys) pairs: yield "
                  "pairs (e.g. a DataLoader over a TensorDataset(xs, ys)), or give the phase "
                  "its own step with @fp.step.dispatch")


@contextmanager
def _unchanged(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Puts back the modules' modes, the buffers and the random generators on exit."""
    module = isinstance(model, torch.nn.Module)  # else reported, and never called
    modes = [(m, m.training) for m in model.modules()] if module else []
    buffers = [(b, b.detach().clone()) for b in model.buffers()] if module else []
    devices = [device] if device.type == "cuda" else []  # the CPU generator is always kept
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, training in modes:
            module.training = training


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    if isinstance(value, ReadOnlySequence):  # a tuple or list seen through Read()
        value = value._fp_raw_do_not_use
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    noun = value.__class__.__name__  # what a read-only object shows is the object's class
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".split("\n", 1)[0]
