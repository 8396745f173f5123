"""Built-in callbacks, one family per module."""

from .activations import ActivationStats
from .backends import CSVBackend, LogBackend, TensorBoardBackend
from .checkpointer import Checkpointer
from .conditional import ConditionalCallback, Throttle, throttle
from .custom import CustomCallback
from .earlystopping import EarlyStopping
from .gradients import GradientAccumulation, GradientClipping
from .logging import LogHistograms, LogHyperParams, LogMetrics
from .metrics import Metric, Metrics
from .mixup import MixUp
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
    "Metric",
    "Metrics",
    "MetricsPrinter",
    "MixUp",
    "MixedPrecision",
    "Momentum",
    "Predictions",
    "ProgressPrinter",
    "Recorder",
    "SanityCheck",
    "Scheduler",
    "StopOnNaNLoss",
    "TensorBoardBackend",
    "Throttle",
    "ToDevice",
    "WeightDecay",
    "fit_one_cycle",
    "throttle",
]
