"""What only a CUDA machine can show, in one short run (about two minutes on one GPU).

1. **No host sync per step.** A fit with the default callbacks plus `MixedPrecision`
   (bfloat16) on pinned CPU batches moved by `ToDevice`, with every step run under
   `torch.cuda.set_sync_debug_mode("warn")`: each synchronising call inside a step is counted.
   Without the progress bar the count must be zero; with it, the bar's bounded-rate reads of
   the running loss are reported.
2. **ConvNet overhead.** The same small ConvNet on batches already on the device, trained by a
   hand-written loop (loss summed on the device, read once per epoch) and by fluxpy with
   `Recorder` and `Metrics`, in paired rounds; the median of the per-round time ratios.
3. **DDP over NCCL** when two GPUs exist: `examples/train_ddp.py` under `torchrun`.

On a machine without CUDA it runs the ConvNet comparison on the CPU and says what it skipped.

    python benchmarks/gpu_check.py                                   # print the report
    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.md

It needs fluxpy's dependencies importable: on a machine without them, install the wheels of
plum-dispatch (and its own dependencies) first, or run it from the project's virtual
environment.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

import fluxpy as fp  # noqa: E402

STEPS, VALID_STEPS, BATCH = 200, 50, 128
ROUNDS = 11


def convnet() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 8 * 8, 10),
    )


def batches(n: int, device: str, seed: int, pin: bool = False) -> list[tuple]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        xs = torch.randn(BATCH, 3, 32, 32, generator=gen)
        ys = torch.randint(0, 10, (BATCH,), generator=gen)
        if pin:
            xs, ys = xs.pin_memory(), ys.pin_memory()
        out.append((xs.to(device), ys.to(device)))
    return out


class SyncCounted:
    """Data whose steps run under `set_sync_debug_mode("warn")`: the mode is on from the moment
    a batch is handed to the loop until the loop asks for the next one, so epoch-end reads
    (metrics, printers) are not counted, and every step's syncs are."""

    def __init__(self, data: list) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator:
        for batch in self.data:
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield batch
            finally:
                torch.cuda.set_sync_debug_mode(0)


def syncs_per_fit(progress_bar: bool) -> tuple[int, int]:
    """(synchronising calls inside steps, steps) for a fit with the defaults + MixedPrecision."""
    train = SyncCounted(batches(STEPS, "cpu", 1, pin=True))
    valid = SyncCounted(batches(VALID_STEPS, "cpu", 2, pin=True))
    callbacks = [fp.MixedPrecision(torch.bfloat16), fp.ProgressPrinter(enabled=progress_bar)]
    learner = fp.Learner(convnet(), F.cross_entropy, data=(train, valid), callbacks=callbacks,
                         optimizer=lambda ps: torch.optim.SGD(ps, lr=0.01), device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learner.fit(2)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    for w in syncs[:5]:
        print(f"    sync: {w.filename}:{w.lineno}: {w.message}")
    return len(syncs), 2 * (STEPS + VALID_STEPS)


def raw_fit(model, opt, train, valid, device: str) -> Callable[[], None]:
    def fit() -> None:
        model.train()
        total = torch.zeros((), device=device)
        for xs, ys in train:
            loss = F.cross_entropy(model(xs), ys)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            total += loss.detach()
        model.eval()
        valid_total = torch.zeros((), device=device)
        with torch.inference_mode():
            for xs, ys in valid:
                valid_total += F.cross_entropy(model(xs), ys)
        (total.item(), valid_total.item())

    return fit


def fluxpy_fit(model, opt, train, valid, device: str) -> Callable[[], None]:
    learner = fp.Learner(model, F.cross_entropy, data=(train, valid), optimizer=opt,
                         callbacks=[fp.Recorder(), fp.Metrics()],
                         use_default_callbacks=False, device=device)
    return lambda: learner.fit(1)


def timed(fit: Callable[[], None], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fit()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def overhead(device: str, rounds: int) -> tuple[float, float, float, float]:
    """Median, min and max of fluxpy/raw per paired round, and the raw fit's median seconds."""
    n_train, n_valid = (STEPS, VALID_STEPS) if device == "cuda" else (40, 10)
    train, valid = batches(n_train, device, 1), batches(n_valid, device, 2)
    fits = {}
    for name, make in (("raw", raw_fit), ("fluxpy", fluxpy_fit)):
        torch.manual_seed(0)
        model = convnet().to(device)
        fits[name] = make(model, torch.optim.SGD(model.parameters(), lr=0.01), train, valid,
                          device)
    for fit in fits.values():  # warm-up: kernels, allocator, plans
        timed(fit, device)
    ratios, raw_times = [], []
    for k in range(rounds):
        order = ("raw", "fluxpy") if k % 2 == 0 else ("fluxpy", "raw")
        times = {name: timed(fits[name], device) for name in order}
        ratios.append(times["fluxpy"] / times["raw"])
        raw_times.append(times["raw"])
    return statistics.median(ratios), min(ratios), max(ratios), statistics.median(raw_times)


def ddp_over_nccl() -> tuple[bool, str]:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           str(HERE.parent / "examples" / "train_ddp.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    ok = proc.returncode == 0 and "weights identical on all ranks: True" in out
    return ok, out[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    device = "cuda" if cuda else "cpu"
    lines = ["# GPU check", "",
             f"- machine: {platform.node()}, torch {torch.__version__}, "
             f"{torch.cuda.get_device_name(0) if cuda else 'no CUDA'}, {gpus} GPU(s)", ""]
    failed = False

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    say("## 1. Host syncs inside steps (defaults + MixedPrecision(bfloat16), ToDevice)")
    if cuda:
        quiet, steps = syncs_per_fit(progress_bar=False)
        with_bar, _ = syncs_per_fit(progress_bar=True)
        say(f"- without the progress bar: {quiet} synchronising calls in {steps} steps "
            f"({'PASS' if quiet == 0 else 'FAIL'}: must be 0)")
        say(f"- with the progress bar: {with_bar} in {steps} steps (its loss refresh, at most "
            "one read per refresh interval)")
        failed |= quiet != 0
    else:
        say("- skipped: no CUDA device")

    say("")
    say(f"## 2. ConvNet overhead on {device} (Recorder + Metrics vs a raw loop, "
        f"{args.rounds} paired rounds)")
    ratio, low, high, raw_s = overhead(device, args.rounds)
    say(f"- fluxpy / raw: median {ratio:.3f} (min {low:.3f}, max {high:.3f}); raw fit "
        f"{raw_s * 1e3:.1f} ms")
    if cuda:
        say(f"- target: within 2% of the raw loop: {'PASS' if ratio <= 1.02 else 'FAIL'}")
        failed |= ratio > 1.02

    say("")
    say("## 3. DDP over NCCL (examples/train_ddp.py under torchrun, 2 ranks)")
    if gpus >= 2:
        ok, out = ddp_over_nccl()
        say(f"- {'PASS' if ok else 'FAIL'}")
        if not ok:
            say("```\n" + out + "\n```")
        failed |= not ok
    else:
        say(f"- skipped: {gpus} GPU(s), two are needed")

    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
