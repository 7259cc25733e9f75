"""SmoothMix (Lee et al., CVPR-W 2020), Gaussian variant as in OpenMixup.

Difference from OpenMixup (`reference/adautomix-algorithm.md` §10), on purpose: the label weight of `y` is
mean(1 − G), the fraction of x's own content (§11 B8: OpenMixup gives `y` the weight mean(G), i.e. the labels are
swapped). Like OpenMixup, SmoothMix draws no Beta λ: its mixing ratio is set by the Gaussian's σ ~ U(0.25, 0.5)·size,
so `--mix_alpha` does not apply to it.
"""

from __future__ import annotations

import logging
import math

import torch

from .base import MaskMixer, _check_images, _check_range, _randint, _uniform

logger = logging.getLogger(__name__)


class SmoothMix(MaskMixer):
    """SmoothMix (Lee et al., CVPR-W 2020), Gaussian variant as in OpenMixup: x̃ = (1 − G) ⊙ x + G ⊙ x[perm] with
    G(p) = exp(−|p − c|²/(2σ²)), a uniform random centre c and σ ~ U(0.25, 0.5)·size, one G per batch.

    The label weight of y is mean(1 − G), the fraction of x's own content (OpenMixup gives y mean(G): §11 B8). There
    is no α: the mixing ratio comes from σ (OpenMixup draws a Beta λ and discards it).

    Args:
        sigma_range: (low, high) range of σ as a fraction of the image side (per axis for non-square images).
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "smoothmix"

    def __init__(
        self,
        *,
        sigma_range: tuple[float, float] = (0.25, 0.5),
        num_classes: int,
        label_smoothing: float = 0.0,
        mix_prob: float = 1.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.sigma_range = _check_range("sigma_range", sigma_range, 0.0, math.inf)
        if self.sigma_range[0] <= 0:
            raise ValueError(f"sigma_range must be > 0, got sigma_range={sigma_range!r}.")

    @classmethod
    def from_args(cls, args, *, num_classes, label_smoothing, classifier):
        if args.mix_alpha is not None:
            logger.warning(
                "--mix_alpha %s has no effect on --mixup smoothmix: its mixing ratio is set by the "
                "Gaussian's random width (as in OpenMixup, which samples λ and discards it).",
                args.mix_alpha,
            )
        return cls(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=args.mix_prob)

    def extra_repr(self) -> str:
        return f"sigma_range={self.sigma_range}, mix_prob={self.mix_prob}"

    def get_params(self, x, y):
        _check_images(x, type(self).__name__)
        height, width = x.shape[-2:]
        # OpenMixup rolls a centred Gaussian by int(randint(0, size) − size/2) on each axis
        cy = (height - 1) / 2 + int(_randint(0, height) - height / 2)
        cx = (width - 1) / 2 + int(_randint(0, width) - width / 2)
        s = _uniform(*self.sigma_range)
        rows = torch.arange(height, device=x.device, dtype=torch.float32).view(-1, 1)
        cols = torch.arange(width, device=x.device, dtype=torch.float32).view(1, -1)
        gauss = torch.exp(
            -((rows - cy) ** 2 / (2 * (s * height) ** 2) + (cols - cx) ** 2 / (2 * (s * width) ** 2))
        )
        mask = (1.0 - gauss).view(1, 1, height, width)  # weight of x's own content
        return {"perm": torch.randperm(x.shape[0], device=x.device), "mask": mask, "lam": float(mask.mean())}
