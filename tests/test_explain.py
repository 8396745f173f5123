"""`explain(learner)`: a dry run listing callbacks, handlers per phase and event, and why."""

import attrs
import pytest
import torch

import fluxpy as fp
from fluxpy.testing import test_learner


@attrs.frozen
class Probe(fp.Event):
    """A user event; `explain` lists it for the callbacks that handle it."""


class Writer(fp.Callback):
    pass


class Reader(fp.Callback):
    pass


class Clip(fp.Callback):
    pass


class Debug(fp.UnsafeCallback):
    pass


class LossLogger(fp.Callback):
    pass


@attrs.define
class Bundle(fp.Callback):
    """A group: carries a `Clip`."""

    members: list = attrs.Factory(lambda: [Clip()])

    def subcallbacks(self):
        return tuple(self.members)


@fp.stateaccess.dispatch
def _writer_access(cb: Writer):
    return fp.Access(cbstate=fp.Access(x=fp.Write()))


@fp.stateaccess.dispatch
def _reader_access(cb: Reader):
    return fp.Access(cbstate=fp.Access(x=fp.Read()), batch=fp.Access(loss=fp.Read()))


@fp.stateaccess.dispatch
def _clip_access(cb: Clip):
    return fp.Access(model=fp.Write())


@fp.stateaccess.dispatch
def _loss_logger_access(cb: LossLogger):
    return fp.Access(cbstate=fp.Access(metricsstep=fp.Read(), history=fp.Read()))


CALLS = []


@fp.on.dispatch
def _writer_epoch_end(event: fp.EpochEnd, phase: fp.Phase, cb: Writer, learner):
    CALLS.append("Writer")


@fp.on.dispatch
def _reader_step_end(event: fp.StepEnd, phase: fp.AbstractTrainingPhase, cb: Reader, learner):
    CALLS.append("Reader")


@fp.on.dispatch
def _reader_epoch_end(event: fp.EpochEnd, phase: fp.Phase, cb: Reader, learner):
    CALLS.append("Reader")


@fp.on.dispatch
def _clip_backward_end(event: fp.BackwardEnd, phase: fp.Phase, cb: Clip, learner):
    CALLS.append("Clip")


@fp.on.dispatch
def _debug_fit_begin(event: fp.FitBegin, phase: fp.Phase, cb: Debug, learner):
    CALLS.append("Debug")


@fp.on.dispatch
def _debug_probe(event: Probe, phase: fp.Phase, cb: Debug, learner):
    CALLS.append("Debug")


@fp.on.dispatch
def _loss_logger_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: LossLogger, learner):
    CALLS.append("LossLogger")


@pytest.fixture(autouse=True)
def _no_calls():
    CALLS.clear()
    yield


def test_explain_lists_callbacks_handlers_and_reasons():
    learner = test_learner(Reader(), Debug(), Bundle(), Writer())
    assert fp.explain(learner) == "\n".join([
        "Callbacks in run order (what each reads and writes):",
        "  Debug   UNSAFE: gets the raw learner, nothing is checked",
        "  Bundle  no state access",
        "  Clip    writes model; from group Bundle",
        "  Writer  writes cbstate.x",
        "  Reader  reads batch.loss, cbstate.x",
        "",
        "Handlers per phase and event, in run order:",
        "  Phase",
        "    FitBegin     Debug",
        "  TrainingPhase",
        "    BackwardEnd  Clip",
        "    StepEnd      Reader",
        "    EpochEnd     Writer -> Reader",
        "    Probe        Debug",
        "  ValidationPhase",
        "    EpochEnd     Writer -> Reader",
        "    Probe        Debug",
        "",
        "Why this order:",
        "  Writer before Reader: Writer writes cbstate.x, which Reader reads",
    ])


def test_explain_shows_events_without_handlers_when_asked():
    learner = test_learner(Reader(), Writer())
    handlers = fp.explain(learner, empty=True).split("\n\n")[1]
    assert handlers == "\n".join([
        "Handlers per phase and event, in run order:",
        "  Phase",
        "    FitBegin       (none)",
        "    FitEnd         (none)",
        "  TrainingPhase",
        "    EpochBegin     (none)",
        "    StepBegin      (none)",
        "    LossBegin      (none)",
        "    BackwardBegin  (none)",
        "    BackwardEnd    (none)",
        "    StepEnd        Reader",
        "    EpochEnd       Writer -> Reader",
        "  ValidationPhase",
        "    EpochBegin     (none)",
        "    StepBegin      (none)",
        "    LossBegin      (none)",
        "    StepEnd        (none)",
        "    EpochEnd       Writer -> Reader",
    ])


