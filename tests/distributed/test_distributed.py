"""The distributed helpers and data sharding, in one process (no second rank needed)."""

from __future__ import annotations

from types import SimpleNamespace

import attrs
import pytest
import torch
import torch.distributed as dist
import torch.utils.data as tud
from torch.nn.parallel import DistributedDataParallel

import fluxpy as fp
from fluxpy.support import distributed
from fluxpy.support.joined import Joined
from fluxpy.support.sharding import UnpaddedDistributedSampler, shard
from fluxpy.testing import test_learner

TORCHRUN = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}


@pytest.fixture
def rank_one(monkeypatch):
    """This process looks like torchrun's rank 1 (no process group is initialised)."""
    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)


@attrs.define
class Lines(fp.RankZeroOnly, fp.Callback):
    lines: list = attrs.Factory(list)

    def init(self, learner) -> None:
        self.lines.append("init")


@fp.on.dispatch
def _lines_epoch_end(event: fp.EpochEnd, phase: fp.TrainingPhase, cb: Lines, learner):
    cb.lines.append("epoch")


def test_a_plain_process_is_rank_zero_of_one():
    assert (distributed.launched_by_torchrun(), distributed.is_distributed()) == (False, False)
    assert (distributed.rank(), distributed.world_size(), fp.is_rank_zero()) == (0, 1, True)


def test_torchrun_variables_give_the_rank_before_the_group_exists(rank_one):
    assert distributed.launched_by_torchrun()
    assert (distributed.rank(), distributed.local_rank(), distributed.world_size()) == (1, 1, 2)
    assert not fp.is_rank_zero()


def test_rank_zero_only_calls_the_function_on_rank_zero():
    @fp.rank_zero_only
    def answer(x):
        return x + 1

    assert answer(41) == 42
    assert answer.__name__ == "answer"


def test_rank_zero_only_skips_the_function_on_other_ranks(rank_one):
    calls = []
    assert fp.rank_zero_only(calls.append)(1) is None
    assert calls == []


def test_rank_zero_only_on_a_callback_class_says_to_subclass_rank_zero_only():
    with pytest.raises(TypeError, match=r"class Lines\(fp.RankZeroOnly, fp.Callback\)"):
        fp.rank_zero_only(Lines)


def test_a_rank_zero_only_callback_runs_on_rank_zero():
    cb = Lines()
    test_learner(cb, n_batches=2).fit(2)
    assert cb.lines == ["init", "epoch", "epoch"]


def test_a_rank_zero_only_callback_does_nothing_on_other_ranks(rank_one):
    cb = Lines()
    learner = test_learner(cb, n_batches=2, distributed=False)
    learner.fit(2)
    assert cb.lines == []
    assert "Lines" in fp.explain(learner)  # still in the graph, as on rank 0


def test_the_learner_is_not_distributed_in_a_plain_process():
    learner = test_learner(n_batches=2)
    assert learner.ddp is None
    assert isinstance(learner.model, fp.testing.CoeffModel)


def test_distributed_true_without_torchrun_says_how_to_launch():
    with pytest.raises(ValueError, match=r"not started by torchrun.*torchrun --nproc_per_node=N"):
        test_learner(distributed=True)


def test_init_distributed_without_torchrun_says_how_to_launch():
    with pytest.raises(RuntimeError, match="needs torchrun's environment"):
        fp.init_distributed()


def test_distributed_true_under_torchrun_with_one_process_wraps_the_model(world_of_one):
    learner = test_learner(distributed=True)
    assert isinstance(learner.model, DistributedDataParallel)
    assert learner.device == torch.device("cpu")
    assert dist.get_backend() == "gloo"
    learner.fit(5)
    assert abs(learner.model.module.coeff.item() - 3) < 0.1


def test_a_stop_under_ddp_ends_fit_with_the_reason_and_the_rank(world_of_one):
    learner = test_learner(fp.StopOnNaNLoss(), n_batches=4, distributed=True)
    learner.data.training[2] = (torch.full((8,), float("nan")), torch.zeros(8))
    result = learner.fit(2)
    assert result.stop_reason.startswith("StopOnNaNLoss: the TrainingPhase loss is nan")
    assert result.stop_reason.endswith("(rank 0)")
    assert torch.isfinite(learner.model.module.coeff).all()


def test_ddp_keeps_the_users_executor_and_stops_the_handlers_ask_for(world_of_one):
    executor = fp.SerialExecutor()
    learner = test_learner(fp.StopOnNaNLoss(), n_batches=4, distributed=True, executor=executor)
    learner.data.training[1] = (torch.full((8,), float("nan")), torch.zeros(8))
    result = learner.fit(2)
    assert learner.executor is executor
    assert result.stop_reason.endswith("(rank 0)")
    assert result.epochs == 0


def test_set_gradient_sync_leaves_a_plain_model_alone():
    model = torch.nn.Linear(2, 1)
    distributed.set_gradient_sync(model, False)
    assert not hasattr(model, "require_backward_grad_sync")


def test_collectives_do_nothing_in_one_process():
    distributed.barrier()
    assert distributed.all_reduce_sum(torch.tensor([2.0])).item() == 2.0
    assert distributed.all_gather_object("x") == ["x"]
    assert distributed.broadcast_float(2.75) == 2.75
    assert (distributed.any_rank(True), distributed.any_rank(False)) == (True, False)


