"""Built-in callbacks, one family per module."""

from .activations import ActivationStats
from .checkpointer import Checkpointer
from .conditional import ConditionalCallback, Throttle, throttle
from .custom import CustomCallback
from .earlystopping import EarlyStopping
from .metrics import Metric, Metrics
from .nan import StopOnNaNLoss
from .printer import MetricsPrinter
from .progress import ProgressPrinter
from .recorder import History, Recorder
from .scheduler import (
    HyperParameter,
    LearningRate,
    Momentum,
    Scheduler,
    WeightDecay,
    fit_one_cycle,
)
from .todevice import ToDevice

__all__ = [
    "ActivationStats",
    "Checkpointer",
    "ConditionalCallback",
    "CustomCallback",
    "EarlyStopping",
    "History",
    "HyperParameter",
    "LearningRate",
    "Metric",
    "Metrics",
    "MetricsPrinter",
    "Momentum",
    "ProgressPrinter",
    "Recorder",
    "Scheduler",
    "StopOnNaNLoss",
    "Throttle",
    "ToDevice",
    "WeightDecay",
    "fit_one_cycle",
    "throttle",
]
