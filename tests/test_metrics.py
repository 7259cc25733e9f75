"""Offline metrics: hand-computed values, agreement with torch and torchmetrics (independent references), the
Trainer hook, and the evaluation package's lazy imports."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_accuracy
from transformers import EvalPrediction

from hf_adautomix.evaluation import compute_metrics, ece, nll, summary, top1, topk_accuracy

# 4 samples, 3 classes. Confidences 0.7, 0.65, 0.85, 0.5; predictions 0, 0, 2, 1.
PROBS = np.array(
    [
        [0.70, 0.20, 0.10],  # label 0: correct
        [0.65, 0.25, 0.10],  # label 1: wrong
        [0.05, 0.10, 0.85],  # label 2: correct
        [0.25, 0.50, 0.25],  # label 1: correct
    ]
)
LABELS = np.array([0, 1, 2, 1])


def random_logits(n=300, k=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)) * 3, rng.integers(0, k, size=n)


def loop_ece(probs, labels, n_bins):
    """Second, loop-based reference: bins [i/n, (i+1)/n) plus a bin for confidence exactly 1."""
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    edges = [(i / n_bins, (i + 1) / n_bins) for i in range(n_bins)]
    masks = [(conf >= lo) & (conf < hi) for lo, hi in edges] + [conf == 1.0]
    for mask in masks:
        if mask.any():
            total += mask.sum() / len(conf) * abs((pred[mask] == labels[mask]).mean() - conf[mask].mean())
    return total


class TestAccuracy:
    def test_top1_by_hand(self):
        assert top1(PROBS, LABELS) == pytest.approx(0.75)

    def test_topk_by_hand(self):
        # Sample 1 (label 1): class 1 is second-best, so it is a top-2 hit.
        assert topk_accuracy(PROBS, LABELS, k=2) == pytest.approx(1.0)
        assert topk_accuracy(PROBS, LABELS, k=3) == pytest.approx(1.0)

    def test_ties_go_to_the_lower_class_index(self):
        logits = np.array([[1.0, 1.0, 0.0]])
        assert top1(logits, [0]) == 1.0
        assert top1(logits, [1]) == 0.0
        assert topk_accuracy(logits, [1], k=2) == 1.0
        assert topk_accuracy(np.ones((1, 3)), [2], k=2) == 0.0

    def test_matches_torch_topk_without_ties(self):
        logits, labels = random_logits()
        top = torch.tensor(logits).topk(5, dim=1).indices.numpy()
        assert topk_accuracy(logits, labels, k=5) == pytest.approx(np.mean((top == labels[:, None]).any(1)))

    @pytest.mark.parametrize("k", [0, 4])
    def test_bad_k(self, k):
        with pytest.raises(ValueError, match=f"1 <= k <= num_classes \\(3\\), got k={k}"):
            topk_accuracy(PROBS, LABELS, k=k)


class TestNLL:
    def test_by_hand(self):
        # Equal logits over 2 classes: -log(1/2).
        assert nll(np.zeros((3, 2)), [0, 1, 0]) == pytest.approx(np.log(2))

    def test_equals_cross_entropy(self):
        logits, labels = random_logits()
        expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels)).item()
        assert nll(logits, labels) == pytest.approx(expected, rel=1e-10)

    def test_is_stable_for_huge_logits(self):
        logits = np.array([[1000.0, 0.0], [0.0, 1000.0]])
        assert nll(logits, [0, 0]) == pytest.approx(500.0)


class TestECE:
    def test_by_hand(self):
        # n_bins=5: bins [0,.2) [.2,.4) [.4,.6) [.6,.8) [.8,1) {1}.
        #   [.4,.6): conf .5,  correct    -> 1/4 * |1 - .5|     = .125
        #   [.6,.8): conf .7, .65; 1 of 2 -> 2/4 * |.5 - .675|  = .0875
        #   [.8, 1): conf .85, correct    -> 1/4 * |1 - .85|    = .0375
        # ECE = .25
        assert ece(PROBS, LABELS, n_bins=5) == pytest.approx(0.25)

    def test_bins_are_left_closed(self):
        # n_bins=2, conf 0.5 lands in [.5, 1) with conf .7: 1/2 * |(1 + 0)/2 - (.5 + .7)/2| = .1.
        # (Right-closed bins would put .5 alone in [0, .5]: (.5 + .7)/2 = .6.)
        probs = np.array([[0.5, 0.5], [0.3, 0.7]])
        assert ece(probs, [0, 0], n_bins=2) == pytest.approx(0.1)

    def test_confidence_one_has_its_own_bin(self):
        # [1, 0, 0] wrong (gap -1) and .95 right (gap +.05): (1 + .05)/2 = .525 (merged they would give .475).
        probs = np.array([[1.0, 0.0, 0.0], [0.95, 0.05, 0.0]])
        assert ece(probs, [1, 0], n_bins=10) == pytest.approx(0.525)

    def test_logits_and_probabilities_agree(self):
        logits, labels = random_logits()
        probs = torch.softmax(torch.tensor(logits), dim=1).numpy()
        assert ece(logits, labels) == pytest.approx(ece(probs, labels))
        assert ece(logits, labels, from_logits=True) == pytest.approx(ece(probs, labels, from_logits=False))

    @pytest.mark.parametrize("n_bins", [1, 10, 15])
    def test_matches_loop_reference(self, n_bins):
        logits, labels = random_logits(seed=n_bins)
        probs = torch.softmax(torch.tensor(logits), dim=1).numpy()
        assert ece(logits, labels, n_bins=n_bins) == pytest.approx(loop_ece(probs, labels, n_bins), abs=1e-12)

    @pytest.mark.parametrize("n_bins", [5, 15])
    def test_matches_torchmetrics(self, n_bins):
        from torchmetrics.functional.classification import multiclass_calibration_error

        logits, labels = random_logits(n=1000, seed=n_bins)
        logits[:50] *= 20  # saturated softmax: confidences of exactly 1.0 in float32
        expected = multiclass_calibration_error(
            torch.tensor(logits, dtype=torch.float32), torch.tensor(labels), num_classes=10, n_bins=n_bins
        ).item()
        assert ece(logits, labels, n_bins=n_bins) == pytest.approx(expected, abs=1e-5)
        probs = np.array([[1.0, 0.0, 0.0], [0.95, 0.05, 0.0]], dtype=np.float32)
        expected = multiclass_calibration_error(
            torch.tensor(probs), torch.tensor([1, 0]), num_classes=3, n_bins=10
        )
        assert ece(probs, [1, 0], n_bins=10) == pytest.approx(expected.item(), abs=1e-6)

    @pytest.mark.parametrize("n_bins", [0, -1, 2.5])
    def test_bad_n_bins(self, n_bins):
        with pytest.raises(ValueError, match="n_bins to be a positive integer"):
            ece(PROBS, LABELS, n_bins=n_bins)


class TestInputValidation:
    def test_logits_must_be_2d(self):
        with pytest.raises(ValueError, match=r"shape \(num_samples, num_classes\).*got shape \(4,\)"):
            top1(np.zeros(4), LABELS)

    def test_label_count_must_match(self):
        with pytest.raises(ValueError, match=r"labels of shape \(4,\).*got shape \(3,\)"):
            nll(PROBS, [0, 1, 2])

    def test_labels_in_range(self):
        with pytest.raises(ValueError, match=r"labels in \[0, 2\] for 3 classes, got values in \[0, 3\]"):
            ece(PROBS, [0, 1, 2, 3])


class TestAgainstTorchmetrics:
    @pytest.mark.parametrize("k", [1, 3, 5])
    def test_topk_accuracy(self, k):
        logits, labels = random_logits(n=500, k=10, seed=k)
        expected = multiclass_accuracy(
            torch.tensor(logits), torch.tensor(labels), num_classes=10, top_k=k, average="micro"
        ).item()
        assert topk_accuracy(logits, labels, k=k) == pytest.approx(expected, abs=1e-6)

    def test_summary(self):
        from torchmetrics.functional.classification import multiclass_calibration_error

        logits, labels = random_logits(n=400, k=10, seed=7)
        preds, target = torch.tensor(logits), torch.tensor(labels)
        result = summary(logits, labels)
        assert result == {
            "accuracy": pytest.approx(
                multiclass_accuracy(preds, target, 10, average="micro").item(), abs=1e-6
            ),
            "top5_accuracy": pytest.approx(
                multiclass_accuracy(preds, target, 10, top_k=5, average="micro").item(), abs=1e-6
            ),
            "nll": pytest.approx(torch.nn.functional.cross_entropy(preds, target).item(), rel=1e-10),
            "ece": pytest.approx(
                multiclass_calibration_error(preds.float(), target, 10, n_bins=15).item(), abs=1e-5
            ),
        }
        assert all(type(v) is float for v in result.values())


class TestComputeMetrics:
    def test_tuple_predictions_take_the_first(self):
        logits, labels = random_logits()
        other = np.zeros_like(logits)
        result = compute_metrics(EvalPrediction(predictions=(logits, other), label_ids=labels))
        assert set(result) == {"accuracy", "top5_accuracy", "nll", "ece"}
        assert all(type(v) is float for v in result.values())
        assert result["accuracy"] == pytest.approx(top1(logits, labels))
        assert result["top5_accuracy"] == pytest.approx(topk_accuracy(logits, labels, 5))
        assert result["nll"] == pytest.approx(nll(logits, labels))
        assert result["ece"] == pytest.approx(ece(logits, labels, n_bins=15))

    def test_few_classes_clamps_k(self):
        result = compute_metrics(EvalPrediction(predictions=np.log(PROBS), label_ids=LABELS))
        assert result["accuracy"] == pytest.approx(0.75)
        assert result["top5_accuracy"] == 1.0  # k = min(5, 3)
        assert result["ece"] == pytest.approx(ece(PROBS, LABELS, n_bins=15))


def test_metrics_import_alone():
    """`from hf_adautomix.evaluation import compute_metrics` (what Trainer uses) loads no other evaluation module:
    not the robustness tools, which pull in the data pipeline, the model adapters and matplotlib."""
    code = (
        "import sys; from hf_adautomix.evaluation import compute_metrics; "
        "print(sorted(m for m in sys.modules if m.startswith('hf_adautomix.evaluation.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["['hf_adautomix.evaluation.metrics']"]
