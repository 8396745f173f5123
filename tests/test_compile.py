"""Learner(compile=True): the model compiled once with torch.compile (inductor, for real: a C++
compiler is on this machine), trained like the eager one, checkpoints in the model's own keys
that load into compiled and plain learners alike, and a clear error where it cannot run."""

import shutil

import pytest
import torch

import fluxpy as fp
from fluxpy.support.checkpoint import checkpoint_state, write_checkpoint
from fluxpy.support.compiling import compile_problem

assert shutil.which("g++") or shutil.which("clang++"), "inductor on the CPU needs a C++ compiler"


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(1, 8)
        self.out = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def data():
    """4 training and 2 validation batches of 8 (x, 3x) with x in [0, 1)."""
    xs = torch.rand(48, 1, generator=torch.Generator().manual_seed(0))
    batches = [(xs[i:i + 8], 3 * xs[i:i + 8]) for i in range(0, 48, 8)]
    return batches[:4], batches[4:]


def learner(compile=False, seed=0, **kwargs):
    torch.manual_seed(seed)
    return fp.Learner(Net(), torch.nn.functional.mse_loss, data=data(), compile=compile,
                      optimizer=lambda ps: torch.optim.SGD(ps, lr=0.01),
                      callbacks=[fp.Recorder(), fp.Metrics()], use_default_callbacks=False,
                      **kwargs)


def weights(learner):
    return {k: v.clone() for k, v in fp.unwrap_model(learner.model).state_dict().items()}


@pytest.fixture(scope="module")
def trained():
    """A compiled learner after two epochs (the one compilation of this module), and the eager
    learner trained alike."""
    compiled, eager = learner(compile=True), learner()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled.fit(2)
    # inductor compiled the training and the validation forward, without a graph break
    assert counters["stats"]["unique_graphs"] == 2
    assert not counters["graph_break"]
    eager.fit(2)
    return compiled, eager


def test_the_compiled_model_trains_as_the_eager_one(trained):
    compiled, eager = trained
    assert isinstance(compiled.model, torch._dynamo.eval_frame.OptimizedModule)
    assert type(fp.unwrap_model(compiled.model)) is Net
    for name, value in weights(eager).items():
        torch.testing.assert_close(weights(compiled)[name], value, rtol=1e-4, atol=1e-5)
    losses = compiled.cbstate.metricsepoch
    for phase in (fp.TrainingPhase(), fp.ValidationPhase()):
        torch.testing.assert_close(torch.tensor(losses[phase]["loss"]),
                                   torch.tensor(eager.cbstate.metricsepoch[phase]["loss"]),
                                   rtol=1e-4, atol=1e-5)


def test_the_optimizer_updates_the_compiled_models_parameters(trained):
    compiled, _ = trained
    optimized = [p for group in compiled.optimizer.param_groups for p in group["params"]]
    assert [id(p) for p in optimized] == [id(p) for p in compiled.model.parameters()]
    assert [id(p) for p in optimized] == [id(p) for p in fp.unwrap_model(compiled.model)
                                          .parameters()]


def test_compiled_once_not_per_fit(trained):
    compiled, _ = trained
    model = compiled.model
    compiled.fit(1)
    assert compiled.model is model


def test_a_compiled_learners_checkpoint_holds_the_models_own_keys(trained, tmp_path):
    compiled, _ = trained
    fp.save_checkpoint(compiled, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)["model"]
    assert list(saved) == ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]


def test_a_compiled_learners_checkpoint_loads_into_a_plain_one(trained, tmp_path):
    compiled, _ = trained
    fp.save_checkpoint(compiled, tmp_path / "c.pt")
    plain = learner(seed=1)
    fp.load_checkpoint(plain, tmp_path / "c.pt")
    for name, value in weights(compiled).items():
        assert torch.equal(weights(plain)[name], value)


def test_a_plain_learners_checkpoint_loads_into_a_compiled_one(trained, tmp_path):
    _, eager = trained
    fp.save_checkpoint(eager, tmp_path / "e.pt")
    compiled = learner(compile=True, seed=1)
    fp.load_checkpoint(compiled, tmp_path / "e.pt")
    for name, value in weights(eager).items():
        assert torch.equal(weights(compiled)[name], value)
    assert compiled.cbstate.history[fp.TrainingPhase()].epochs == 2


def test_a_checkpoint_with_compiled_keys_from_earlier_versions_loads_both_ways(trained, tmp_path):
    # Earlier versions saved torch.compile(model).state_dict(): every key under _orig_mod.
    compiled, _ = trained
    state = checkpoint_state(compiled)
    state["model"] = {f"_orig_mod.{k}": v for k, v in state["model"].items()}
    write_checkpoint(state, tmp_path / "old.pt")
    for target in (learner(seed=1), learner(compile=True, seed=1)):
        fp.load_checkpoint(target, tmp_path / "old.pt")
        for name, value in weights(compiled).items():
            assert torch.equal(weights(target)[name], value)


def test_options_go_to_torch_compile():
    graphs = []

    def backend(graph_module, example_inputs):  # a torch.compile backend: runs the graph as is
        graphs.append(graph_module)
        return graph_module.forward

    compiled = learner(compile={"backend": backend, "dynamic": False})
    compiled.fit(1)
    assert graphs  # the training forward went through our backend
    assert compiled.cbstate.history[fp.TrainingPhase()].steps == 4


