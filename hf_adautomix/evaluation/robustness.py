"""Robustness of an exported classifier, as the AdAutoMix paper evaluates it: clean metrics and calibration,
common corruptions, FGSM and occlusion, each one pass of `prediction.predict`, with files written by `report`.

Table 4 (clean / corruption accuracy and FGSM error of CIFAR-100 ResNet-18s), Table 7 and Fig. 5 (accuracy under
random 16x16 patch drop at 0-90 %), Fig. 4 / Table 6 (ECE and reliability diagrams), on any exported model
(`load_exported`) and any `datasets` image dataset::

    model = load_exported("out/")  # transformers folder, timm export folder, "local-dir:"/"hf-hub:" or a Hub id
    results = evaluate_robustness(model, dataset, batch_size=256, output_dir="robustness/")

Corruptions (`corruptions.corrupt_image`; `params="imagenet"`: ImageNet-C's parameters, `"cifar"`: CIFAR-10/100-C's)
are applied on the fly to the decoded uint8 images before the model's eval preprocessing; numbers come from
`metrics`. The names of `corruptions`, `prediction`, `probe` and `report` stay importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import datasets
import numpy as np
import torch

from .corruptions import (
    CIFAR_C_PARAMS,
    CORRUPTIONS,
    OCCLUSION_RATIOS,
    RowCorruption,
    RowOcclusion,
    _imagecorruptions,  # noqa: F401  (trainer.py imports it from here until it switches)
    corrupt_image,
    occlude,
)
from .metrics import nll, summary, top1
from .prediction import FGSM_EPSILON, LoadedModel, fgsm, get_accelerator, load_exported, logits_of, predict
from .probe import TRAINING_CORRUPTIONS, RobustnessSubset, robustness_metrics, robustness_subset
from .report import results_markdown, write_report

__all__ = [
    "CIFAR_C_PARAMS",
    "CORRUPTIONS",
    "FGSM_EPSILON",
    "OCCLUSION_RATIOS",
    "TRAINING_CORRUPTIONS",
    "LoadedModel",
    "RobustnessSubset",
    "clean_metrics",
    "corrupt_image",
    "evaluate_corruptions",
    "evaluate_fgsm",
    "evaluate_occlusion",
    "evaluate_robustness",
    "fgsm",
    "load_exported",
    "logits_of",
    "occlude",
    "predict",
    "results_markdown",
    "robustness_metrics",
    "robustness_subset",
]


def clean_metrics(
    model: LoadedModel, dataset: datasets.Dataset, **kwargs
) -> tuple[dict, np.ndarray, np.ndarray]:
    """`metrics.summary` (top-1, top-5 with k = min(5, K), NLL and ECE with 15 bins) on the clean data; also returns
    the logits and labels (for the reliability diagram). `kwargs` go to `predict`."""
    logits, labels = predict(model, dataset, desc="clean", **kwargs)
    return summary(logits, labels), logits, labels


def evaluate_corruptions(
    model: LoadedModel,
    dataset: datasets.Dataset,
    *,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    params: Literal["imagenet", "cifar"] = "imagenet",
    seed: int = 0,
    **kwargs,
) -> dict[str, Any]:
    """Top-1 error under each corruption type and severity, generated on the fly (`corrupt_image`).

    Returns:
        `{"params", "error": {type: {severity: error}}, "type_mean_error": {type: mean over severities},
        "severity_mean_error": {severity: mean over types}, "mean_error", "mean_accuracy"}`; the mean error is over
        all (type, severity) pairs, i.e. the unnormalised mCE; Table 4's "Corruption Acc" is `mean_accuracy`.
    """
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"Unknown corruptions {unknown}; expected names from {CORRUPTIONS}.")
    if not corruptions or not severities or any(s not in (1, 2, 3, 4, 5) for s in severities):
        raise ValueError(f"Expected at least one corruption and severities in 1..5, got {list(severities)}.")
    error: dict[str, dict[str, float]] = {}
    for name in corruptions:
        error[name] = {}
        for severity in severities:
            pre = RowCorruption(name, severity, params, seed)
            logits, labels = predict(model, dataset, pre=pre, desc=f"{name} s{severity}", **kwargs)
            error[name][str(severity)] = 1.0 - top1(logits, labels)
    type_mean = {n: float(np.mean(list(e.values()))) for n, e in error.items()}
    severity_mean = {str(s): float(np.mean([error[n][str(s)] for n in corruptions])) for s in severities}
    mean_error = float(np.mean([v for e in error.values() for v in e.values()]))
    return {
        "params": params,
        "error": error,
        "type_mean_error": type_mean,
        "severity_mean_error": severity_mean,
        "mean_error": mean_error,
        "mean_accuracy": 1.0 - mean_error,
    }


def evaluate_fgsm(
    model: LoadedModel, dataset: datasets.Dataset, *, epsilon: float = FGSM_EPSILON, **kwargs
) -> dict[str, float]:
    """White-box FGSM (Goodfellow et al., 2015) error, Table 4: `x + epsilon * sign(grad_x CE)` in [0, 1] pixel
    units, i.e. `epsilon / std` per channel on the normalised input, clipped to the normalised image of [0, 1].
    The gradient is of the mean cross-entropy of each batch with the true labels, the model in eval mode.

    Returns:
        `{"epsilon", "error", "accuracy", "nll"}` on the attacked images.
    """
    if epsilon < 0:
        raise ValueError(f"Expected epsilon >= 0, got {epsilon}.")
    logits, labels = predict(model, dataset, fgsm_epsilon=epsilon, desc=f"FGSM {epsilon:.4g}", **kwargs)
    acc = top1(logits, labels)
    return {"epsilon": float(epsilon), "error": 1.0 - acc, "accuracy": acc, "nll": nll(logits, labels)}


def evaluate_occlusion(
    model: LoadedModel,
    dataset: datasets.Dataset,
    *,
    ratios: Sequence[float] = OCCLUSION_RATIOS,
    patch_size: int = 16,
    fill: Literal["black", "mean"] = "black",
    seed: int = 0,
    **kwargs,
) -> dict[str, Any]:
    """Top-1 accuracy under random PatchDrop (Table 7 / Fig. 5): the model input (after the eval transform) is cut
    into a `patch_size` grid and `round(ratio * patches)` random patches are dropped, per image and ratio.

    `fill="black"` sets them to pixel value 0 (the normalised value `-mean / std`, i.e. zero after
    un-normalising); `"mean"` to 0 in normalised space (the dataset mean colour, as zeroing the network input
    does). On 32 x 32 inputs a 16 px grid has only 4 patches, so ratios round to quarters; pass `patch_size=4`
    (64 patches) for finer steps.

    Returns:
        `{"patch_size", "fill", "accuracy": {ratio: acc}}` with ratios as strings ("0.3").
    """
    if patch_size < 1:
        raise ValueError(f"Expected a positive patch_size, got {patch_size}.")
    if fill not in ("black", "mean"):
        raise ValueError(f"Expected fill 'black' or 'mean', got {fill!r}.")
    mean, std = torch.tensor(model.mean), torch.tensor(model.std)
    value = -mean / std if fill == "black" else torch.zeros_like(mean)
    accuracy = {}
    for ratio in ratios:
        post = RowOcclusion(float(ratio), patch_size, value, seed) if ratio > 0 else None
        logits, labels = predict(model, dataset, post=post, desc=f"occlusion {ratio:.0%}", **kwargs)
        accuracy[f"{float(ratio):g}"] = top1(logits, labels)
    return {"patch_size": patch_size, "fill": fill, "accuracy": accuracy}


def evaluate_robustness(
    model: LoadedModel | str,
    dataset: datasets.Dataset,
    *,
    batch_size: int = 128,
    output_dir: str | None = None,
    corruptions: Sequence[str] | None = CORRUPTIONS,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    corruption_params: Literal["imagenet", "cifar"] = "imagenet",
    fgsm_epsilon: float | None = FGSM_EPSILON,
    occlusion_ratios: Sequence[float] | None = OCCLUSION_RATIOS,
    patch_size: int = 16,
    occlusion_fill: Literal["black", "mean"] = "black",
    seed: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
    num_workers: int = 0,
    accelerator=None,
) -> dict[str, Any]:
    """Clean metrics, corruptions, FGSM and occlusion; None (or empty) skips corruptions / FGSM / occlusion.

    With `output_dir`, the main process writes `robustness.json`, `robustness.md`, `reliability_diagram.png`,
    `occlusion.png` and `corruptions.png` there. Returns the results dict (as in the JSON).
    """
    accelerator = get_accelerator(accelerator)
    if isinstance(model, str):
        model = load_exported(model)
    common = dict(
        batch_size=batch_size,
        image_column=image_column,
        label_column=label_column,
        num_workers=num_workers,
        accelerator=accelerator,
    )
    results: dict[str, Any] = {"model": model.source, "num_samples": len(dataset)}
    results["clean"], logits, labels = clean_metrics(model, dataset, **common)
    if corruptions:
        results["corruptions"] = evaluate_corruptions(
            model,
            dataset,
            corruptions=corruptions,
            severities=severities,
            params=corruption_params,
            seed=seed,
            **common,
        )
    if fgsm_epsilon is not None:
        results["fgsm"] = evaluate_fgsm(model, dataset, epsilon=fgsm_epsilon, **common)
    if occlusion_ratios:
        results["occlusion"] = evaluate_occlusion(
            model,
            dataset,
            ratios=occlusion_ratios,
            patch_size=patch_size,
            fill=occlusion_fill,
            seed=seed,
            **common,
        )
    if output_dir is not None and accelerator.is_main_process:
        write_report(results, logits, labels, output_dir)
    return results
