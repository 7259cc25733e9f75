"""Evaluation of classifiers, one concern per module: `metrics` (top-1/top-k, NLL, ECE, Trainer's
`compute_metrics`), `corruptions` (+ `cifar_c`), `prediction` (exported model + the prediction loop), `robustness`
(the paper's evaluations), `probe` (`--eval_robustness` during training) and `report` (markdown, JSON, figures).

Names import lazily, so `from hf_adautomix.evaluation import compute_metrics` loads only `metrics` (numpy).
"""

import importlib

# name -> the submodule that defines it
_SOURCES = {
    **dict.fromkeys(
        ("compute_metrics", "ece", "log_softmax", "nll", "summary", "top1", "topk_accuracy"), "metrics"
    ),
    **dict.fromkeys(
        (
            "CIFAR_C_PARAMS",
            "CORRUPTIONS",
            "OCCLUSION_RATIOS",
            "corrupt_image",
            "occlude",
            "require_imagecorruptions",
        ),
        "corruptions",
    ),
    **dict.fromkeys(
        ("FGSM_EPSILON", "LoadedModel", "fgsm", "load_exported", "logits_of", "predict"), "prediction"
    ),
    **dict.fromkeys(
        (
            "clean_metrics",
            "evaluate_corruptions",
            "evaluate_fgsm",
            "evaluate_occlusion",
            "evaluate_robustness",
        ),
        "robustness",
    ),
    **dict.fromkeys(
        ("TRAINING_CORRUPTIONS", "RobustnessSubset", "robustness_metrics", "robustness_subset"), "probe"
    ),
    **dict.fromkeys(("results_markdown", "write_report"), "report"),
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str):
    if name in _SOURCES:
        return getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SOURCES})
