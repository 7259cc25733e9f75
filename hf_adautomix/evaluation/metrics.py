"""Classification metrics, the one definition used everywhere: top-1 / top-k accuracy, NLL and expected
calibration error, on numpy arrays of logits, plus `compute_metrics` for `transformers.Trainer`.

Plain numpy, nothing from the Hub (`evaluate.load("accuracy")` needs the network). The tests check these numbers
against torch and torchmetrics, independent implementations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import EvalPrediction

__all__ = [
    "compute_metrics",
    "ece",
    "log_softmax",
    "nll",
    "summary",
    "top1",
    "topk_accuracy",
]


def _check(scores, labels, name: str = "logits") -> tuple[np.ndarray, np.ndarray]:
    """Returns `(scores, labels)` as float64 (N, K) and int64 (N,) arrays, or raises a ValueError naming the problem."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(
            f"Expected {name} of shape (num_samples, num_classes) with both > 0, got shape {scores.shape}."
        )
    if labels.shape != (scores.shape[0],):
        raise ValueError(
            f"Expected labels of shape ({scores.shape[0]},) to match {name} of shape {scores.shape}, got shape {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):
            raise ValueError(
                f"Expected integer class labels, got dtype {labels.dtype} with non-integer values."
            )
        labels = labels.astype(np.int64)
    num_classes = scores.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"Expected labels in [0, {num_classes - 1}] for {num_classes} classes, got values in [{labels.min()}, {labels.max()}]."
        )
    return scores, labels.astype(np.int64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (subtracts the row max before `exp`)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def topk_accuracy(logits, labels, k: int) -> float:
    """Fraction of samples whose label is among the `k` highest scores.

    Ties are broken towards the lower class index (a stable sort of the negated scores), so with scores
    `[1, 1, 0]` the top-1 class is 0 and the top-2 classes are {0, 1}. `np.argmax` breaks ties the same way.

    Args:
        logits: (N, K) scores (logits or probabilities; only their order matters).
        labels: (N,) integer class ids in [0, K).
        k: how many top classes count as a hit, 1 <= k <= K.

    Returns:
        The accuracy in [0, 1].
    """
    logits, labels = _check(logits, labels)
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"Expected 1 <= k <= num_classes ({logits.shape[1]}), got k={k}.")
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def top1(logits, labels) -> float:
    """Top-1 accuracy; ties go to the lower class index, as in `np.argmax`."""
    return topk_accuracy(logits, labels, k=1)


def nll(logits, labels) -> float:
    """Mean negative log-likelihood of the labels under `softmax(logits)`; equals `F.cross_entropy`.

    Args:
        logits: (N, K) unnormalised scores.
        labels: (N,) integer class ids in [0, K).
    """
    logits, labels = _check(logits, labels)
    return float(-np.mean(log_softmax(logits)[np.arange(len(labels)), labels]))


def ece(probs_or_logits, labels, n_bins: int = 15, from_logits: bool | None = None) -> float:
    """Top-label expected calibration error with `n_bins` equal-width confidence bins.

    `ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`, where the confidence of a sample is its largest
    probability and acc/conf are the bin's mean correctness and mean confidence (Guo et al., 2017).

    Binning follows torchmetrics' `multiclass_calibration_error` (`torch.bucketize(c, linspace(0, 1, n_bins + 1),
    right=True) - 1`), so the numbers agree with it: bins are left-closed, `[b_i, b_{i+1})`, and a confidence
    of exactly 1.0 (a saturated softmax) falls in an extra bin of its own. The predicted class is the argmax,
    ties going to the lower class index.

    Args:
        probs_or_logits: (N, K) probabilities or logits.
        labels: (N,) integer class ids in [0, K).
        n_bins: number of equal-width bins over [0, 1].
        from_logits: True applies a softmax first, False takes the input as probabilities. None decides as
            torchmetrics does: inputs with every value in [0, 1] are probabilities, anything else is logits.

    Returns:
        The ECE in [0, 1].
    """
    scores, labels = _check(probs_or_logits, labels, name="probs_or_logits")
    if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"Expected n_bins to be a positive integer, got {n_bins!r}.")
    if from_logits is None:
        from_logits = not bool(np.all((scores >= 0) & (scores <= 1)))
    probs = np.exp(log_softmax(scores)) if from_logits else scores
    confidences = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    boundaries = np.linspace(0.0, 1.0, n_bins + 1)
    # Same as torch.bucketize(confidences, boundaries, right=True) - 1.
    bins = np.searchsorted(boundaries, confidences, side="right") - 1
    bins = np.clip(bins, 0, n_bins)  # only reachable for confidences outside [0, 1]
    # Per bin, |B_b|/N * |acc_b - conf_b| = |sum over B_b of (correct - conf)| / N.
    gap = np.bincount(bins, weights=correct - confidences, minlength=n_bins + 1)
    return float(np.abs(gap).sum() / len(labels))


def summary(logits, labels) -> dict[str, float]:
    """Accuracy, top-5 accuracy, NLL and ECE (15 bins) of (N, K) logits.

    `top5_accuracy` uses `k = min(5, num_classes)`, so with 5 classes or fewer it is 1.0.

    Returns:
        `{"accuracy", "top5_accuracy", "nll", "ece"}` as Python floats.
    """
    logits, labels = _check(logits, labels)
    return {
        "accuracy": top1(logits, labels),
        "top5_accuracy": topk_accuracy(logits, labels, k=min(5, logits.shape[1])),
        "nll": nll(logits, labels),
        "ece": ece(logits, labels, n_bins=15, from_logits=True),
    }


def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """`compute_metrics` for `transformers.Trainer`: `summary` of the logits.

    When the model returns several outputs (`predictions` is a tuple), the first one is taken as the logits; keep
    full logits (no `preprocess_logits_for_metrics` argmax) since NLL and ECE need them.

    Args:
        eval_pred: Trainer's predictions (N, K) and `label_ids` (N,).

    Returns:
        `{"accuracy", "top5_accuracy", "nll", "ece"}` as Python floats.
    """
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if isinstance(labels, (tuple, list)):
        labels = labels[0]
    return summary(logits, labels)
