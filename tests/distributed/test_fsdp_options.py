"""`fp.DDP` / `fp.FSDP` options and the mistakes the learner refuses, in one process."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import fluxpy as fp


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def test_fsdp_without_a_process_group_says_how_to_launch():
    with pytest.raises(ValueError, match=r"distributed=FSDP\(.*not started by torchrun.*"
                                         r"torchrun --nproc_per_node=N"):
        fp.Learner(torch.nn.Linear(3, 1), F.mse_loss, optimizer=sgd, distributed=fp.FSDP())


def test_fsdp_with_an_optimizer_instance_asks_for_a_factory():
    model = torch.nn.Linear(3, 1)
    with pytest.raises(TypeError, match=r"needs an optimizer factory, not an optimizer instance "
                                        r"\(SGD\).*optimizer=lambda params: "
                                        r"torch.optim.SGD\(params, lr=...\)"):
        fp.Learner(model, F.mse_loss, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                   distributed=fp.FSDP())


def test_fsdp_of_a_model_without_parameters_is_refused(world_of_one):
    with pytest.raises(ValueError, match=r"the model ReLU has no trainable parameters to shard"):
        fp.Learner(torch.nn.ReLU(), F.mse_loss, optimizer=sgd, distributed=fp.FSDP())


def test_fsdp_shard_takes_module_classes_or_a_function():
    with pytest.raises(TypeError, match=r"FSDP\(shard='Linear'\): give module classes"):
        fp.FSDP(shard="Linear")
    with pytest.raises(TypeError, match=r"FSDP\(shard=\('Linear',\)\): give module classes"):
        fp.FSDP(shard=["Linear"])
    assert fp.FSDP(shard=lambda m: isinstance(m, torch.nn.Linear)).picks(torch.nn.Linear(1, 1))


def test_fsdp_shard_takes_a_list_of_classes_as_the_tuple():
    assert fp.FSDP(shard=[torch.nn.Linear, torch.nn.Conv1d]) == fp.FSDP(
        shard=(torch.nn.Linear, torch.nn.Conv1d))
    assert fp.FSDP(shard=[torch.nn.Linear]).picks(torch.nn.Linear(1, 1))
    assert not fp.FSDP(shard=[torch.nn.Linear]).picks(torch.nn.ReLU())


def test_fsdp_shards_the_chosen_submodules_then_the_root(world_of_one):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    learner = fp.Learner(model, F.mse_loss, optimizer=sgd, use_default_callbacks=False,
                         distributed=fp.FSDP(shard=(torch.nn.Linear,)))
    assert learner.ddp.sharded == ["0", "2"]
    assert all(isinstance(p, dist.tensor.DTensor) for p in learner.model.parameters())
    assert {id(p) for g in learner.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in learner.model.parameters()}  # built from the shards


def test_ddp_options_reach_distributed_data_parallel(world_of_one):
    learner = fp.Learner(torch.nn.Linear(3, 1), F.mse_loss, use_default_callbacks=False,
                         distributed=fp.DDP(find_unused_parameters=True))
    assert learner.model.find_unused_parameters is True
    assert "DDP over 1 ranks" in str(fp.explain(learner))


def test_a_sharded_checkpoint_in_one_process_round_trips(world_of_one, tmp_path):
    data = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(2)]
    learner = fp.Learner(torch.nn.Linear(3, 1), F.mse_loss, data=(data, None), optimizer=sgd,
                         use_default_callbacks=False, distributed=fp.FSDP())
    learner.fit(1)
    fp.save_checkpoint(learner, tmp_path / "ck.pt")
    fp.save_checkpoint(learner, tmp_path / "ck.pt")  # replaces the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]
    weights = [p.full_tensor().clone() for p in learner.model.parameters()]
    with torch.no_grad():
        for p in learner.model.parameters():
            p.zero_()
    fp.load_checkpoint(learner, tmp_path / "ck.pt")
    assert all(torch.equal(a, p.full_tensor()) for a, p in zip(weights, learner.model.parameters()))


def test_mixed_precision_under_fsdp_trains_as_in_one_process(world_of_one):
    data = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(3)]

    def trained(distributed) -> list[torch.Tensor]:
        torch.manual_seed(0)
        learner = fp.Learner(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)),
                             F.mse_loss, data=(data, None), optimizer=sgd,
                             use_default_callbacks=False, distributed=distributed,
                             callbacks=[fp.MixedPrecision(torch.bfloat16)])
        learner.fit(2)
        return [p.full_tensor() if isinstance(p, dist.tensor.DTensor) else p.detach()
                for p in learner.model.parameters()]

    sharded = trained(fp.FSDP(shard=(torch.nn.Linear,)))
    plain = trained(False)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(sharded, plain))
    torch.manual_seed(0)
    untrained = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    assert not torch.allclose(sharded[0], untrained[0].weight.detach())
