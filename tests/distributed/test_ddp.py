"""DDP with two CPU processes (gloo), launched by torchrun: what each rank saw and wrote.

The two processes are started once for the module (`ddp_worker.py` runs every scenario in
turn); each test reads the files one scenario left and asserts one behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from launch import finish, load_worker, torchrun, two_ranks
from mlflow.tracking import MlflowClient

import fluxpy as fp

WORKER = Path(__file__).with_name("ddp_worker.py")
SCENARIOS = ("train", "stop", "nan", "early", "accumulate", "resume", "midresume", "midaccum",
             "buffers", "predict", "threaded",
             "load_single",
             "limits", "timed", "tracked")
TIMEOUT = 120

worker = load_worker(WORKER)


def _launch(out: Path) -> None:
    # The ranks run in `out`: what they write relative to their working directory (MLflow's
    # SQLite store puts artifacts under ./mlruns) stays in the test's temporary folder.
    proc = torchrun(*two_ranks(WORKER, str(out), *SCENARIOS), cwd=out)
    (output,) = finish([proc], TIMEOUT)
    assert proc.returncode == 0, output[-6000:]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    single = fp.Learner(torch.nn.Linear(3, 1), F.mse_loss, use_default_callbacks=False)
    fp.save_checkpoint(single, folder / "single.pt")
    (folder / "single.json").write_text(json.dumps(worker.weights(single)))
    _launch(folder)
    return folder


def ranks(out: Path, scenario: str) -> list[dict]:
    return [json.loads((out / f"{scenario}-rank{r}.json").read_text()) for r in (0, 1)]


def linear(weights: list[float]) -> torch.nn.Linear:
    model = torch.nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(weights[:3]).reshape(1, 3))
        model.bias.copy_(torch.tensor(weights[3:]))
    return model


def test_the_learner_wraps_the_model_in_ddp_on_the_cpu(out):
    for r in ranks(out, "train"):
        assert (r["model"], r["device"]) == ("DistributedDataParallel", "cpu")


def test_each_rank_takes_half_the_training_steps(out):
    # 32 samples in batches of 4: 8 steps per epoch in one process, 4 on each of 2 ranks.
    for r in ranks(out, "train"):
        assert r["train_len"] == 4
        assert r["history"]["TrainingPhase"] == {"epochs": 3, "steps": 3 * 4}


def test_ranks_end_with_identical_weights(out):
    r0, r1 = ranks(out, "train")
    assert r0["weights"] == r1["weights"]


def test_the_validation_loss_is_the_loss_of_the_whole_validation_set(out):
    # 13 validation samples: 7 on rank 0 and 6 on rank 1, none repeated.
    r0, r1 = ranks(out, "train")
    xs, ys = torch.tensor(r0["valid_xs"]), torch.tensor(r0["valid_ys"])
    with torch.no_grad():
        full = F.mse_loss(linear(r0["weights"])(xs), ys).item()
    assert r0["valid_loss"][-1] == pytest.approx(full, rel=1e-6)
    assert r1["valid_loss"] == r0["valid_loss"]


def test_training_shuffles_differently_each_epoch_and_ranks_split_the_data(out):
    r0, r1 = ranks(out, "train")
    index = {tuple(round(v, 5) for v in row): i for i, row in enumerate(r0["train_xs"])}

    def seen(rank: dict, epoch: int) -> list[int]:
        return [index[tuple(round(v, 5) for v in row)] for row in rank["seen"][epoch]]

    for epoch in range(3):
        assert sorted(seen(r0, epoch) + seen(r1, epoch)) == list(range(32))
    assert seen(r0, 0) != seen(r0, 1)


def test_rank_zero_only_callbacks_and_printing_happen_once(out):
    assert (out / "rankzero.txt").read_text() == "rank 0\n" * 3
    assert (out / "printer-rank1.txt").read_text() == ""
    rows = (out / "printer-rank0.txt").read_text().splitlines()
    assert [row.split("│")[0].strip() for row in rows[2:]] == ["1", "2", "3"]


def test_one_set_of_checkpoint_files_is_written(out):
    assert sorted(p.name for p in (out / "train-ckpt").iterdir()) == [
        "epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"]


@pytest.mark.filterwarnings("ignore:.*holds state for Checkpointer")
def test_a_checkpoint_written_under_ddp_loads_in_one_process(out):
    learner = fp.Learner(torch.nn.Linear(3, 1), F.mse_loss, optimizer=worker.sgd(0.05))
    fp.load_checkpoint(learner, out / "train-ckpt")
    assert worker.weights(learner) == ranks(out, "train")[0]["weights"]
    assert learner.cbstate.history[fp.TrainingPhase()].epochs == 3


def test_a_checkpoint_written_in_one_process_loads_under_ddp(out):
    saved = json.loads((out / "single.json").read_text())
    assert [r["weights"] for r in ranks(out, "load_single")] == [saved, saved]


def test_a_stop_raised_on_one_rank_stops_both_at_the_same_update(out):
    # Rank 1 stops at StepEnd of step 3: both ranks skip step 4's update and end fit.
    for r in ranks(out, "stop"):
        assert r["updates"] == 3
        assert r["result"] == [0, "rank 1 asked to stop (rank 1)"]
    r0, r1 = ranks(out, "stop")
    assert r0["weights"] == r1["weights"]


def test_a_list_of_batches_is_split_into_equal_shares(out):
    # 9 batches: every other one per rank, the ninth dropped so both take 4 steps.
    assert [r["train_len"] for r in ranks(out, "stop")] == [4, 4]


def test_a_nan_loss_on_one_rank_stops_both_before_its_update(out):
    r0, r1 = ranks(out, "nan")
    assert r0["weights"] == r1["weights"]
    assert all(torch.isfinite(torch.tensor(r0["weights"])))
    assert r0["weights"] != r0["first"]  # the first step's update happened, the second's not
    for r in (r0, r1):
        assert r["history"]["TrainingPhase"]["steps"] == 1
        assert r["result"][1].startswith("StopOnNaNLoss: the TrainingPhase loss is nan")
        assert r["result"][1].endswith("(rank 1)")


def test_early_stopping_stops_both_ranks_at_the_same_epoch(out):
    r0, r1 = ranks(out, "early")
    assert r0["result"][0] == r1["result"][0] == 1
    assert r0["result"][1].startswith("EarlyStopping: valid loss did not improve")
    assert r0["valid_loss"] == r1["valid_loss"]
    assert r0["history"] == r1["history"]


def test_gradient_accumulation_all_reduces_only_on_updating_steps(out):
    # 5 steps per rank, accumulating 2: steps 2 and 4 communicate, 1, 3 and 5 do not (the
    # pending gradients of step 5 are averaged at epoch end, outside DDP's hooks).
    assert [r["allreduces"] for r in ranks(out, "accumulate")] == [2, 2]


def test_gradient_accumulation_under_ddp_matches_one_process_accumulating_twice_as_many(out):
    r0, r1 = ranks(out, "accumulate")
    assert r0["weights"] == r1["weights"]
    learner = fp.Learner(worker.model(), F.mse_loss, data=(worker.batches(10, seed=8), None),
                         optimizer=worker.sgd(0.05), callbacks=[fp.GradientAccumulation(4)],
                         use_default_callbacks=False)
    assert worker.weights(learner) == r0["start"]
    learner.fit(1)
    assert worker.weights(learner) == pytest.approx(r0["weights"], rel=1e-5)


def test_a_resumed_ddp_run_matches_an_uninterrupted_one(out):
    for r in ranks(out, "resume"):
        assert r["resumed"] == r["whole"]
        assert r["history"]["TrainingPhase"] == {"epochs": 3, "steps": 9}


def test_a_ddp_run_stopped_mid_epoch_resumes_each_ranks_shard_at_the_step(out):
    r0, r1 = ranks(out, "midresume")
    for r in (r0, r1):
        assert (r["stop"], r["loaded"]) == ("max_steps=5 reached", "epoch-0001-step-000002.pt")
        assert r["resumed"] == r["whole"]
        assert r["history"]["TrainingPhase"] == {"epochs": 3, "steps": 9}
        # 5 steps of 4 inputs, then the rest: this rank's own shard, nothing read twice
        assert r["first_seen"][:20] + r["resumed_seen"] == r["whole_seen"]
    assert r0["whole_seen"] != r1["whole_seen"]


def test_a_mid_epoch_resume_restores_each_ranks_running_metrics_and_pending_gradients(out):
    # Stopped at the first step of the second epoch, inside a GradientAccumulation(2) group:
    # each rank resumes its own running Metrics means and its own unsynchronised gradients,
    # so the reduced epoch losses and the weights are the uninterrupted run's, exactly.
    r0, r1 = ranks(out, "midaccum")
    for r in (r0, r1):
        assert (r["stop"], r["loaded"]) == ("max_steps=4 reached", "epoch-0001-step-000001.pt")
        assert r["resumed_losses"] == r["whole_losses"]
        assert len(r["whole_losses"]["TrainingPhase"]) == 3
        assert r["resumed"] == r["whole"]
    assert r0["resumed"] == r1["resumed"]


def test_a_mid_epoch_ddp_checkpoint_refuses_another_world_size(out):
    learner = fp.Learner(torch.nn.Linear(3, 1), F.mse_loss, use_default_callbacks=False)
    file = out / "accparts" / "epoch-0001-step-000001.pt"
    with pytest.raises(fp.CheckpointError, match=r"by 2 ranks, and this run has 1 rank: ") as info:
        fp.load_checkpoint(learner, file)
    assert info.value.part == "ranks"


def test_buffers_are_rank_zeros_on_every_rank_after_validation(out):
    # BatchNorm's running statistics: DDP broadcasts rank 0's at the first validation forward,
    # which every rank makes (each gets at least one validation batch).
    r0, r1 = ranks(out, "buffers")
    assert r0["running_mean"] == r1["running_mean"]
    assert r0["valid_loss"] == r1["valid_loss"]


def test_max_steps_and_validation_every_n_steps_stop_every_rank_at_the_same_step(out):
    r0, r1 = ranks(out, "limits")
    for r in (r0, r1):  # 4 steps per rank per epoch: a whole epoch, then 2 steps of the next
        assert r["result"] == [1, "max_steps=6 reached"]
        assert r["history"] == {"TrainingPhase": {"epochs": 2, "steps": 6},
                                "ValidationPhase": {"epochs": 3, "steps": 3 * 2}}
    assert r0["weights"] == r1["weights"] and r0["valid_loss"] == r1["valid_loss"]


def test_max_time_stops_every_rank_at_the_same_step_on_rank_zeros_clock(out):
    # Rank 0's fake clock moves 1 s per step, rank 1's 3 s (alone it would stop after 2):
    # both stop after the 6th step, when rank 0's clock passes 5.5 s.
    r0, r1 = ranks(out, "timed")
    for r in (r0, r1):
        assert r["by_time"] == [1, "max_time=5.5 s reached"]
        assert r["time_history"]["TrainingPhase"] == {"epochs": 1 + 2 + 2, "steps": 4 + 6 + 6}
    assert r0["time_weights"] == r1["time_weights"]
    assert r0["time_history"] == r1["time_history"]


def test_max_time_costs_one_broadcast_per_step_and_max_steps_none(out):
    for r in ranks(out, "timed"):
        assert r["by_steps"] == [1, "max_steps=6 reached"]
        assert r["counted_steps"]["broadcast"] == 0
        assert r["counted_time"] == {"broadcast": 6,  # the same 6 steps, one broadcast each
                                     "all_reduce": r["counted_steps"]["all_reduce"]}


def test_validation_every_seconds_runs_at_the_same_steps_on_every_rank(out):
    # rank 0 reads 1, 2, 3 s (due at 2.5: validate; the next at 4 + 2.5), 5, 6, 7 s (validate)
    r0, r1 = ranks(out, "timed")
    for r in (r0, r1):
        assert r["every"] == [2, "max_steps=8 reached"]  # two whole epochs of 4 steps
        assert r["validated_at"] == [3, 6]
    assert r0["weights"] == r1["weights"]
    assert r0["valid_loss"] == r1["valid_loss"] and r0["history"] == r1["history"]


def test_only_rank_zero_logs_to_a_tracker(out):
    r0, r1 = ranks(out, "tracked")
    assert r1["run_id"] is None
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert (run.info.run_id, run.info.status) == (r0["run_id"], "FINISHED")
    logged = client.get_metric_history(run.info.run_id, "loss/TrainingPhase")
    assert sorted((m.step, m.value) for m in logged) == [
        (1, pytest.approx(r0["losses"][0])), (2, pytest.approx(r0["losses"][1]))]


def _batchnorm_model(state: dict) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Linear(4, 1))
    model.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    return model.eval()


def _joined(parts: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([b[0] for b in parts]), torch.cat([b[1] for b in parts])


def test_predict_and_evaluate_under_ddp_over_the_same_data_agree_with_one_process(out):
    rank0, rank1 = ranks(out, "predict")
    assert rank0["state"] == rank1["state"]
    model = _batchnorm_model(rank0["state"])
    xs, ys = _joined(worker.batches(5, seed=20))
    with torch.no_grad():
        preds = model(xs)
    for seen in (rank0, rank1):
        assert seen["shared"] == pytest.approx(preds.flatten().tolist(), abs=1e-6)
        assert seen["shared_evaluated"] == {"loss": pytest.approx(F.mse_loss(preds, ys).item(),
                                                                  rel=1e-6)}


def test_predict_under_ddp_takes_each_ranks_own_data_and_evaluate_averages_all_of_it(out):
    seen = ranks(out, "predict")
    model = _batchnorm_model(seen[0]["state"])
    own = [_joined(worker.batches(3 - r, seed=30 + r)) for r in (0, 1)]
    with torch.no_grad():
        for r, (xs, _) in enumerate(own):
            assert seen[r]["own"] == pytest.approx(model(xs).flatten().tolist(), abs=1e-6)
        xs, ys = torch.cat([o[0] for o in own]), torch.cat([o[1] for o in own])
        expected = F.mse_loss(model(xs), ys).item()
    assert seen[0]["own_evaluated"] == seen[1]["own_evaluated"] == {
        "loss": pytest.approx(expected, rel=1e-6)}


def test_predict_and_evaluate_under_ddp_leave_the_batchnorm_statistics_alone(out):
    for seen in ranks(out, "predict"):
        assert seen["state_after"] == seen["state"]


def test_the_threaded_executor_under_ddp_trains_and_checkpoints_as_the_serial_one(out):
    for seen in ranks(out, "threaded"):
        assert seen["threaded"] == seen["serial"]
    assert ranks(out, "threaded")[0]["serial"] == ranks(out, "threaded")[1]["serial"]
    assert (out / "threaded-threaded-printer-rank0.txt").read_text() == (
        out / "threaded-serial-printer-rank0.txt").read_text()
    assert (out / "threaded-threaded-printer-rank1.txt").read_text() == ""
    names = ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"]
    for name in ("serial", "threaded"):
        assert sorted(p.name for p in (out / f"threaded-{name}").iterdir()) == names
    serial, threaded = (fp.Learner(worker.model(), F.mse_loss, optimizer=worker.sgd(0.05),
                                   use_default_callbacks=False) for _ in range(2))
    with pytest.warns(UserWarning, match="which this learner does not have"):  # the callbacks'
        fp.load_checkpoint(serial, out / "threaded-serial" / names[-1])
        fp.load_checkpoint(threaded, out / "threaded-threaded" / names[-1])
    assert worker.weights(serial) == worker.weights(threaded)
