"""Shared test setup: deterministic, single-threaded torch so tests are fast and repeatable."""

import os

import pytest
import torch

# Experiment trackers send nothing anywhere from tests: no telemetry, W&B offline and quiet.
os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", WANDB_MODE="offline",
                  WANDB_SILENT="true", WANDB_ERROR_REPORTING="false", WANDB_DISABLE_GIT="true",
                  WANDB_DISABLE_CODE="true", WANDB_CONSOLE="off")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
