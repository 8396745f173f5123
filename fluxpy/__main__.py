"""The `fluxpy` command (also `python -m fluxpy`): `fluxpy demo` trains the demo model."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """\
usage: fluxpy <command>

commands:
  demo      two callbacks that both write the loss, refused before training with
            the error and its fix; then the fix, the callback plan, training a small
            MLP on generated spirals (progress bars, the metrics table) and
            history.png and graph.png saved in fluxpy-demo/ (about 15 s)

options:
  -h, --help  show this message
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in `argv` (default `sys.argv[1:]`); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"], ["help"]):
        print(USAGE, end="")
        return 0
    if args == ["demo"]:
        from .demo import run_demo

        run_demo()
        return 0
    problem = f"unknown command: {' '.join(args)}" if args else "no command given"
    print(f"fluxpy: {problem}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
