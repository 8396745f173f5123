"""The built-in callbacks' declarations under the graph's rules: they build together, in an
order where each reader sees the value it needs (after the writes it depends on, before the
ones it must not see)."""

import itertools

import pytest
import torch

import fluxpy as fp
from fluxpy.learner import flatten_callbacks
from fluxpy.testing import test_learner


def defaults():
    return [fp.Metrics(), fp.Recorder(), fp.ProgressPrinter(), fp.MetricsPrinter(),
            fp.StopOnNaNLoss()]


def features(folder):
    """One of each feature callback (fresh instances)."""
    return {
        "ToDevice": fp.ToDevice("cpu"),
        "EarlyStopping": fp.EarlyStopping(2),
        "Checkpointer": fp.Checkpointer(folder),
        "Scheduler": fp.Scheduler({fp.LearningRate: fp.one_cycle(10, 0.1)}),
        "Scheduler (momentum)": fp.Scheduler({fp.Momentum: fp.one_cycle(10, 0.9)}),
        "GradientClipping": fp.GradientClipping(1.0),
        "GradientAccumulation": fp.GradientAccumulation(2),
        "MixedPrecision": fp.MixedPrecision(torch.bfloat16),
        "MixUp": fp.MixUp(),
        "ActivationStats": fp.ActivationStats(),
        "SanityCheck": fp.SanityCheck(),
        "LogMetrics": fp.LogMetrics(fp.CSVBackend(folder)),
        "LogHyperParams": fp.LogHyperParams(fp.CSVBackend(folder)),
        "LogHistograms": fp.LogHistograms(fp.CSVBackend(folder)),
        "throttled LogMetrics": fp.throttle(fp.LogMetrics(fp.CSVBackend(folder)), fp.EpochEnd,
                                            every=2),
    }


def build(callbacks):
    flat, _ = flatten_callbacks(callbacks)
    return fp.build_graph(flat)


NAMES = list(features("unused"))


@pytest.mark.parametrize("name", NAMES)
def test_each_feature_callback_builds_with_the_defaults(name, tmp_path):
    build([features(tmp_path)[name], *defaults()])


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(NAMES, 2)))
def test_every_two_feature_callbacks_build_with_the_defaults_in_either_order(first, second,
                                                                             tmp_path):
    for pair in ((first, second), (second, first)):
        made = features(tmp_path)
        build([made[pair[0]], made[pair[1]], *defaults()])


def test_all_feature_callbacks_build_together_with_the_defaults(tmp_path):
    graph = build([*features(tmp_path).values(), *defaults()])
    names = [type(cb).__name__ for cb in graph.ordered()]
    assert names[-1] == "Checkpointer"  # every other callback's state is final when it saves
    for before, after in [("ToDevice", "MixUp"), ("MixUp", "MixedPrecision"),
                          ("StopOnNaNLoss", "MixedPrecision"),
                          ("MixedPrecision", "GradientClipping"),
                          ("GradientClipping", "GradientAccumulation"),
                          ("Metrics", "EarlyStopping")]:
        assert names.index(before) < names.index(after), f"{before} must run before {after}"


@pytest.mark.parametrize("reverse", [False, True])
def test_stop_on_nan_loss_checks_the_loss_before_mixed_precision_scales_it(reverse):
    cbs = [fp.StopOnNaNLoss(), fp.MixedPrecision(torch.float16)]
    graph = fp.build_graph(cbs[::-1] if reverse else cbs)
    assert [type(cb).__name__ for cb in graph.ordered()] == ["StopOnNaNLoss", "MixedPrecision"]
    assert [str(r) for e in graph.edges for r in e.reasons] == [
        "RunFirst(StopOnNaNLoss) declared by resolveconflict(StopOnNaNLoss, MixedPrecision) "
        "for batch.loss",
    ]


def test_a_finite_loss_that_float16_scaling_overflows_does_not_stop_training():
    # The loss is ~1e37, finite in float32; scaled by 65536 for the backward it is inf.
    learner = test_learner(fp.StopOnNaNLoss(), fp.MixedPrecision(torch.float16), coeff=1e35,
                           n_batches=2)
    result = learner.fit(1)
    assert result.stop_reason is None
    assert result.epochs == 1


def test_mixup_declares_the_generator_and_still_builds_with_every_feature(tmp_path):
    assert fp.stateaccess(fp.MixUp()).permission("rng") == fp.Write()
    graph = build([*features(tmp_path).values(), *defaults()])
    rng_writers = [type(cb).__name__ for cb, a in zip(graph.callbacks, graph.access)
                   if ("rng",) in a.writes()]
    assert rng_writers == ["MixUp"]


@pytest.mark.parametrize("callback", [fp.Recorder(), fp.Metrics()], ids=type)
def test_a_builtin_producer_writes_each_key_it_declares_it_produces(callback):
    keys = fp.produces(type(callback))
    assert keys
    assert all(("cbstate", key) in fp.stateaccess(callback).writes() for key in keys)
