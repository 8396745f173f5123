"""MetricsPrinter: one row per epoch, training and validation side by side, integer epochs."""

import io

import fluxpy as fp
from fluxpy.testing import test_batches, test_learner

TRAIN, VALID = fp.TrainingPhase(), fp.ValidationPhase()


def accuracy(preds, ys):
    return ((preds - ys).abs() < 1).float().mean()


def rows(text):
    """The table rows (not the header or rule) as lists of cells."""
    lines = text.splitlines()
    return [[c.strip() for c in line.split("│")] for line in lines[2:]]


def test_train_and_valid_metrics_side_by_side_in_one_row():
    printer = fp.MetricsPrinter(file=io.StringIO())
    test_learner(fp.Metrics(accuracy), printer).fit(1)
    header = printer.file.getvalue().splitlines()[0]
    assert [c.strip() for c in header.split("│")] == [
        "epoch", "train loss", "train accuracy", "valid loss", "valid accuracy"]
    assert len(rows(printer.file.getvalue())) == 1


def test_rows_show_the_epoch_metrics():
    printer = fp.MetricsPrinter(file=io.StringIO())
    learner = test_learner(fp.Metrics(), printer)
    learner.fit(2)
    epochs = learner.cbstate.metricsepoch
    expected = [[str(i + 1), f"{epochs[TRAIN]['loss'][i]:.4f}", f"{epochs[VALID]['loss'][i]:.4f}"]
                for i in range(2)]
    assert rows(printer.file.getvalue()) == expected


def test_epochs_are_integers_that_keep_counting_over_fit_calls():
    printer = fp.MetricsPrinter(file=io.StringIO())
    learner = test_learner(fp.Metrics(), printer)
    learner.fit(2)
    learner.fit(1)
    table = rows(printer.file.getvalue())
    assert [row[0] for row in table] == ["1", "2", "3"]


def test_header_is_printed_once_while_the_columns_stay_the_same():
    printer = fp.MetricsPrinter(file=io.StringIO())
    learner = test_learner(fp.Metrics(), printer)
    learner.fit(2)
    learner.fit(1)
    assert printer.file.getvalue().count("epoch │") == 1


def test_header_changes_with_the_columns():
    printer = fp.MetricsPrinter(file=io.StringIO())
    learner = test_learner(fp.Metrics(), printer)
    learner.fit(1)
    learner.fit(1, data=(test_batches(2), None))
    headers = [line for line in printer.file.getvalue().splitlines() if line.startswith("epoch")]
    assert headers == ["epoch │ train loss │ valid loss", "epoch │ train loss"]


def test_last_row_is_printed_when_fit_is_cancelled():
    def stop(learner):
        raise fp.CancelFitException("done")

    printer = fp.MetricsPrinter(file=io.StringIO())
    learner = test_learner(fp.Metrics(), printer,
                           fp.CustomCallback(stop, fp.EpochBegin, fp.ValidationPhase))
    learner.fit(3)
    assert rows(printer.file.getvalue()) == [
        ["1", f"{learner.cbstate.metricsepoch[TRAIN]['loss'][0]:.4f}"]]


def test_needs_metrics():
    assert fp.stateaccess(fp.MetricsPrinter()) == fp.Access(
        cbstate=fp.Access(metricsepoch=fp.Read()))


def test_epochs_keep_counting_in_a_new_learner_that_loaded_a_checkpoint(tmp_path):
    first = test_learner(fp.Recorder(), fp.Metrics(), fp.MetricsPrinter(file=io.StringIO()))
    first.fit(2)
    fp.save_checkpoint(first, tmp_path / "two.pt")
    out = io.StringIO()
    second = test_learner(fp.Recorder(), fp.Metrics(), fp.MetricsPrinter(file=out))
    fp.load_checkpoint(second, tmp_path / "two.pt")
    second.fit(2)
    rows = [line for line in out.getvalue().splitlines() if line.lstrip()[:1].isdigit()]
    assert [row.split("│")[0].strip() for row in rows] == ["3", "4"]