def test_explain_says_when_a_phase_has_no_handlers():
    handlers = fp.explain(test_learner(Clip())).split("\n\n")[1]
    assert handlers == "\n".join([
        "Handlers per phase and event, in run order:",
        "  Phase",
        "    (no handlers)",
        "  TrainingPhase",
        "    BackwardEnd  Clip",
        "  ValidationPhase",
        "    (no handlers)",
    ])


def test_explain_the_default_callbacks():
    assert fp.explain(test_learner(use_default_callbacks=True)) == "\n".join([
        "Callbacks in run order (what each reads and writes):",
        "  Recorder         writes cbstate.history",
        "  Metrics          reads batch.loss, batch.preds, batch.ys, device; "
        "writes cbstate.metricsepoch, cbstate.metricsstep",
        "  ProgressPrinter  reads cbstate.metricsstep, data",
        "  MetricsPrinter   reads cbstate.metricsepoch, epoch_phases",
        "  StopOnNaNLoss    reads batch.loss",
        "",
        "Handlers per phase and event, in run order:",
        "  Phase",
        "    FitBegin       Metrics -> MetricsPrinter",
        "    FitEnd         ProgressPrinter -> MetricsPrinter",
        "  TrainingPhase",
        "    EpochBegin     Recorder -> Metrics -> ProgressPrinter -> MetricsPrinter -> "
        "StopOnNaNLoss",
        "    BackwardBegin  StopOnNaNLoss",
        "    StepEnd        Recorder -> Metrics -> ProgressPrinter",
        "    EpochEnd       Recorder -> Metrics -> ProgressPrinter -> MetricsPrinter -> "
        "StopOnNaNLoss",
        "  ValidationPhase",
        "    EpochBegin     Recorder -> Metrics -> ProgressPrinter -> MetricsPrinter -> "
        "StopOnNaNLoss",
        "    StepEnd        Recorder -> Metrics -> ProgressPrinter -> StopOnNaNLoss",
        "    EpochEnd       Recorder -> Metrics -> ProgressPrinter -> MetricsPrinter -> "
        "StopOnNaNLoss",
        "",
        "Why this order:",
        "  Metrics before ProgressPrinter: Metrics writes cbstate.metricsstep, which "
        "ProgressPrinter reads",
        "  Metrics before MetricsPrinter: Metrics writes cbstate.metricsepoch, which "
        "MetricsPrinter reads",
    ])


def test_explain_tells_a_runafter_once_and_the_state_a_pair_shares_in_one_line(tmp_path):
    learner = test_learner(
        fp.Checkpointer(tmp_path), fp.Scheduler({fp.LearningRate: fp.linear(10, 1e-3, 1e-4)}),
        fp.GradientClipping(1.0), use_default_callbacks=True)
    assert fp.explain(learner) == "\n".join([
        "Callbacks in run order (what each reads and writes):",
        "  Scheduler         writes optimizer",
        "  GradientClipping  reads batch.update; writes model",
        "  Recorder          writes cbstate.history",
        "  Metrics           reads batch.loss, batch.preds, batch.ys, device; "
        "writes cbstate.metricsepoch, cbstate.metricsstep",
        "  ProgressPrinter   reads cbstate.metricsstep, data",
        "  MetricsPrinter    reads cbstate.metricsepoch, epoch_phases",
        "  StopOnNaNLoss     reads batch.loss",
        "  Checkpointer      reads callbacks, cbstate, model, optimizer, rng, scaler; "
        "UNSAFE: gets the raw learner, nothing is checked",
        "",
        "Handlers per phase and event, in run order:",
        "  Phase",
        "    FitBegin       Metrics -> MetricsPrinter -> Checkpointer",
        "    FitEnd         ProgressPrinter -> MetricsPrinter -> Checkpointer",
        "  TrainingPhase",
        "    EpochBegin     Recorder -> Metrics -> ProgressPrinter -> MetricsPrinter -> "
        "StopOnNaNLoss",
        "    StepBegin      Scheduler",
        "    BackwardBegin  StopOnNaNLoss",
        "    BackwardEnd    GradientClipping",
        "    StepEnd        Recorder -> Metrics -> ProgressPrinter -> Checkpointer",
        "    EpochEnd       GradientClipping -> Recorder -> Metrics -> ProgressPrinter -> "
        "MetricsPrinter -> StopOnNaNLoss -> Checkpointer",
        "  ValidationPhase",
        "    EpochBegin     Recorder -> Metrics -> ProgressPrinter -> MetricsPrinter -> "
        "StopOnNaNLoss",
        "    StepEnd        Recorder -> Metrics -> ProgressPrinter -> StopOnNaNLoss",
        "    EpochEnd       Recorder -> Metrics -> ProgressPrinter -> MetricsPrinter -> "
        "StopOnNaNLoss -> Checkpointer",
        "",
        "Why this order:",
        "  Checkpointer after every other callback: runafter(Checkpointer)",
        "  Scheduler before Checkpointer: Scheduler writes optimizer, which Checkpointer reads",
        "  GradientClipping before Checkpointer: GradientClipping writes model, which "
        "Checkpointer reads",
        "  Recorder before Checkpointer: Recorder writes cbstate.history, which Checkpointer "
        "reads",
        "  Metrics before ProgressPrinter: Metrics writes cbstate.metricsstep, which "
        "ProgressPrinter reads",
        "  Metrics before MetricsPrinter: Metrics writes cbstate.metricsepoch, which "
        "MetricsPrinter reads",
        "  Metrics before Checkpointer: Metrics writes cbstate.metricsepoch, "
        "cbstate.metricsstep, which Checkpointer reads",
    ])


