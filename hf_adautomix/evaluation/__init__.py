"""Evaluation: offline classification metrics (accuracy, top-k, NLL, ECE) for Trainer and `evaluate`."""

from .metrics import (
    Accuracy,
    ExpectedCalibrationError,
    NegativeLogLikelihood,
    TopKAccuracy,
    compute_metrics,
    ece,
    nll,
    top1,
    topk_accuracy,
)

__all__ = [
    "Accuracy",
    "ExpectedCalibrationError",
    "NegativeLogLikelihood",
    "TopKAccuracy",
    "compute_metrics",
    "ece",
    "nll",
    "top1",
    "topk_accuracy",
]
