"""Evaluation: offline classification metrics (accuracy, top-k, NLL, ECE) for Trainer and `evaluate`."""

from .metrics import *  # noqa: F403
from .metrics import __all__  # noqa: F401