class AVeryLongCallbackNameThatStillAlignsWell(fp.Callback):
    """Forty characters: the columns widen to fit it."""


@attrs.frozen
class AnEventWithAnUnusuallyLongName(fp.Event):
    pass


@fp.stateaccess.dispatch
def _long_access(cb: AVeryLongCallbackNameThatStillAlignsWell):
    return fp.Access(cbstate=fp.Access(x=fp.Read()))


@fp.on.dispatch
def _long_step_end(event: fp.StepEnd, phase: fp.Phase,
                   cb: AVeryLongCallbackNameThatStillAlignsWell, learner):
    pass


@fp.on.dispatch
def _long_event(event: AnEventWithAnUnusuallyLongName, phase: fp.AbstractTrainingPhase,
                cb: AVeryLongCallbackNameThatStillAlignsWell, learner):
    pass


def test_explain_aligns_names_however_long():
    learner = test_learner(AVeryLongCallbackNameThatStillAlignsWell(), Writer(), Clip())
    assert fp.explain(learner) == "\n".join([
        "Callbacks in run order (what each reads and writes):",
        "  Writer                                    writes cbstate.x",
        "  AVeryLongCallbackNameThatStillAlignsWell  reads cbstate.x",
        "  Clip                                      writes model",
        "",
        "Handlers per phase and event, in run order:",
        "  Phase",
        "    (no handlers)",
        "  TrainingPhase",
        "    BackwardEnd                     Clip",
        "    StepEnd                         AVeryLongCallbackNameThatStillAlignsWell",
        "    EpochEnd                        Writer",
        "    AnEventWithAnUnusuallyLongName  AVeryLongCallbackNameThatStillAlignsWell",
        "  ValidationPhase",
        "    StepEnd                         AVeryLongCallbackNameThatStillAlignsWell",
        "    EpochEnd                        Writer",
        "",
        "Why this order:",
        "  Writer before AVeryLongCallbackNameThatStillAlignsWell: Writer writes cbstate.x, "
        "which AVeryLongCallbackNameThatStillAlignsWell reads",
    ])


def test_explain_marks_an_unsafe_callback():
    lines = fp.explain(test_learner(Debug(), Writer())).splitlines()
    assert lines[:3] == [
        "Callbacks in run order (what each reads and writes):",
        "  Debug   UNSAFE: gets the raw learner, nothing is checked",
        "  Writer  writes cbstate.x",
    ]
    assert lines[lines.index("  Phase") + 1] == "    FitBegin  Debug"


def _realistic():
    """The default callbacks plus a custom one that reads what Metrics and Recorder write."""
    return test_learner(LossLogger(), Clip(), use_default_callbacks=True)


def _lines(text):
    """The lines with runs of spaces collapsed, so alignment does not matter."""
    return [" ".join(line.split()) for line in text.splitlines()]


