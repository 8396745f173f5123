"""Built-in callbacks, one family per module."""

from .conditional import ConditionalCallback, Throttle, throttle
from .custom import CustomCallback
from .metrics import Metric, Metrics
from .nan import StopOnNaNLoss
from .printer import MetricsPrinter
from .progress import ProgressPrinter
from .recorder import History, Recorder
from .todevice import ToDevice

__all__ = [
    "ConditionalCallback",
    "CustomCallback",
    "History",
    "Metric",
    "Metrics",
    "MetricsPrinter",
    "ProgressPrinter",
    "Recorder",
    "StopOnNaNLoss",
    "Throttle",
    "ToDevice",
    "throttle",
]
