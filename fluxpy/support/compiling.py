"""`Learner(..., compile=True)`: the model compiled with `torch.compile`, once.

    learner = fp.Learner(model, loss_fn, compile=True)                 # torch.compile(model)
    learner = fp.Learner(model, loss_fn, compile={"mode": "max-autotune"})  # with its options

`learner.model` is then torch's compiled wrapper (an `OptimizedModule`) around the model, and
`fp.unwrap_model(learner.model)` the model itself. The compiled wrapper holds the model's
parameters (the same tensors), so the optimizer, built from the model before compiling,
updates what the compiled code computes with. Under DDP the compiled model is what
`DistributedDataParallel` wraps.

Compilation happens at the first forward of each kind (training, then validation under
`model.eval()` and inference mode), not when the learner is made; the learner only checks
that torch.compile can run here, so a missing compiler is an error at once, not after the
first batch.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

__all__ = ["compile_model", "compile_problem", "is_compiled", "without_compiled_prefix"]

#: What torch.compile's wrapper puts before each of the model's state_dict keys.
PREFIX = "_orig_mod."


def compile_model(model: torch.nn.Module, options: bool | dict, device: torch.device) -> Any:
    """`torch.compile(model, **options)` (no options for `True`), after checking that it can
    run on `device`; raises `RuntimeError` naming the problem and the fix when it cannot."""
    if not isinstance(options, (bool, dict)):
        raise TypeError(f"compile must be True, False or a dict of torch.compile options "
                        f"(e.g. {{'mode': 'reduce-overhead'}}), not {options!r}")
    options = {} if options is True else dict(options)
    if is_compiled(model):
        raise ValueError("Learner(compile=...): the model is compiled already (it is a "
                         "torch.compile wrapper); pass the model itself with compile=True, or "
                         "the compiled one without compile")
    problem = compile_problem(device, options.get("backend", "inductor"))
    if problem is not None:
        raise RuntimeError(f"Learner(compile=True): torch.compile cannot run here: {problem}. "
                           "Train without compiling (compile=False, the default); the "
                           "results are the same, only slower.")
    return torch.compile(model, **options)


def compile_problem(device: torch.device, backend: Any) -> str | None:
    """Why torch.compile cannot run on `device` with `backend`, or `None` when it can: this
    Python or platform is one dynamo does not support, or inductor (the default backend) on
    the CPU finds no C++ compiler (it looks for those in `torch._inductor.config.cpp.cxx`;
    install g++ or clang++)."""
    from torch._dynamo.eval_frame import check_if_dynamo_supported

    try:
        check_if_dynamo_supported()
    except RuntimeError as exc:
        return f"{exc} (Python {sys.version.split()[0]})"
    if backend == "inductor" and device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler

        try:
            get_cpp_compiler()
        except InvalidCxxCompiler as exc:
            return (f"inductor needs a C++ compiler for the CPU and found none ({exc}); "
                    "install g++ or clang++, or set the compiler's name in "
                    "torch._inductor.config.cpp.cxx")
    return None


def is_compiled(model: Any) -> bool:
    """Whether `model` is torch.compile's wrapper. Imports nothing: without torch._dynamo
    imported, no model can be one."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)


def without_compiled_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's `state` with the model's keys (and its gradients' names) as the model
    itself has them, when they all start with torch.compile's `_orig_mod.`: earlier fluxpy
    versions saved a compiled model's keys so. Checkpoints hold the model's own keys now."""
    model = state["model"]
    if not model or not all(key.startswith(PREFIX) for key in model):
        return state
    state = dict(state, model={key.removeprefix(PREFIX): value for key, value in model.items()})
    if isinstance(state.get("grads"), dict):
        state["grads"] = {key.removeprefix(PREFIX): g for key, g in state["grads"].items()}
    return state