def test_explain_places_a_custom_callback_after_the_defaults_it_reads():
    lines = _lines(fp.explain(_realistic()))
    training = lines[lines.index("TrainingPhase"):lines.index("ValidationPhase")]
    step_end = next(line for line in training if line.startswith("StepEnd"))
    order = step_end.split(None, 1)[1].split(" -> ")
    assert order.index("Recorder") < order.index("LossLogger")
    assert order.index("Metrics") < order.index("LossLogger")
    assert "BackwardEnd Clip" in training


def test_explain_lists_each_callbacks_reads_and_writes():
    lines = _lines(fp.explain(_realistic()))
    assert "LossLogger reads cbstate.history, cbstate.metricsstep" in lines
    assert "Clip writes model" in lines
    assert "Recorder writes cbstate.history" in lines
    assert "MetricsPrinter reads cbstate.metricsepoch, epoch_phases" in lines


def test_explain_gives_the_reason_for_each_edge():
    lines = _lines(fp.explain(_realistic()))
    assert ("Recorder before LossLogger: Recorder writes cbstate.history, which LossLogger "
            "reads") in lines
    assert ("Metrics before LossLogger: Metrics writes cbstate.metricsstep, which LossLogger "
            "reads") in lines
    assert ("Metrics before MetricsPrinter: Metrics writes cbstate.metricsepoch, which "
            "MetricsPrinter reads") in lines


def test_explain_runs_no_training():
    learner = _realistic()
    coeff = learner.model.coeff.detach().clone()
    fp.explain(learner)
    assert torch.equal(learner.model.coeff, coeff)
    assert learner.cbstate.history == {}
    assert learner.optimizer.state_dict()["state"] == {}
    assert CALLS == []


def test_explain_without_constraints_says_so():
    learner = test_learner(Clip())
    assert fp.explain(learner).splitlines()[-1] == (
        "No ordering constraints: callbacks run in the order given."
    )


def test_explain_shows_the_phases_asked_for():
    @attrs.frozen
    class GANPhase(fp.AbstractTrainingPhase):
        pass

    text = fp.explain(test_learner(Clip()), phases=[GANPhase()])
    assert "  GANPhase" in text.splitlines()
    assert "TrainingPhase" not in text
    assert "    BackwardEnd  Clip" in text.splitlines()


def test_explain_draws_its_graph():
    learner = test_learner(Reader(), Writer())
    explanation = fp.explain(learner)
    assert explanation.to_mermaid() == learner.graph.to_mermaid()
    assert explanation.to_dot() == learner.graph.to_dot()
    assert '    c1 -- "cbstate.x" --> c0' in explanation.to_mermaid().splitlines()


class Norm(fp.Callback):
    """Reads the model, declared to run before `Clip` writes it."""


class Twice(fp.Callback):
    """Lists `Reader` twice in its `runafter`."""


class Left(fp.Callback):
    pass


class Right(fp.Callback):
    pass


@fp.stateaccess.dispatch
def _norm_access(cb: Norm):
    return fp.Access(model=fp.Read())


@fp.resolveconflict.dispatch
def _norm_before_clip(a: Clip, b: Norm):
    return fp.RunFirst(b)


@fp.runafter.dispatch
def _twice_after(cb: Twice):
    return (Reader, Reader)


@fp.stateaccess.dispatch
def _left_access(cb: Left):
    return fp.Access(optimizer=fp.Write())


@fp.stateaccess.dispatch
def _right_access(cb: Right):
    return fp.Access(optimizer=fp.Write())


@fp.resolveconflict.dispatch
def _left_right(a: Left, b: Right):
    return fp.NoConflict()


def test_explain_lists_declared_orders_first_then_inferred_ones_each_reason_once():
    text = fp.explain(test_learner(Twice(), Reader(), Clip(), Writer(), Norm(), Right(), Left()))
    why = text.splitlines()[text.splitlines().index("Why this order:"):]
    assert why == [
        "Why this order:",
        "  Twice after Reader: runafter(Twice)",
        "  Norm before Clip: RunFirst(Norm) declared by resolveconflict(Clip, Norm) for model",
        "  Writer before Reader: Writer writes cbstate.x, which Reader reads",
        "  Right before Left: NoConflict() declared by resolveconflict(Left, Right) for "
        "optimizer: their writes commute; kept in the order given",
    ]
