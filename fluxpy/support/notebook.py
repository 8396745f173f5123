"""Output in Jupyter: whether the code runs in a notebook kernel, and which progress bar to use.

In a kernel (JupyterLab, the classic Notebook, VS Code, Colab) `sys.stdout` and `sys.stderr`
are not terminals, but the frontend renders HTML and widgets, so the printers show widget bars
and HTML tables there instead of staying quiet.
"""

from __future__ import annotations

import sys

from tqdm import std

__all__ = ["in_notebook", "notebook_bar"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel: the running IPython shell is ipykernel's
    `ZMQInteractiveShell` (or a subclass, as Colab's). False in plain Python and in IPython
    in a terminal. Imports nothing: a kernel has imported ipykernel already."""
    zmqshell = sys.modules.get("ipykernel.zmqshell")
    if zmqshell is None:
        return False
    from IPython import get_ipython

    return isinstance(get_ipython(), zmqshell.ZMQInteractiveShell)


def notebook_bar() -> type[std.tqdm]:
    """tqdm's widget bar when ipywidgets can be imported, else tqdm's text bar (the kernel
    shows it as text that updates in place)."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return std.tqdm
    from tqdm.notebook import tqdm

    return tqdm
