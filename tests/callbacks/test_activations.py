"""ActivationStats: per-layer statistics and histograms of training activations."""

import re

import pytest
import torch
from torch import nn

import fluxpy as fp

PNG = b"\x89PNG\r\n\x1a\n"


def mlp_learner(*callbacks, n_batches=4):
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 2, generator=generator), torch.randn(16, 1, generator=generator))
            for _ in range(n_batches)]
    return fp.Learner(model, nn.functional.mse_loss, data=(data, data[:2]),
                      optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                      callbacks=callbacks, use_default_callbacks=False, device="cpu")


def capture(module, outputs):
    """Our own hook: keeps every training-mode output of `module`."""
    def hook(mod, inputs, output):
        if mod.training:
            outputs.append(output.detach().clone())
    return module.register_forward_hook(hook)


def test_default_layers_are_the_leaf_modules_with_parameters():
    stats = fp.ActivationStats()
    mlp_learner(stats).fit(1)
    assert stats.layers == ("0", "2")


def test_statistics_match_those_computed_from_the_activations():
    stats = fp.ActivationStats()
    learner = mlp_learner(stats)
    first, second = [], []
    capture(learner.model[0], first)
    capture(learner.model[2], second)
    learner.fit(2)
    assert stats.steps == list(range(8))
    for j, outputs in enumerate((first, second)):
        assert torch.allclose(stats.mean[:, j], torch.stack([a.mean() for a in outputs]))
        assert torch.allclose(stats.std[:, j], torch.stack([a.std() for a in outputs]))
        assert torch.equal(stats.near_zero[:, j],
                           torch.stack([(a.abs() < 1e-3).float().mean() for a in outputs]))
        assert torch.equal(stats.histograms[j],
                           torch.stack([torch.histc(a, 40, -10.0, 10.0) for a in outputs]))


def test_hooks_named_modules_with_their_own_eps_and_histogram_range():
    stats = fp.ActivationStats(modules=["1"], eps=0.05, hist_range=(0.0, 5.0), bins=10)
    learner = mlp_learner(stats)
    outputs = []
    capture(learner.model[1], outputs)
    learner.fit(1)
    assert stats.layers == ("1",)
    assert torch.equal(stats.near_zero[:, 0],
                       torch.stack([(a < 0.05).float().mean() for a in outputs]))
    assert torch.equal(stats.histograms[0],
                       torch.stack([torch.histc(a, 10, 0.0, 5.0) for a in outputs]))


def test_every_records_one_step_in_every():
    stats = fp.ActivationStats(every=3)
    learner = mlp_learner(stats)
    outputs = []
    capture(learner.model[0], outputs)
    learner.fit(2)
    assert stats.steps == [0, 3, 6]
    assert torch.allclose(stats.mean[:, 0], torch.stack([outputs[s].mean() for s in (0, 3, 6)]))


def test_every_takes_an_every_of_steps():
    stats = fp.ActivationStats(every=fp.Every(steps=3))
    assert stats.every == fp.ActivationStats(every=3).every == fp.Every(steps=3)
    mlp_learner(stats).fit(2)
    assert stats.steps == [0, 3, 6]


def test_every_seconds_records_the_first_step_after_each_period():
    stats = fp.ActivationStats(every=fp.Every(seconds=1))
    times = iter((0.0, 0.4, 1.1, 1.5, 2.2, 2.3, 2.4, 3.3))  # read as each training step begins
    stats.clock = lambda: next(times)
    mlp_learner(stats).fit(2)
    assert stats.steps == [0, 2, 4, 7]


@pytest.mark.parametrize(("every", "message"), [
    (fp.Every(epochs=1), "ActivationStats(every=fp.Every(epochs=1)): ActivationStats records a "
                         "step from its beginning, when it is not known to end an epoch; use "
                         "fp.Every(steps=100) or fp.Every(seconds=60)"),
    (0, "ActivationStats(every=0): every is an fp.Every (fp.Every(steps=100) or "
        "fp.Every(seconds=60)) or a whole number of steps >= 1"),
    ("3", "ActivationStats(every='3'): every is an fp.Every"),
    (2.5, "ActivationStats(every=2.5): every is an fp.Every"),
])
def test_a_wrong_every_is_an_error_naming_the_fix(every, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fp.ActivationStats(every=every)


def test_modules_may_be_given_as_objects():
    model_stats = fp.ActivationStats()
    learner = mlp_learner(model_stats)
    chosen = fp.ActivationStats(modules=[learner.model[2]])
    learner.add_callback(chosen)
    learner.fit(1)
    assert chosen.layers == ("2",)
    assert torch.equal(chosen.mean[:, 0], model_stats.mean[:, 1])


def test_records_only_training_steps_and_accumulates_over_fits():
    stats = fp.ActivationStats()
    learner = mlp_learner(stats)
    learner.fit(1)
    learner.fit(1)
    assert stats.steps == list(range(8))
    assert stats.mean.shape == (8, 2)
    assert stats.histograms.shape == (2, 8, 40)


def test_hooks_are_removed_when_fit_ends():
    learner = mlp_learner(fp.ActivationStats())
    learner.fit(1)
    assert all(not m._forward_hooks for m in learner.model.modules())


def test_unknown_module_name_lists_the_names():
    learner = mlp_learner(fp.ActivationStats(modules=["fc1"]))
    with pytest.raises(ValueError, match=r"no module named 'fc1'; names: \['0', '1', '2'\]"):
        learner.fit(1)


def test_declares_read_access_to_the_model():
    assert fp.stateaccess(fp.ActivationStats()) == fp.Access(model=fp.Read())


def test_plots_render_pngs(tmp_path):
    stats = fp.ActivationStats()
    mlp_learner(stats).fit(2)
    lines, image = tmp_path / "stats.png", tmp_path / "hist.png"
    fig = stats.plot(lines)
    stats.plot_histograms(image)
    for path in (lines, image):
        assert path.read_bytes()[:8] == PNG
        assert path.stat().st_size > 5000
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["0", "2"]
