"""Runs every benchmark and writes the results to `benchmarks/results/` (what `make bench` does).

- `dispatch.py` -> `dispatch.md` (the cost of firing an event and of a protected read);
- `overhead.py` -> `overhead.md`, `overhead.json` and the plot `overhead.png`;
- `threaded.py` -> `threaded.md`;
- `compile.py` -> `compile.md` (compiled vs eager fit of a small ConvNet, and its compile time);
- `results.md`: the targets next to the numbers measured in this run.

Each benchmark runs in its own process, one after the other, so none sees another's imports
or threads.

    python benchmarks/run_all.py                 # about five minutes on two cores
    python benchmarks/run_all.py --quick         # fewer rounds, into a temporary folder
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def run(script: str, *args: str) -> None:
    """Run `benchmarks/<script>` with this interpreter; its table goes to stdout as it runs."""
    start = time.perf_counter()
    print(f"== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)
    print(f"== {script}: {time.perf_counter() - start:.0f} s", flush=True)


def plot(numbers: dict, path: Path) -> None:
    """Bars of the median CPU-time ratio to the raw loop, one group per model size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = numbers["rows"]
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["size"], r["variant"]): r for r in rows}
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for k, variant in enumerate(variants):
        xs, heights, low, high = [], [], [], []
        for i, size in enumerate(sizes):
            r = by.get((size, variant))
            if r is None:
                continue
            xs.append(i - 0.4 + (k + 0.5) * width)
            heights.append(r["ratio"])
            low.append(r["ratio"] - r["low"])
            high.append(r["high"] - r["ratio"])
        bars = ax.bar(xs, heights, width, yerr=[low, high], capsize=2, label=variant)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=3)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(sizes)))
    ax.set_xticklabels([f"{s} ({'-'.join(map(str, numbers['sizes'][s]))})" for s in sizes])
    ax.set_ylabel("fit time / raw loop with .item() (CPU time)")
    ax.set_title("Overhead over a raw PyTorch loop (median of rounds, bars: min-max)")
    ax.set_ylim(0, max(r["high"] for r in rows) * 1.15)
    ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(numbers: dict, threaded: str, previous: dict | None = None) -> str:
    """The targets, what this run measured and, beside it, what the run before measured (the
    `overhead.json` this run replaced), as a Markdown table."""

    def ratio(run: dict | None, variant: str) -> str:
        r = _row(run, variant)
        return "-" if r is None else f"{r['ratio']:.3f} ({r['low']:.2f}-{r['high']:.2f})"

    def per_step(run: dict | None, variant: str) -> str:
        """What the variant adds to a step of the raw loop, in microseconds of CPU time."""
        r, raw = _row(run, variant), _row(run, numbers["baseline"])
        if r is None or raw is None or "steps_per_fit" not in run:
            return "-"
        extra = (r["ratio"] - 1) * raw["cpu_seconds"] / run["steps_per_fit"]
        return f"{extra * 1e6:+.1f} us per step"

    def epoch_end_only(run: dict | None) -> str:
        steps = (run or {}).get("steps")
        if not steps:
            return "-"
        return (f"{100 * (steps['ratio'] - 1):+.2f}% (per-round ratio {steps['ratio']:.3f}, "
                f"{steps['low']:.3f}-{steps['high']:.3f}; {steps['plain_seconds'] * 1e6:.1f} us "
                f"vs {steps['extra_seconds'] * 1e6:.1f} us)")

    def both(measure, *args) -> str:
        return f"{measure(numbers, *args)} | {measure(previous, *args)}"

    two = next((line for line in threaded.splitlines() if line.startswith("| 2 |")), None)
    serial_ms, threaded_ms = (two.split("|")[2].strip(), two.split("|")[3].strip()) if two \
        else ("?", "?")
    minimal, strict = "fluxpy: Recorder + Metrics", "fluxpy: Recorder + Metrics, strict mode"
    alone, unprotected = "fluxpy: no callbacks", "fluxpy: Recorder + Metrics, unprotected"
    lines = [
        "# Benchmark summary",
        "",
        "What `make bench` measured in its last run, against the targets, and what the run "
        "before it measured. Ratios are medians of per-round CPU-time ratios to the raw "
        "PyTorch loop that calls `loss.item()` every step (min-max in brackets); details in "
        "the tables below.",
        "",
        "| target | measured | the run before |",
        "|---|---|---|",
        f"| tiny MLP, Recorder + Metrics: <= 1.05x | {both(ratio, minimal)} |",
        "| tiny MLP, Recorder + Metrics: <= 10 us per step above the raw loop | "
        f"{both(per_step, minimal)} |",
        "| tiny MLP, default callbacks, progress bar off: <= 1.10x | "
        f"{both(ratio, 'fluxpy: defaults, no progress bar')} |",
        "| 20 callbacks that handle only `EpochEnd` add < 1% to the step time | "
        f"{both(epoch_end_only)} |",
        "| two independent 20 ms epoch-end I/O handlers: ~20 ms threaded, not 40 | "
        f"{threaded_ms} ms threaded, {serial_ms} ms serial | - |",
        "| (the loop alone, no callbacks: tiny MLP) | "
        f"{ratio(numbers, alone)}, {per_step(numbers, alone)} | "
        f"{ratio(previous, alone)}, {per_step(previous, alone)} |",
        "| (the same two callbacks without protected views: tiny MLP) | "
        f"{ratio(numbers, unprotected)}, {per_step(numbers, unprotected)} | "
        f"{ratio(previous, unprotected)}, {per_step(previous, unprotected)} |",
        "| (strict mode, for tests: tiny MLP, Recorder + Metrics) | "
        f"{ratio(numbers, strict)}, {per_step(numbers, strict)} | "
        f"{ratio(previous, strict)}, {per_step(previous, strict)} |",
    ]
    for peer in ("ignite", "lightning"):
        if _row(numbers, peer) is not None:
            lines.append(f"| (peer on the same workload, tiny MLP) {peer} | {both(ratio, peer)} |")
    return "\n".join(lines) + "\n"


def _row(run: dict | None, variant: str) -> dict | None:
    """The tiny model's row of `variant` in an `overhead.json`, if it ran."""
    return next((r for r in (run or {}).get("rows", ())
                 if r["size"] == "tiny" and r["variant"] == variant), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="few rounds, to check the setup (results go to a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="the results folder")
    args = parser.parse_args(argv)
    results = args.out or (Path(tempfile.mkdtemp(prefix="fluxpy-bench-")) if args.quick
                           else RESULTS)
    results.mkdir(parents=True, exist_ok=True)
    if (HERE / "dispatch.py").exists():
        run("dispatch.py", "--out", str(results / "dispatch.md"),
            *(("--repeats", "3") if args.quick else ()))
    committed = RESULTS / "overhead.json"  # the run before, for the summary
    previous = json.loads(committed.read_text(encoding="utf-8")) if committed.exists() else None
    quick = ("--sizes", "tiny", "medium", "--repeats", "2") if args.quick else ()
    run("overhead.py", "--out", str(results / "overhead.md"),
        "--json", str(results / "overhead.json"), *quick)
    run("threaded.py", "--out", str(results / "threaded.md"))
    run("compile.py", "--out", str(results / "compile.md"), *(("--rounds", "2") if args.quick
                                                               else ()))
    numbers = json.loads((results / "overhead.json").read_text(encoding="utf-8"))
    plot(numbers, results / "overhead.png")
    text = summary(numbers, (results / "threaded.md").read_text(encoding="utf-8"), previous)
    (results / "results.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"== results in {results}")


if __name__ == "__main__":
    main()
