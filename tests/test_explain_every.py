"""explain shows when periodic work runs: each callback whose `every` is an fp.Every."""

import fluxpy as fp
from fluxpy.testing import test_learner


class Snapshot(fp.Callback):
    def __init__(self, every) -> None:
        self.every = every


def test_explain_shows_the_every_of_periodic_callbacks():
    learner = test_learner(fp.Recorder(), Snapshot(fp.Every(steps=500)))
    text = fp.explain(learner)
    assert "Periodic work (when it runs):\n  Snapshot  every 500 steps\n" in text


def test_explain_has_no_periodic_section_without_periodic_callbacks():
    learner = test_learner(fp.Recorder(), Snapshot(3))  # an int `every` is not an fp.Every
    assert "Periodic work" not in fp.explain(learner)
