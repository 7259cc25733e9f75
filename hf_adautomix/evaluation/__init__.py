"""Evaluation: offline classification metrics (accuracy, top-k, NLL, ECE) for Trainer and `evaluate`, and
robustness evaluations of exported models (clean + calibration, corruptions, FGSM, occlusion) in `robustness`."""

from .metrics import *  # noqa: F403
from .metrics import __all__ as _metrics_all
from .robustness import *  # noqa: F403
from .robustness import __all__ as _robustness_all

__all__ = [*_metrics_all, *_robustness_all]
