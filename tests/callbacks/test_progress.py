"""ProgressPrinter: a bar per phase and epoch, quiet unless the output is a terminal or asked."""

import io

import pytest

import fluxpy as fp
from fluxpy.testing import test_learner


class Terminal(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self):
        return True


def output_of(printer, epochs=1, **kwargs):
    learner = test_learner(fp.Metrics(), printer, **kwargs)
    learner.fit(epochs)
    return printer.file.getvalue()


def test_quiet_when_the_output_is_not_a_terminal():
    assert output_of(fp.ProgressPrinter(file=io.StringIO())) == ""


def test_bars_when_the_output_is_a_terminal():
    text = output_of(fp.ProgressPrinter(file=Terminal()))
    assert "Epoch 1 TrainingPhase" in text
    assert "Epoch 1 ValidationPhase" in text


def test_bars_when_enabled_even_if_not_a_terminal():
    text = output_of(fp.ProgressPrinter(enabled=True, file=io.StringIO()), epochs=2)
    for label in ("Epoch 1 TrainingPhase", "Epoch 2 TrainingPhase", "Epoch 2 ValidationPhase"):
        assert label in text
    assert "/16" in text


def test_quiet_when_disabled_even_on_a_terminal():
    assert output_of(fp.ProgressPrinter(enabled=False, file=Terminal())) == ""


@pytest.mark.parametrize(("refresh_seconds", "reads"), [(0.0, 32), (3600.0, 0)])
def test_running_loss_is_read_at_a_bounded_rate(host_reads, refresh_seconds, reads):
    printer = fp.ProgressPrinter(enabled=True, refresh_seconds=refresh_seconds,
                                 file=io.StringIO())
    learner = test_learner(fp.Metrics(), printer)
    host_reads.clear()
    learner.fit(1)
    assert host_reads.count("__float__") == reads


def test_bar_is_closed_when_fit_fails():
    def fail(learner):
        raise RuntimeError("boom")

    printer = fp.ProgressPrinter(enabled=True, file=io.StringIO())
    learner = test_learner(fp.Metrics(), printer,
                           fp.CustomCallback(fail, fp.StepEnd, fp.ValidationPhase))
    with pytest.raises(RuntimeError, match="boom"):
        learner.fit(1)
    assert printer._bar is None


def test_reads_only_step_metrics_and_data():
    assert fp.stateaccess(fp.ProgressPrinter()) == fp.Access(
        data=fp.Read(), cbstate=fp.Access(metricsstep=fp.Read()))


def screen(text):
    """What a terminal shows: of each line, what was written after its last carriage return."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.rsplit("\r", 1)[-1]]


def test_each_epochs_bar_stays_on_screen_when_it_ends():
    lines = screen(output_of(fp.ProgressPrinter(enabled=True, file=io.StringIO()), epochs=2))
    assert [line.split(":")[0] for line in lines] == [
        "Epoch 1 TrainingPhase", "Epoch 1 ValidationPhase",
        "Epoch 2 TrainingPhase", "Epoch 2 ValidationPhase"]
    assert all(" 100%|" in line and "16/16" in line for line in lines)


def test_bars_and_table_rows_appear_in_epoch_order_on_one_terminal():
    out = Terminal()
    learner = test_learner(fp.Metrics(), fp.ProgressPrinter(file=out), fp.MetricsPrinter(file=out))
    learner.fit(2)
    lines = screen(out.getvalue())
    assert [line.split(":")[0].split("│")[0].strip() for line in lines] == [
        "Epoch 1 TrainingPhase", "Epoch 1 ValidationPhase", "epoch", "─" * len(lines[3]), "1",
        "Epoch 2 TrainingPhase", "Epoch 2 ValidationPhase", "2"]