def test_compiling_a_compiled_model_is_refused():
    with pytest.raises(ValueError, match=r"the model is compiled already .* pass the model "
                                         r"itself with compile=True"):
        fp.Learner(torch.compile(Net()), torch.nn.functional.mse_loss, compile=True)


@pytest.mark.parametrize("value", ["yes", None, 1])
def test_compile_takes_true_false_or_options(value):
    with pytest.raises(TypeError, match=r"compile must be True, False or a dict of "
                                        r"torch\.compile options"):
        fp.Learner(Net(), torch.nn.functional.mse_loss, compile=value)


def test_without_a_cpp_compiler_compile_is_a_clear_error_and_eager_still_works():
    with torch._inductor.config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
        assert "found none" in compile_problem(torch.device("cpu"), "inductor")
        with pytest.raises(RuntimeError, match=r"Learner\(compile=True\): torch.compile cannot "
                                               r"run here: inductor needs a C\+\+ compiler .*"
                                               r"install g\+\+ or clang\+\+.*compile=False"):
            learner(compile=True)
        # backends that compile no C++ need none; and training without compile goes on
        assert compile_problem(torch.device("cpu"), "eager") is None
        assert learner().fit(1).epochs == 1


def test_compile_can_run_here():
    assert compile_problem(torch.device("cpu"), "inductor") is None


def test_a_plain_model_is_its_own_plain_model():
    net = Net()
    assert fp.unwrap_model(net) is net
    assert fp.unwrap_model(torch.compile(net)) is net


@pytest.fixture
def one_rank_group():
    """A real gloo process group of one rank, in this process (an in-memory store)."""
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0,
                                         world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_unwrap_model_sees_through_ddp_and_compile_in_any_order(one_rank_group):
    net = Net()
    ddp = torch.nn.parallel.DistributedDataParallel
    assert fp.unwrap_model(ddp(torch.compile(net))) is net
    assert fp.unwrap_model(torch.compile(ddp(net))) is net


def test_a_fully_sharded_model_is_its_own_plain_model(one_rank_group):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    net = Net()
    fully_shard(net, mesh=init_device_mesh("cpu", (1,)))
    assert isinstance(net, FSDPModule)  # changed in place, not wrapped
    assert fp.unwrap_model(net) is net
    assert list(fp.unwrap_model(net).state_dict()) == list(Net().state_dict())


def test_under_ddp_the_compiled_model_is_what_ddp_wraps(one_rank_group, tmp_path):
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = learner(compile={"backend": backend}, distributed=True)
    assert isinstance(compiled.model, torch.nn.parallel.DistributedDataParallel)
    assert isinstance(compiled.model.module, torch._dynamo.eval_frame.OptimizedModule)
    compiled.fit(1)
    assert graphs
    fp.save_checkpoint(compiled, tmp_path / "ddp.pt")
    assert list(torch.load(tmp_path / "ddp.pt", weights_only=True)["model"]) == list(
        Net().state_dict())


class HistogramNames(fp.LogBackend):
    """A logging backend that keeps the names of the histograms it is given."""

    def __init__(self):
        self.names = set()

    def log_scalar(self, name, value, *, step, phase, axis):
        pass

    def log_histogram(self, name, values, *, step, phase):
        self.names.add(name)


def run_graph(graph_module, example_inputs):
    """A torch.compile backend that runs dynamo's graph as it is (no C++ to compile)."""
    return graph_module.forward


def test_callbacks_name_the_models_own_layers_and_parameters_when_it_is_compiled():
    torch.manual_seed(0)
    stats, names = fp.ActivationStats(), HistogramNames()
    compiled = fp.Learner(Net(), torch.nn.functional.mse_loss, data=data(),
                          callbacks=[stats, fp.Recorder(), fp.LogHistograms(names)],
                          use_default_callbacks=False, compile={"backend": run_graph})
    compiled.fit(1)
    assert stats.layers == ("hidden", "out")
    assert names.names == {"params/hidden.weight", "params/hidden.bias", "params/out.weight",
                           "params/out.bias"}
    hidden = []
    fp.unwrap_model(compiled.model).hidden.register_forward_hook(
        lambda module, inputs, output: hidden.append(output.detach()) if module.training
        else None)
    compiled.fit(1)
    assert torch.allclose(stats.mean[-4:, 0], torch.stack([a.mean() for a in hidden]))


class DtypeNet(Net):
    """`Net` whose output also says the dtype its hidden layer computed in."""

    def forward(self, x):
        hidden = self.hidden(x)
        return self.out(torch.tanh(hidden)).float(), hidden.dtype


def test_mixed_precision_applies_inside_the_compiled_forward():
    dtypes = []
    seen = fp.CustomCallback(lambda learner: dtypes.append(learner.batch.preds[1]),
                             fp.LossBegin, fp.TrainingPhase,
                             access=fp.Access(batch=fp.Access(preds=fp.Read())))
    compiled = fp.Learner(DtypeNet(), lambda preds, ys: torch.nn.functional.mse_loss(preds[0], ys),
                          data=data(), callbacks=[fp.MixedPrecision(torch.bfloat16), seen],
                          use_default_callbacks=False, compile={"backend": run_graph})
    compiled.fit(1)
    assert dtypes == [torch.bfloat16] * 4
