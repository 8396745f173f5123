"""The `fluxpy` command and the demo it runs."""

import io
import sys

import pytest
import torch

import fluxpy as fp
from fluxpy import demo
from fluxpy.__main__ import USAGE, main
from fluxpy.demo_penalties import ConfidencePenalty, L2Penalty
from fluxpy.testing import test_learner

PNG = b"\x89PNG\r\n\x1a\n"


def test_help_prints_the_usage(capsys):
    assert main(["--help"]) == 0
    assert capsys.readouterr().out == USAGE


def test_unknown_command_prints_the_usage_and_exits_2(capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fluxpy: unknown command: train\n")
    assert USAGE in err


def test_no_command_prints_the_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("fluxpy: no command given\n")


def test_demo_command_runs_the_demo(monkeypatch):
    runs = []
    monkeypatch.setattr(demo, "run_demo", lambda: runs.append(1))
    assert main(["demo"]) == 0
    assert runs == [1]


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    out, bars = io.StringIO(), io.StringIO()
    folder = tmp_path_factory.mktemp("demo") / "pictures"
    final = demo.run_demo(epochs=2, n_per_class=200, out=out, progress=bars, folder=folder)
    return final, out.getvalue(), bars.getvalue(), folder


REFUSED = """\
    fp.WriteConflictError: Write conflict between L2Penalty and ConfidencePenalty:
      - L2Penalty writes learner.batch.loss
      - ConfidencePenalty writes learner.batch.loss
    To resolve it, implement
        @fp.resolveconflict.dispatch
        def _(a: L2Penalty, b: ConfidencePenalty):
            return fp.RunFirst(a)  # or fp.RunFirst(b), fp.NoConflict(), fp.Unresolvable()
"""

FIX = """\
    @fp.resolveconflict.dispatch
    def penalties_commute(a: L2Penalty, b: ConfidencePenalty):
        \"\"\"Both add a term to the loss: either order gives the same sum.\"\"\"
        return fp.NoConflict()
"""


def test_demo_refuses_the_conflicting_callbacks_before_training(short_demo):
    _, text, _, _ = short_demo
    assert "1. A conflict, caught before training." in text
    assert REFUSED in text
    # Refused when the learner was built: the only table is the fixed learner's, after it.
    assert text.index(REFUSED) < text.index("4. Training for 2 epochs")
    assert text.count("epoch │ train loss") == 1
    assert text.index("4. Training for 2 epochs") < text.index("epoch │ train loss")


def test_demo_declares_the_fix_and_trains_with_both_penalties(short_demo):
    _, text, _, _ = short_demo
    assert FIX in text
    assert ("L2Penalty before ConfidencePenalty: NoConflict() declared by "
            "resolveconflict(L2Penalty, ConfidencePenalty) for batch.loss") in text
    assert "BackwardBegin  L2Penalty -> ConfidencePenalty -> StopOnNaNLoss" in text
    assert "epoch │ train loss │ train accuracy │ valid loss │ valid accuracy" in text
    assert "Final metrics: train loss" in text
    assert "Summary: 2 epochs, 30 training steps, valid accuracy" in text


def test_demo_saves_the_history_and_the_graph_and_says_where(short_demo):
    _, text, _, folder = short_demo
    for name in ("history.png", "graph.png"):
        assert (folder / name).read_bytes()[:8] == PNG
    assert (f"Pictures: {folder.resolve() / 'history.png'} (loss and accuracy per epoch, "
            "train and valid)\n") in text
    assert f"{folder.resolve() / 'graph.png'} (the callback graph, fp.plot_graph)\n" in text


def test_demo_shows_progress_bars_even_when_not_a_terminal(short_demo):
    _, _, bars, _ = short_demo
    assert "Epoch 2 TrainingPhase" in bars
    assert "Epoch 2 ValidationPhase" in bars


def test_demo_returns_the_final_metrics(short_demo):
    final, _, _, _ = short_demo
    assert set(final) == {"train loss", "train accuracy", "valid loss", "valid accuracy"}
    assert 0.0 <= final["valid accuracy"] <= 1.0


def test_a_second_demo_in_the_same_process_says_the_fix_is_already_declared(short_demo,
                                                                              tmp_path):
    out = io.StringIO()
    demo.run_demo(epochs=1, n_per_class=30, out=out, progress=io.StringIO(), folder=tmp_path)
    text = out.getvalue()
    assert "WriteConflictError" not in text
    assert ("(no error: penalties_commute was declared by an earlier run in this process)"
            in text)


def test_without_matplotlib_the_demo_says_why_there_are_no_pictures(monkeypatch, tmp_path):
    learner = test_learner(fp.Metrics())
    learner.fit(1)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert demo._pictures(learner, tmp_path) == (
        "Pictures: not drawn (fluxpy's plots need matplotlib: pip install 'fluxpy[plot]' "
        "(or pip install matplotlib)).")
    assert list(tmp_path.iterdir()) == []


class LossAtBackward(fp.Callback):
    """Keeps the loss that will be differentiated (after both penalties)."""

    def __init__(self):
        self.losses = []


@fp.stateaccess.dispatch
def _loss_at_backward(cb: LossAtBackward):
    return fp.Access(batch=fp.Access(loss=fp.Read()))


@fp.on.dispatch
def _keep(event: fp.BackwardBegin, phase: fp.TrainingPhase, cb: LossAtBackward, learner):
    cb.losses.append(learner.batch.loss.detach().clone())


def test_the_penalties_add_their_terms_to_the_loss(short_demo):
    # short_demo declared penalties_commute, so the two may be used together.
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    xs, ys = torch.randn(8, 2), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with torch.no_grad():
        preds = model(xs)
        probs = preds.softmax(dim=1)
        entropy = -(probs * probs.log()).sum(dim=1).mean()
        squares = sum((p * p).sum() for p in model.parameters())
        expected = torch.nn.functional.cross_entropy(preds, ys) + 0.1 * squares - 0.5 * entropy
    probe = LossAtBackward()
    learner = fp.Learner(model, torch.nn.functional.cross_entropy,
                         optimizer=lambda params: torch.optim.SGD(params, lr=0.0),
                         callbacks=[L2Penalty(0.1), ConfidencePenalty(0.5), probe],
                         use_default_callbacks=False, device="cpu")
    learner.fit(1, phases=[(fp.TrainingPhase(), [(xs, ys)])])
    assert probe.losses[0].item() == pytest.approx(expected.item(), rel=1e-6)


def test_spirals_are_balanced_and_reproducible():
    points, labels = demo.spirals(50)
    again, _ = demo.spirals(50)
    assert points.shape == (150, 2)
    assert sorted(set(labels.tolist())) == [0, 1, 2]
    assert (labels == 0).sum() == 50
    assert (points == again).all()
