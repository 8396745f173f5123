"""In Jupyter: widget bars that stay, and the metrics table as one HTML table updated in
place. A real notebook runs on a real ipykernel kernel (nbclient), and the test reads what
the notebook captured: the outputs of each cell and the widgets' final state."""

import ast
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

CELLS = [
    # 0: widget bars and the HTML table
    "import fluxpy as fp\n"
    "from fluxpy.testing import test_learner\n"
    "learner = test_learner(fp.Metrics(), fp.ProgressPrinter(), fp.MetricsPrinter())\n"
    "learner.fit(2)",
    # 1: the values the table should show
    "epochs = learner.cbstate.metricsepoch\n"
    "print([[format(epochs[p]['loss'][i], '.4f')"
    " for p in (fp.TrainingPhase(), fp.ValidationPhase())] for i in range(2)])",
    # 2: without ipywidgets (an import of it fails), the bars are text
    "import sys\n"
    "sys.modules['ipywidgets'] = None\n"
    "learner.fit(1)",
    # 3: a file given: the text table there, as in a terminal
    "import io\n"
    "out = io.StringIO()\n"
    "test_learner(fp.Metrics(), fp.MetricsPrinter(file=out)).fit(1)\n"
    "print(out.getvalue())",
]


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(tmp_path_factory.mktemp("nb"))}}
                   ).execute()
    return nb


def outputs(nb, cell, kind):
    return [o for o in nb.cells[cell].outputs if o.output_type == kind]


def widget_states(nb):
    return nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]


def bar_widgets(nb, cell):
    """(label, progress state) of each widget bar a cell displayed, in display order."""
    states = widget_states(nb)
    bars = []
    for output in outputs(nb, cell, "display_data"):
        view = output.data.get("application/vnd.jupyter.widget-view+json")
        if view is None:
            continue
        children = [states[c.removeprefix("IPY_MODEL_")]
                    for c in states[view["model_id"]]["state"]["children"]]
        label = children[0]["state"]["value"].replace("\u2007", " ")  # tqdm's figure spaces
        progress = next(c["state"] for c in children if c["model_name"] == "FloatProgressModel")
        bars.append((label, progress))
    return bars


def test_each_epochs_widget_bar_is_shown_and_ends_full(notebook):
    bars = bar_widgets(notebook, 0)
    assert [label for label, _ in bars] == [
        "Epoch 1 TrainingPhase: 100%", "Epoch 1 ValidationPhase: 100%",
        "Epoch 2 TrainingPhase: 100%", "Epoch 2 ValidationPhase: 100%"]
    ends = [(p["value"], p["max"], p["bar_style"]) for _, p in bars]
    assert ends == [(16.0, 16.0, "success")] * 4


def test_the_metrics_are_one_html_table_updated_in_place_with_every_epoch(notebook):
    tables = [o for o in outputs(notebook, 0, "display_data") if "text/html" in o.data]
    assert len(tables) == 1
    html = tables[0].data["text/html"]
    expected = ast.literal_eval(outputs(notebook, 1, "stream")[0].text)
    assert re.findall(r"<th>(.*?)</th>", html) == ["epoch", "train loss", "valid loss"]
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", html)
    assert rows == [("1", *expected[0]), ("2", *expected[1])]
    # frontends without HTML get the text table
    assert tables[0].data["text/plain"].splitlines()[2:] == [
        f"    1 │ {expected[0][0]:>10} │ {expected[0][1]:>10}",
        f"    2 │ {expected[1][0]:>10} │ {expected[1][1]:>10}"]


def test_the_table_is_shown_after_the_first_epochs_bars_and_before_the_seconds(notebook):
    shown = [o.data.get("text/plain", "")[:22] if "text/html" not in o.data else "table"
             for o in outputs(notebook, 0, "display_data")]
    assert shown == ["Epoch 1 TrainingPhase:", "Epoch 1 ValidationPhas", "table",
                     "Epoch 2 TrainingPhase:", "Epoch 2 ValidationPhas"]


def test_no_text_table_in_a_notebook(notebook):
    assert outputs(notebook, 0, "stream") == []


def test_without_ipywidgets_the_bars_are_text_that_stays(notebook):
    text = "".join(o.text for o in outputs(notebook, 2, "stream") if o.name == "stderr")
    finals = [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.strip()]
    assert [line.split(":")[0] for line in finals] == [
        "Epoch 3 TrainingPhase", "Epoch 3 ValidationPhase"]
    assert all("100%|" in line and "16/16" in line for line in finals)
    assert not [o for o in outputs(notebook, 2, "display_data")
                if "application/vnd.jupyter.widget-view+json" in o.data]


def test_a_file_given_gets_the_text_table_in_a_notebook_too(notebook):
    text = outputs(notebook, 3, "stream")[0].text
    assert text.splitlines()[0] == "epoch │ train loss │ valid loss"
    assert [line.split("│")[0].strip() for line in text.splitlines()[2:] if line] == ["1"]
    assert [o for o in outputs(notebook, 3, "display_data") if "text/html" in o.data] == []


def test_outside_a_kernel_nothing_is_a_notebook():
    from fluxpy.support.notebook import in_notebook

    assert in_notebook() is False


def test_ipython_in_a_terminal_is_not_a_notebook_even_with_ipykernel_imported():
    script = (
        "from IPython.terminal.interactiveshell import TerminalInteractiveShell\n"
        "TerminalInteractiveShell.instance()\n"
        "import ipykernel.zmqshell\n"
        "from fluxpy.support.notebook import in_notebook\n"
        "print(in_notebook())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "False"
