"""Corrupting and occluding single images: the 19 common corruptions (ImageNet-C's or CIFAR-10/100-C's
parameters) and random PatchDrop, seeded per row so that every worker and process draws the same pixels.

`params="imagenet"` is `imagecorruptions` (package `imagecorruptions-imaug`, extra `robustness`) as it is, i.e.
ImageNet-C (Hendrycks & Dietterich, 2019); `params="cifar"` dispatches to `cifar_c.CIFAR_C` (CIFAR-10/100-C's
smaller parameters; the paper's CIFAR100-C numbers are on those).
"""

from __future__ import annotations

import math
import zlib
from typing import Literal

import numpy as np
import PIL.Image
import torch

from .cifar_c import CIFAR_C, CIFAR_C_PARAMS

__all__ = [
    "CIFAR_C_PARAMS",
    "CORRUPTIONS",
    "OCCLUSION_RATIOS",
    "RowCorruption",
    "RowOcclusion",
    "corrupt_image",
    "occlude",
    "require_imagecorruptions",
]

# The 19 types of `imagecorruptions.get_corruption_names("all")`, in its order: 15 benchmark + 4 validation types.
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)
OCCLUSION_RATIOS = tuple(i / 10 for i in range(10))  # 0 %, 10 %, ..., 90 % (Table 7)


def require_imagecorruptions():
    """Returns `(imagecorruptions, imagecorruptions.corruptions)`, or raises an ImportError that says what to
    install (the package is an optional extra)."""
    try:
        import imagecorruptions
        import imagecorruptions.corruptions as ops
    except ImportError as err:
        raise ImportError(
            "Corruption robustness needs the `imagecorruptions` package: pip install 'hf_adautomix[robustness]' "
            "(or pip install imagecorruptions-imaug)."
        ) from err
    return imagecorruptions, ops


# The old private name; trainer.py calls it until it switches to `require_imagecorruptions`.
_imagecorruptions = require_imagecorruptions


def _check_args(image: np.ndarray, name: str, severity: int, params: str) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"Expected a corruption in {CORRUPTIONS}, got {name!r}.")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"Expected severity in 1..5, got {severity!r}.")
    if params not in ("imagenet", "cifar"):
        raise ValueError(f"Expected corruption params 'imagenet' or 'cifar', got {params!r}.")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"Expected an (H, W, 3) uint8 image, got shape {image.shape} and dtype {image.dtype}."
        )
    if params == "imagenet" and min(image.shape[:2]) < 32:
        raise ValueError(f"ImageNet-C corruptions need images of at least 32 x 32 px, got {image.shape[:2]}.")


def corrupt_image(
    image: np.ndarray,
    name: str,
    severity: int,
    params: Literal["imagenet", "cifar"] = "imagenet",
    seed: int = 0,
) -> np.ndarray:
    """One corruption of an (H, W, 3) uint8 image, as an (H, W, 3) uint8 image; deterministic given `seed`.

    `params="imagenet"` is `imagecorruptions.corrupt` (ImageNet-C's parameters; it needs H, W >= 32);
    `"cifar"` uses `CIFAR_C_PARAMS` (CIFAR-10/100-C's, made for 32 x 32 images). Numpy's global RNG, which both
    draw from, is seeded with `seed` and restored afterwards.

    Cost: all types are milliseconds on 32 x 32 images. `glass_blur`'s pixel shuffle was a Python loop of seconds
    per ImageNet image in the original code; `imagecorruptions-imaug` compiles it with numba (a few seconds once
    per process, then milliseconds). On 224 x 224 images `zoom_blur`, `glass_blur` and `motion_blur` are the
    slowest (tens of ms); use dataloader workers (`num_workers`) for ImageNet-sized data.
    """
    image = np.asarray(image)
    _check_args(image, name, severity, params)
    imagecorruptions, _ = require_imagecorruptions()
    seed = int(seed) % (2**31)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        if params == "cifar":
            out = CIFAR_C[name](image, CIFAR_C_PARAMS[name][severity - 1], seed)
        else:
            kwargs = {"seed": seed} if name in ("glass_blur", "impulse_noise") else {}
            out = imagecorruptions.corrupt(image, corruption_name=name, severity=severity, **kwargs)
    finally:
        np.random.set_state(state)
    out = np.asarray(out)
    if out.shape != image.shape:  # a few types can come back a pixel off or grey on odd sizes
        out = np.asarray(PIL.Image.fromarray(np.uint8(out)).convert("RGB").resize(image.shape[1::-1]))
    return out.astype(np.uint8)


def occlude(
    x: torch.Tensor, ratio: float, patch_size: int, fill: torch.Tensor, generator: np.random.Generator
) -> torch.Tensor:
    """Random PatchDrop (Naseer et al., 2021): sets `round(ratio * n)` of the n patches of a `patch_size` grid
    over a (C, H, W) image to `fill` (C,), a copy. Edge patches are cut at the border."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"Expected an occlusion ratio in [0, 1], got {ratio}.")
    _, h, w = x.shape
    rows, cols = math.ceil(h / patch_size), math.ceil(w / patch_size)
    count = int(round(ratio * rows * cols))
    out = x.clone()
    for k in generator.choice(rows * cols, size=count, replace=False):
        r, c = divmod(int(k), cols)
        out[:, r * patch_size : (r + 1) * patch_size, c * patch_size : (c + 1) * patch_size] = fill[
            :, None, None
        ]
    return out


class RowCorruption:
    """`corrupt_image` of row `index`, seeded by (seed, corruption, severity, row): the same pixels in any
    dataloader worker or process. Called as `(uint8 HxWx3 image, index) -> uint8 image`."""

    def __init__(self, name: str, severity: int, params: str, seed: int):
        self.name, self.severity, self.params = name, severity, params
        self.seed = zlib.crc32(f"{seed}/{name}/{severity}".encode())

    def __call__(self, image: np.ndarray, index: int) -> np.ndarray:
        return corrupt_image(image, self.name, self.severity, self.params, seed=self.seed + 7919 * index)


class RowOcclusion:
    """`occlude` of row `index`, seeded by (seed, row, ratio). Called as `((C, H, W) tensor, index) -> tensor`."""

    def __init__(self, ratio: float, patch_size: int, fill: torch.Tensor, seed: int):
        self.ratio, self.patch_size, self.fill, self.seed = ratio, patch_size, fill, seed

    def __call__(self, x: torch.Tensor, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, index, int(round(self.ratio * 1000))])
        return occlude(x, self.ratio, self.patch_size, self.fill, rng)
