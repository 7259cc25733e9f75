"""The in-training robustness probe (`AdAutoMixTrainer` with `--eval_robustness`): a small fixed subset of the eval
set, corrupted and occluded once, and the top-1 / FGSM metrics of a network on it at every evaluation.

The images are made by `corruptions` (as `evaluate_corruptions` / `evaluate_occlusion` make them), the batches run
through `prediction.logits_of` (the prediction step of `predict`, FGSM included) and scored by `metrics.top1`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .corruptions import RowCorruption, RowOcclusion
from .metrics import top1
from .prediction import FGSM_EPSILON, logits_of

__all__ = ["TRAINING_CORRUPTIONS", "RobustnessSubset", "robustness_metrics", "robustness_subset"]

# One type from each of the noise, blur and digital families, each milliseconds per image at any size.
TRAINING_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "contrast")


@dataclass
class RobustnessSubset:
    """The fixed inputs of `robustness_metrics`: uint8 (K, 3, H, W) images on the CPU (a quarter of the memory of
    float ones), normalised batch by batch."""

    clean: torch.Tensor
    labels: torch.Tensor
    corrupted: dict[str, torch.Tensor]
    occluded: torch.Tensor
    occlusion_ratio: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalised(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float() / 255 - mean) / std


def robustness_subset(
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    corruptions: Sequence[str] = TRAINING_CORRUPTIONS,
    severity: int = 3,
    occlusion_ratio: float = 0.5,
    patch_size: int = 16,
    seed: int = 0,
) -> RobustnessSubset:
    """Corrupted and occluded copies of a normalised batch, built once so that every evaluation sees the same images.

    The batch is un-normalised to uint8 pixels, corrupted as `evaluate_corruptions` does (`corrupt_image`, CIFAR-C
    parameters for images of at most 64 px, else ImageNet-C's) and occluded (patches set to black) as
    `evaluate_occlusion` does. Seeded per (seed, type, row): the global RNGs are left as they were.
    """
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    clean = ((pixel_values.detach().float().cpu() * s + m).clamp(0, 1) * 255).round().to(torch.uint8)
    params = "cifar" if max(clean.shape[2:]) <= 64 else "imagenet"
    hwc = clean.permute(0, 2, 3, 1).numpy()
    corrupted = {}
    for name in corruptions:
        corrupt = RowCorruption(name, severity, params, seed)
        out = np.stack([corrupt(x, i) for i, x in enumerate(hwc)])
        corrupted[name] = torch.from_numpy(out).permute(0, 3, 1, 2)
    drop = RowOcclusion(occlusion_ratio, patch_size, torch.zeros(clean.shape[1], dtype=torch.uint8), seed)
    occluded = torch.stack([drop(x, i) for i, x in enumerate(clean)])
    return RobustnessSubset(
        clean, labels.cpu(), corrupted, occluded, occlusion_ratio, tuple(mean), tuple(std)
    )


def robustness_metrics(
    net: torch.nn.Module, subset: RobustnessSubset, *, batch_size: int = 128, epsilon: float = FGSM_EPSILON
) -> dict[str, float]:
    """Top-1 of `net` (`pixel_values -> logits`, in eval mode) under each corruption of `subset` and their mean,
    FGSM error at `epsilon` and top-1 on the occluded images, as `robust_<type>_top1`, `robust_corruption_top1`,
    `robust_fgsm_error` and `robust_occlusion<percent>_top1`."""
    param = next(net.parameters())

    def accuracy(images: torch.Tensor, attack: bool = False) -> float:
        logits = []
        for i in range(0, len(images), batch_size):
            x = subset.normalised(images[i : i + batch_size].to(param.device)).to(param.dtype)
            y = subset.labels[i : i + batch_size].to(param.device)
            eps = epsilon if attack else None
            logits.append(logits_of(net, x, y, epsilon=eps, mean=subset.mean, std=subset.std).cpu())
        return top1(torch.cat(logits).numpy(), subset.labels.numpy())

    out = {f"robust_{name}_top1": accuracy(images) for name, images in subset.corrupted.items()}
    out["robust_corruption_top1"] = float(np.mean(list(out.values())))
    out["robust_fgsm_error"] = 1.0 - accuracy(subset.clean, attack=True)
    out[f"robust_occlusion{round(100 * subset.occlusion_ratio)}_top1"] = accuracy(subset.occluded)
    return out