def test_max_time_under_ddp_with_one_process_stops_on_its_own_clock(world_of_one, monkeypatch):
    from fluxpy.engine import budget

    ticks = iter(range(100))
    monkeypatch.setattr(budget, "clock", lambda: float(next(ticks)))  # 1 s per read
    learner = test_learner(fp.Recorder(), n_batches=4, distributed=True)
    result = learner.fit(max_time=2.5, validate_every=fp.Every(seconds=10))
    assert result == fp.FitResult(0, "max_time=2.5 s reached")
    assert learner.cbstate.history[fp.TrainingPhase()].steps == 3


# -- sharding ------------------------------------------------------------------------------


def loader(n: int, **kwargs) -> tud.DataLoader:
    return tud.DataLoader(tud.TensorDataset(torch.arange(n).float()), **kwargs)


def test_training_lists_take_every_world_size_th_batch_in_equal_shares():
    batches = list(range(7))
    assert [shard(batches, training=True, rank=r, world_size=3) for r in range(3)] == [
        [0, 3], [1, 4], [2, 5]]


def test_validation_lists_keep_every_batch():
    batches = list(range(7))
    assert [shard(batches, training=False, rank=r, world_size=3) for r in range(3)] == [
        [0, 3, 6], [1, 4], [2, 5]]


def test_a_list_with_fewer_batches_than_ranks_is_an_error():
    with pytest.raises(ValueError, match="list of 1 batches: too few for 2 ranks"):
        shard([0], training=False, rank=0, world_size=2)


def test_a_training_loader_gets_a_distributed_sampler_and_keeps_its_settings():
    def collate(items):
        return torch.stack([i[0] for i in items])

    original = loader(10, batch_size=3, shuffle=True, drop_last=True, collate_fn=collate)
    sharded = shard(original, training=True, rank=1, world_size=2, seed=7)
    sampler = sharded.sampler
    assert isinstance(sampler, tud.DistributedSampler)
    assert (sampler.num_replicas, sampler.rank, sampler.shuffle, sampler.seed) == (2, 1, True, 7)
    assert (sharded.batch_size, sharded.drop_last, sharded.collate_fn) == (3, True, collate)
    assert sharded.dataset is original.dataset


def test_a_training_sampler_shuffles_per_epoch_alike_on_all_ranks():
    shards = [shard(loader(8, shuffle=True), training=True, rank=r, world_size=2).sampler
              for r in (0, 1)]
    orders = []
    for epoch in (0, 1):
        for s in shards:
            s.set_epoch(epoch)
        orders.append([list(s) for s in shards])
        assert sorted(orders[-1][0] + orders[-1][1]) == list(range(8))
    assert orders[0] != orders[1]


def test_an_unshuffled_training_loader_stays_unshuffled():
    sharded = shard(loader(6), training=True, rank=0, world_size=2)
    assert list(sharded.sampler) == [0, 2, 4]


def test_a_validation_loader_sees_each_sample_once_without_padding():
    shards = [shard(loader(5, batch_size=2, shuffle=True), training=False, rank=r, world_size=2)
              for r in (0, 1)]
    assert [[b[0].tolist() for b in s] for s in shards] == [[[0.0, 2.0], [4.0]], [[1.0, 3.0]]]


def test_the_unpadded_sampler_splits_indices_by_stride():
    assert [list(UnpaddedDistributedSampler(7, 3, r)) for r in range(3)] == [
        [0, 3, 6], [1, 4], [2, 5]]
    assert [len(UnpaddedDistributedSampler(7, 3, r)) for r in range(3)] == [3, 2, 2]


def test_a_validation_set_too_small_for_a_batch_per_rank_is_an_error():
    with pytest.raises(ValueError, match=r"1 samples.*some rank would get no batch"):
        shard(loader(1), training=False, rank=0, world_size=2)


def test_a_loader_with_a_distributed_sampler_is_kept():
    data = tud.TensorDataset(torch.arange(4))
    original = tud.DataLoader(data, sampler=tud.DistributedSampler(data, 2, 0))
    assert shard(original, training=True, rank=0, world_size=2) is original


def test_an_iterable_dataset_is_kept_with_a_warning():
    class Stream(tud.IterableDataset):
        def __iter__(self):
            return iter(range(4))

    original = tud.DataLoader(Stream())
    with pytest.warns(UserWarning, match="cannot shard DataLoader.*IterableDataset"):
        assert shard(original, training=True, rank=0, world_size=2) is original


def test_joined_data_gives_a_step_without_a_forward_pass_one_and_counts_the_others():
    model = torch.nn.Linear(2, 1)
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].tolist()))
    learner = SimpleNamespace(model=model, batch=SimpleNamespace())
    data = [torch.full((1, 2), float(k)) for k in range(3)]
    for k, xs in enumerate(Joined(data, learner)):  # one process: no other rank to wait for
        learner.batch = SimpleNamespace(xs=xs)
        if k != 1:  # step 1 is cancelled before its forward pass
            model(xs)
    assert calls == [[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 2.0]]]  # step 1's made by Joined
    assert len(model._forward_pre_hooks) == 1  # its counting hook is gone, the test's stays
