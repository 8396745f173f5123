"""How long a training step is blocked by a sharded checkpoint of a ~200 MB state at two
processes (FSDP over gloo): synchronous saves against `Checkpointer(async_save=True)`.

    torchrun --nproc_per_node=2 benchmarks/checkpoint_async_fsdp.py [--out FILE.md]

The model and the timing are `checkpoint_async.py`'s (four 2048x2048 linear layers with
Adam, the Checkpointer's `StepEnd` handler timed at the steps that save), sharded with
`fp.FSDP(shard=(torch.nn.Linear,))`: each process writes its half of the state. A step is
counted as blocked for as long as the slower process's handler took (the next step's
collectives wait for it). The two modes alternate, `--rounds` fits each; medians over all
saves. Not part of `make bench` (it writes a few GB).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from checkpoint_async import BATCH, LAYERS, WIDTH, TimingExecutor

import fluxpy as fp


def fit(async_save: bool, every: int, saves: int, folder: Path) -> list[float]:
    """One fit of `saves * every` steps; the blocked seconds of each save (the slower rank's)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])
    xs = torch.randn(BATCH, WIDTH)
    executor = TimingExecutor()
    learner = fp.Learner(model, torch.nn.functional.mse_loss,
                         optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
                         callbacks=[fp.Checkpointer(folder, every=fp.Every(steps=every),
                                                    keep_last=1, async_save=async_save)],
                         use_default_callbacks=False, executor=executor,
                         distributed=fp.FSDP(shard=(torch.nn.Linear,)))
    data = [(xs, xs)] * (every * saves * dist.get_world_size())  # each rank takes its share
    learner.fit(phases=[(fp.TrainingPhase(), data)], n_epochs=1)
    mine = [cp for k, (_, cp) in enumerate(executor.steps, 1) if k % every == 0]
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    return [max(times) for times in zip(*ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--every", type=int, default=10, help="training steps between saves")
    parser.add_argument("--saves", type=int, default=3, help="saves per fit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    say = fp.rank_zero_only(print)
    load = os.getloadavg()[0]
    results = {False: [], True: []}
    with tempfile.TemporaryDirectory() as mine:
        shared = [mine]
        dist.broadcast_object_list(shared, src=0)  # every rank saves into rank 0's folder
        tmp = Path(shared[0])
        for r in range(args.rounds):
            for async_save in (False, True):
                blocked = fit(async_save, args.every, args.saves, tmp / f"{r}-{async_save}")
                results[async_save].extend(blocked)
                say(f"round {r} async_save={async_save}: blocked "
                    f"{[round(b * 1e3, 1) for b in blocked]} ms", flush=True)
        dist.barrier()  # before rank 0 removes the folder
    sync, background = (statistics.median(results[a]) for a in (False, True))
    text = "\n".join([
        "# A training step blocked by a sharded (FSDP) checkpoint: synchronous vs async saves",
        "",
        f"`benchmarks/checkpoint_async_fsdp.py`: Python {platform.python_version()}, torch "
        f"{torch.__version__}, 2 processes (gloo) of one thread each, CPU. {LAYERS} linear "
        f"layers {WIDTH}x{WIDTH} with Adam (about 200 MB of state), sharded over the two "
        f"processes. A save every {args.every} training steps, {args.saves} per fit, "
        f"{args.rounds} fits per mode, alternating; medians over all {len(results[False])} "
        f"saves of a mode, each the slower process's time. Load average {load:.1f} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores).",
        "",
        "| saves | step blocked by the save (ms, median) | min-max (ms) |",
        "|---|--:|--:|",
        *(f"| {'async_save=True' if a else 'synchronous'} | "
          f"{statistics.median(results[a]) * 1e3:.1f} | {min(results[a]) * 1e3:.1f}-"
          f"{max(results[a]) * 1e3:.1f} |" for a in (False, True)),
        "",
        f"Async blocks for {background / sync:.3f} of the synchronous time (target: below "
        "0.2): each process's copy of its shards to host memory; DCP's write runs beside the "
        "following steps.",
        "",
    ])
    say(text)
    if args.out and fp.is_rank_zero():
        args.out.write_text(text, encoding="utf-8")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
