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
        cbstate=fp.Access(metricsepoch=fp.Read()), epoch_phases=fp.Read())


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


def test_each_row_is_printed_when_its_epoch_ends():
    out = io.StringIO()
    seen = []
    snapshot = fp.CustomCallback(lambda learner: seen.append(len(rows(out.getvalue()))),
                                 fp.EpochBegin, fp.TrainingPhase)
    learner = test_learner(snapshot, fp.Metrics(), fp.MetricsPrinter(file=out))
    learner.fit(3)
    # when epoch k begins, the rows of the k - 1 epochs before it are on screen
    assert seen == [0, 1, 2]
    assert len(rows(out.getvalue())) == 3


def test_a_training_only_fit_prints_each_row_when_the_training_epoch_ends():
    out = io.StringIO()
    seen = []
    snapshot = fp.CustomCallback(lambda learner: seen.append(out.getvalue().count("\n")),
                                 fp.EpochBegin, fp.TrainingPhase)
    learner = test_learner(snapshot, fp.Metrics(), fp.MetricsPrinter(file=out))
    learner.fit(2, data=(test_batches(2), None))
    assert seen == [0, 3]  # header, rule and the first row before the second epoch
    assert [r[0] for r in rows(out.getvalue())] == ["1", "2"]


def test_with_validation_every_other_epoch_the_rows_stay_whole():
    printer = fp.MetricsPrinter(file=io.StringIO())
    learner = test_learner(fp.Metrics(), printer)
    learner.fit(4, validate_every=fp.Every(epochs=2))
    losses = learner.cbstate.metricsepoch
    table = [line for line in printer.file.getvalue().splitlines() if line.lstrip()[:1].isdigit()]
    cells = [[c.strip() for c in line.split("│")] for line in table]
    # a round without validation is printed when the next begins, with its training loss only
    assert cells == [
        ["1", f"{losses[TRAIN]['loss'][0]:.4f}"],
        ["2", f"{losses[TRAIN]['loss'][1]:.4f}", f"{losses[VALID]['loss'][0]:.4f}"],
        ["3", f"{losses[TRAIN]['loss'][2]:.4f}"],
        ["4", f"{losses[TRAIN]['loss'][3]:.4f}", f"{losses[VALID]['loss'][1]:.4f}"],
    ]
