"""GridMix (Baek et al., Pattern Recognition 2021): a grid of square holes, filled with x[perm], tiles a random
crop region; one grid per batch.

Difference from OpenMixup (`reference/adautomix-algorithm.md` §10), on purpose: the crop is clipped to the image
(OpenMixup's crop can overflow for aspect ratios ≠ 1), and non-square images are handled on each axis.
"""

from __future__ import annotations

import math

import torch

from .base import (
    MaskMixer,
    _BetaMixin,
    _check_images,
    _check_positive,
    _check_range,
    _randint,
    _uniform,
    sample_beta,
)


class GridMix(_BetaMixin, MaskMixer):
    """GridMix (Baek et al., Pattern Recognition 2021): a grid of square holes, filled with x[perm], tiles a random
    crop region; one grid per batch.

    λ ~ Beta(α, α); crop area ratio ~ U(cut_area_ratio), aspect ratio ~ U(cut_aspect_ratio), n_holes ~ U{n_holes};
    cells of width ⌈crop_w / n_holes⌉ each hold a hole of side cell·√(1−λ) (at least 1 px, at most cell − 1).
    The label weight of y is 1 − (hole area)/(HW).

    Args:
        alpha: α of Beta(α, α).
        n_holes: (low, high) range of the number of cells along the crop's width (inclusive).
        hole_aspect_ratio: cell height / cell width.
        cut_area_ratio: (low, high) range of the crop area as a fraction of the image.
        cut_aspect_ratio: (low, high) range of the crop's height / width.
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "gridmix"

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        n_holes: tuple[int, int] = (2, 6),
        hole_aspect_ratio: float = 1.0,
        cut_area_ratio: tuple[float, float] = (0.5, 1.0),
        cut_aspect_ratio: tuple[float, float] = (0.5, 2.0),
        num_classes: int,
        label_smoothing: float = 0.0,
        mix_prob: float = 1.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.alpha = _check_positive("alpha", alpha)
        self.n_holes = _check_range("n_holes", n_holes, 1, 10**6, integer=True)
        self.hole_aspect_ratio = _check_positive("hole_aspect_ratio", hole_aspect_ratio)
        self.cut_area_ratio = _check_range("cut_area_ratio", cut_area_ratio, 0.0, 1.0)
        if self.cut_area_ratio[0] <= 0:
            raise ValueError(f"cut_area_ratio must be > 0, got cut_area_ratio={cut_area_ratio!r}.")
        self.cut_aspect_ratio = _check_range("cut_aspect_ratio", cut_aspect_ratio, 0.0, math.inf)
        if self.cut_aspect_ratio[0] <= 0:
            raise ValueError(f"cut_aspect_ratio must be > 0, got cut_aspect_ratio={cut_aspect_ratio!r}.")

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, n_holes={self.n_holes}, cut_area_ratio={self.cut_area_ratio}, "
            f"cut_aspect_ratio={self.cut_aspect_ratio}, mix_prob={self.mix_prob}"
        )

    def get_params(self, x, y):
        _check_images(x, type(self).__name__)
        height, width = x.shape[-2:]
        lam = sample_beta(self.alpha)
        n_holes = _randint(self.n_holes[0], self.n_holes[1] + 1)
        area_ratio = _uniform(*self.cut_area_ratio)
        aspect = _uniform(*self.cut_aspect_ratio)
        cut_w = int(math.sqrt(int(height * width * area_ratio) / aspect))
        cut_h = int(cut_w * aspect)
        cut_w, cut_h = min(max(cut_w, 1), width), min(max(cut_h, 1), height)
        xc1 = int((width - cut_w) * float(torch.rand(())))
        yc1 = int((height - cut_h) * float(torch.rand(())))
        n_holes = min(n_holes, max(cut_w // 2, 1))
        cell_w = math.ceil(cut_w / n_holes)
        cell_h = max(int(cell_w * self.hole_aspect_ratio), 1)
        ratio = math.sqrt(1.0 - lam)
        hole_w = min(max(int(cell_w * ratio), 1), cell_w - 1)
        hole_h = min(max(int(cell_h * ratio), 1), cell_h - 1)
        # vectorised form of the released loop over cells: a pixel is in a hole when its offset within its cell is
        # below the hole size
        rows = torch.arange(height, device=x.device).view(-1, 1) - yc1
        cols = torch.arange(width, device=x.device).view(1, -1) - xc1
        holes = (
            (rows >= 0)
            & (rows < cut_h)
            & (cols >= 0)
            & (cols < cut_w)
            & (rows.remainder(cell_h) < hole_h)
            & (cols.remainder(cell_w) < hole_w)
        )
        mask = (~holes).float().view(1, 1, height, width)
        return {
            "perm": torch.randperm(x.shape[0], device=x.device),
            "mask": mask,
            "lam": float(mask.mean()),
            "sampled_lam": lam,
        }
