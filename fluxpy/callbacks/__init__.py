"""Built-in callbacks, one family per module."""

from .activations import ActivationStats
from .averaging import WeightAveraging
from .backends import CSVBackend, LogBackend, TensorBoardBackend
from .checkpointer import Checkpointer
from .conditional import ConditionalCallback, Throttle, throttle
from .custom import CustomCallback
from .earlystopping import EarlyStopping
from .gradients import GradientAccumulation, GradientClipping
from .logging import LogHistograms, LogHyperParams, LogMetrics
from .metrics import Metric, Metrics
from .mixup import MixUp
from .mlflow_backend import MLflowBackend
from .nan import StopOnNaNLoss
from .precision import MixedPrecision
from .prediction import Predictions
from .printer import MetricsPrinter
from .progress import ProgressPrinter
from .recorder import History, Recorder
from .sanity import SanityCheck
from .scheduler import (
    HyperParameter,
    LearningRate,
    Momentum,
    Scheduler,
    WeightDecay,
    fit_one_cycle,
)
from .todevice import ToDevice
from .torchschedulers import TorchScheduler
from .tracking import RunBackend
from .wandb_backend import WandbBackend

__all__ = [
    "ActivationStats",
    "CSVBackend",
    "Checkpointer",
    "ConditionalCallback",
    "CustomCallback",
    "EarlyStopping",
    "GradientAccumulation",
    "GradientClipping",
    "History",
    "HyperParameter",
    "LearningRate",
    "LogBackend",
    "LogHistograms",
    "LogHyperParams",
    "LogMetrics",
    "MLflowBackend",
    "Metric",
    "Metrics",
    "MetricsPrinter",
    "MixUp",
    "MixedPrecision",
    "Momentum",
    "Predictions",
    "ProgressPrinter",
    "Recorder",
    "RunBackend",
    "SanityCheck",
    "Scheduler",
    "StopOnNaNLoss",
    "TensorBoardBackend",
    "Throttle",
    "ToDevice",
    "TorchScheduler",
    "WandbBackend",
    "WeightAveraging",
    "WeightDecay",
    "fit_one_cycle",
    "throttle",
]
