"""Robustness of an exported classifier: clean metrics and calibration, common corruptions, FGSM and occlusion.

The evaluations of the AdAutoMix paper (Table 4: clean / corruption accuracy and FGSM error of CIFAR-100
ResNet-18s; Table 7 and Fig. 5: accuracy under random 16x16 patch drop at 0-90 %; Fig. 4 / Table 6: ECE and
reliability diagrams), run on any exported model (`load_exported`) and any `datasets` image dataset::

    model = load_exported("out/")  # transformers folder, timm export folder, "local-dir:"/"hf-hub:" or a Hub id
    results = evaluate_robustness(model, dataset, batch_size=256, output_dir="robustness/")

Corruptions come from `imagecorruptions` (package `imagecorruptions-imaug`, extra `robustness`), applied on the fly
to the decoded uint8 images before the model's eval preprocessing. `corruption_params="imagenet"` uses that
package as it is, i.e. ImageNet-C's parameters (Hendrycks & Dietterich, 2019); `"cifar"` uses CIFAR-10/100-C's
smaller ones (`CIFAR_C_PARAMS`; the paper's CIFAR100-C numbers are on those), written here on top of the
package's helpers.

Every pass runs through `accelerate`: the dataloader is `Accelerator.prepare`d and the outputs gathered with
`gather_for_metrics`, so `accelerate launch` splits the data over processes; a plain `python` run is one process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Literal

import datasets
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..data import IMAGE_COLUMN_CANDIDATES, LABEL_COLUMN_CANDIDATES, build_transforms, decode_image
from .metrics import ece, nll, top1, topk_accuracy

logger = logging.getLogger(__name__)

__all__ = [
    "CIFAR_C_PARAMS",
    "CORRUPTIONS",
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
    "occlude",
    "predict",
    "results_markdown",
    "robustness_metrics",
    "robustness_subset",
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
FGSM_EPSILON = 8 / 255

# CIFAR-10/100-C parameters, severities 1..5, from Hendrycks' `make_cifar_c.py`
# (github.com/hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py). We checked them against a public copy of
# that file (its header says "copied from" it); we could not open the original offline. Where CIFAR-C's algorithm
# differs from ImageNet-C's, `_cifar_*` below follows CIFAR-C: plasma fractal of the image's size (fog), the frost
# pictures scaled by 0.2 (frost), a BOX upsampling (pixelate), a random affine before a differently
# parameterised elastic warp (elastic_transform). Motion blur (motion_blur, snow) was ImageMagick's in CIFAR-C;
# like `imagecorruptions` we use its numpy re-implementation, so those two only approximate CIFAR-C.
CIFAR_C_PARAMS: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],  # noise std
    "shot_noise": [500, 250, 100, 75, 50],  # Poisson photons per unit intensity
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],  # salt & pepper amount
    "speckle_noise": [0.06, 0.1, 0.12, 0.16, 0.2],  # multiplicative noise std
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1.0],  # sigma
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],  # sigma, delta, iters
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # disk radius, alias blur
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],  # radius, sigma
    "zoom_blur": [
        np.arange(1, 1.06, 0.01),
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.01),
        np.arange(1, 1.26, 0.01),
    ],  # fmt: skip
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],  # strength, wibble decay
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],  # image weight, frost weight
    "snow": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],  # fmt: skip
    "spatter": [
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ],  # fmt: skip
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
    "jpeg_compression": [80, 65, 58, 50, 40],  # quality
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],  # downscale factor
    # (alpha, sigma, affine max shift) as fractions of the image side
    "elastic_transform": [
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ],
}


def _imagecorruptions():
    try:
        import imagecorruptions
        import imagecorruptions.corruptions as ops
    except ImportError as err:  # an optional extra
        raise ImportError(
            "Corruption robustness needs the `imagecorruptions` package: pip install 'hf_adautomix[robustness]' "
            "(or pip install imagecorruptions-imaug)."
        ) from err
    return imagecorruptions, ops


# ----------------------------------------------------------------------------------------------------------
# Corruptions
# ----------------------------------------------------------------------------------------------------------


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.filters import gaussian

    return gaussian(x, sigma=sigma, channel_axis=-1 if x.ndim == 3 else None)


def _hsv(x: np.ndarray, channel: int, scale: float, shift: float) -> np.ndarray:
    import skimage.color

    hsv = skimage.color.rgb2hsv(x)
    hsv[..., channel] = np.clip(hsv[..., channel] * scale + shift, 0, 1)
    return skimage.color.hsv2rgb(hsv)


def _cifar_corrupt(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """CIFAR-C's version of corruption `name` on an (H, W, 3) uint8 image; uses numpy's global RNG (seeded)."""
    import cv2
    import skimage.util
    from scipy.ndimage import map_coordinates

    _, ops = _imagecorruptions()
    c = CIFAR_C_PARAMS[name][severity - 1]
    x = image.astype(np.float64) / 255.0
    h, w = x.shape[:2]
    if name == "gaussian_noise":
        x = x + np.random.normal(size=x.shape, scale=c)
    elif name == "shot_noise":
        x = np.random.poisson(x * c) / c
    elif name == "impulse_noise":
        x = skimage.util.random_noise(x, mode="s&p", rng=seed, amount=c)
    elif name == "speckle_noise":
        x = x + x * np.random.normal(size=x.shape, scale=c)
    elif name == "gaussian_blur":
        x = _gauss(x, c)
    elif name == "glass_blur":
        blurred = np.uint8(_gauss(x, c[0]) * 255)
        # The package's numba loop: local pixel shuffling, fast after its first (compiling) call.
        shuffled = ops._shuffle_pixels_njit_glass_blur(h, w, blurred, c, seed)
        x = _gauss(shuffled / 255.0, c[0])
    elif name == "defocus_blur":
        kernel = ops.disk(radius=c[0], alias_blur=c[1])
        x = np.stack([cv2.filter2D(x[..., d], -1, kernel) for d in range(3)], axis=-1)
    elif name == "motion_blur":
        x = ops._motion_blur(image, radius=c[0], sigma=c[1], angle=np.random.uniform(-45, 45)) / 255.0
    elif name == "zoom_blur":
        x32 = x.astype(np.float32)
        out = np.zeros_like(x32)
        for factor in c:
            out += ops.clipped_zoom(x32, factor)[:h, :w]
        x = (x32 + out) / (len(c) + 1)
    elif name == "fog":
        size = 1 << (max(h, w) - 1).bit_length()  # the next power of two
        max_val = x.max()
        x = x + c[0] * ops.plasma_fractal(mapsize=size, wibbledecay=c[1])[:h, :w][..., None]
        x = x * max_val / (max_val + c[0])
    elif name == "frost":
        import importlib.resources

        # CIFAR-C draws from the first five of the six frost pictures.
        picture = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")[np.random.randint(5)]
        with importlib.resources.as_file(
            importlib.resources.files("imagecorruptions") / "frost" / picture
        ) as path:
            frost = cv2.imread(str(path))
        frost = cv2.resize(frost, (0, 0), fx=0.2, fy=0.2)
        if (
            frost.shape[0] <= h or frost.shape[1] <= w
        ):  # images larger than CIFAR's: scale the frost up to fit
            scale = 1.1 * max(h / frost.shape[0], w / frost.shape[1])
            frost = cv2.resize(frost, (0, 0), fx=scale, fy=scale)
        top, left = np.random.randint(0, frost.shape[0] - h), np.random.randint(0, frost.shape[1] - w)
        x = (c[0] * image + c[1] * frost[top : top + h, left : left + w][..., [2, 1, 0]]) / 255.0
    elif name == "snow":
        xf = x.astype(np.float32)
        layer = np.random.normal(size=(h, w), loc=c[0], scale=c[1])
        layer = ops.clipped_zoom(layer[..., None], c[2])[:h, :w]
        layer[layer < c[3]] = 0
        layer = np.round(np.clip(layer.squeeze(-1), 0, 1) * 255).astype(np.uint8)
        layer = ops._motion_blur(layer, radius=c[4], sigma=c[5], angle=np.random.uniform(-135, -45))
        layer = (np.round(layer) / 255.0)[..., None]
        gray = cv2.cvtColor(xf, cv2.COLOR_RGB2GRAY)[..., None]
        xf = c[6] * xf + (1 - c[6]) * np.maximum(xf, gray * 1.5 + 0.5)
        x = xf + layer + np.rot90(layer, k=2)
    elif name == "spatter":
        x = _spatter(x.astype(np.float32), c)
    elif name == "contrast":
        means = x.mean(axis=(0, 1), keepdims=True)
        x = (x - means) * c + means
    elif name == "brightness":
        x = _hsv(x, 2, 1.0, c)
    elif name == "saturate":
        x = _hsv(x, 1, c[0], c[1])
    elif name == "jpeg_compression":
        buffer = BytesIO()
        PIL.Image.fromarray(image).save(buffer, "JPEG", quality=c)
        return np.asarray(PIL.Image.open(buffer).convert("RGB"), dtype=np.uint8)
    elif name == "pixelate":
        small = PIL.Image.fromarray(image).resize((int(w * c), int(h * c)), PIL.Image.BOX)
        return np.asarray(small.resize((w, h), PIL.Image.BOX), dtype=np.uint8)
    elif name == "elastic_transform":
        x = _elastic(x.astype(np.float32), [v * min(h, w) for v in c], map_coordinates)
    else:
        raise ValueError(f"Expected a corruption in {CORRUPTIONS}, got {name!r}.")
    return np.uint8(np.clip(x, 0, 1) * 255)


def _spatter(x: np.ndarray, c) -> np.ndarray:
    """CIFAR-C's spatter: water drops (c[5] == 0) or mud (c[5] == 1)."""
    import cv2

    liquid = _gauss(np.random.normal(size=x.shape[:2], loc=c[0], scale=c[1]), c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        liquid = (liquid * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = liquid * dist
        m = m / max(float(m.max()), 1e-12) * c[4]
        water = np.array([238, 238, 175], dtype=np.float32) / 255.0  # pale turquoise, RGB
        return x + m[..., None] * water
    m = _gauss(np.where(liquid > c[3], 1.0, 0.0).astype(np.float32), c[4])
    m[m < 0.8] = 0
    mud = np.array([63, 42, 20], dtype=np.float32) / 255.0  # mud brown, RGB
    return x * (1 - m[..., None]) + m[..., None] * mud


def _elastic(x: np.ndarray, c: Sequence[float], map_coordinates) -> np.ndarray:
    """CIFAR-C's elastic transform: a random affine (corners moved by up to c[2] px), then an elastic warp of
    strength c[0] and smoothness c[1] (px)."""
    import cv2

    h, w = x.shape[:2]
    center = np.float32((h, w)) // 2
    half = min(h, w) // 3
    pts1 = np.float32([center + half, [center[0] + half, center[1] - half], center - half])
    pts2 = pts1 + np.random.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    x = cv2.warpAffine(x, cv2.getAffineTransform(pts1, pts2), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx = (_gauss(np.random.uniform(-1, 1, size=(h, w)), c[1]) * c[0]).astype(np.float32)
    dy = (_gauss(np.random.uniform(-1, 1, size=(h, w)), c[1]) * c[0]).astype(np.float32)
    yy, xx, zz = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    coords = (yy + dy[..., None]).reshape(-1), (xx + dx[..., None]).reshape(-1), zz.reshape(-1)
    return map_coordinates(x, coords, order=1, mode="reflect").reshape(x.shape)


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
    if name not in CORRUPTIONS:
        raise ValueError(f"Expected a corruption in {CORRUPTIONS}, got {name!r}.")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"Expected severity in 1..5, got {severity!r}.")
    if params not in ("imagenet", "cifar"):
        raise ValueError(f"Expected corruption params 'imagenet' or 'cifar', got {params!r}.")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"Expected an (H, W, 3) uint8 image, got shape {image.shape} and dtype {image.dtype}."
        )
    if params == "imagenet" and min(image.shape[:2]) < 32:
        raise ValueError(f"ImageNet-C corruptions need images of at least 32 x 32 px, got {image.shape[:2]}.")
    imagecorruptions, _ = _imagecorruptions()
    seed = int(seed) % (2**31)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        if params == "cifar":
            out = _cifar_corrupt(image, name, severity, seed)
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


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------


class _Logits(torch.nn.Module):
    """A timm or transformers classifier as `pixel_values -> logits`."""

    def __init__(self, model: torch.nn.Module, family: str):
        super().__init__()
        self.model, self.family = model, family

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.family == "timm":
            return self.model(pixel_values)
        return self.model(pixel_values=pixel_values).logits


@dataclass
class LoadedModel:
    """An exported classifier ready to evaluate.

    Attributes:
        model: `pixel_values (N, 3, size, size) -> logits (N, K)`, in eval mode.
        transform: the export's eval preprocessing, RGB PIL image -> normalised float tensor (3, size, size).
        mean: per-channel normalisation mean, [0, 1] units.
        std: per-channel normalisation std, [0, 1] units.
        size: input side.
        id2label: class names by id.
        source: what was loaded, e.g. "transformers:out/".
    """

    model: torch.nn.Module
    transform: Callable
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    id2label: dict[int, str] = field(default_factory=dict)
    source: str = ""


def _is_timm_export(path: str) -> bool:
    if path.startswith(("local-dir:", "hf-hub:")):
        return True
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        cfg = json.load(f)
    # timm's `save_for_timm` config: "architecture" + "pretrained_cfg", no transformers "model_type".
    return "architecture" in cfg and "model_type" not in cfg


def load_exported(path: str, device: str | torch.device | None = None) -> LoadedModel:
    """Loads an exported classifier and its eval preprocessing, as its own library records them.

    - timm: a folder written by `timm.models.push_to_hf_hub`/`save_for_timm` (config.json with "architecture"),
      or "local-dir:DIR" / "hf-hub:ID": `timm.create_model(..., pretrained=True)`; the preprocessing is
      `timm.data.resolve_data_config` over its `pretrained_cfg`.
    - transformers: a folder or Hub id for `AutoModelForImageClassification` (TimmWrapper included); the
      preprocessing is the saved image processor (`AutoImageProcessor`).

    Both go through `data.pretrained_data_config`, and the transform is `data.build_transforms`' eval transform
    with that size, crop, interpolation and mean/std: the same pixels as the export's processor.

    Raises:
        ValueError: when the export records no preprocessing (a transformers folder without an image processor).
    """
    from ..data import pretrained_data_config

    if _is_timm_export(path):
        import timm

        name = path if path.startswith(("local-dir:", "hf-hub:")) else f"local-dir:{path}"
        model = timm.create_model(name, pretrained=True)
        family = "timm"
        id2label = dict(enumerate(getattr(model, "pretrained_cfg", {}).get("label_names") or []))
    else:
        from transformers import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(path)
        family = "transformers"
        id2label = {int(k): v for k, v in (model.config.id2label or {}).items()}
    model.eval()
    config = pretrained_data_config(model)
    if config is None:
        raise ValueError(
            f"The export at {path!r} records no eval preprocessing (no image processor / pretrained_cfg); "
            "save one with the model (AdAutoMixTrainer.save_model does)."
        )
    _, transform = build_transforms(
        "imagenet",
        config["size"],
        tuple(config["mean"]),
        tuple(config["std"]),
        crop_pct=config["crop_pct"],
        interpolation=config["interpolation"],
    )
    wrapped = _Logits(model, family).eval()
    if device is not None:
        wrapped.to(device)
    return LoadedModel(
        model=wrapped,
        transform=transform,
        mean=tuple(float(m) for m in config["mean"]),
        std=tuple(float(s) for s in config["std"]),
        size=int(config["size"]),
        id2label=id2label,
        source=f"{family}:{path}",
    )


# ----------------------------------------------------------------------------------------------------------
# Data and the prediction loop
# ----------------------------------------------------------------------------------------------------------

_INDEX = "__robustness_index__"


def _column(ds: datasets.Dataset, given: str | None, candidates: tuple[str, ...], kind: str) -> str:
    if given is not None:
        if given not in ds.column_names:
            raise ValueError(f"No {kind} column {given!r} in the dataset; its columns are {ds.column_names}.")
        return given
    for name in candidates:
        if name in ds.column_names:
            return name
    raise ValueError(
        f"Found no {kind} column (tried {list(candidates)}) in the dataset; its columns are {ds.column_names}."
    )


class _Corrupt:
    """Per-image corruption, seeded by (seed, corruption, severity, row): reproducible in any worker/process."""

    def __init__(self, name: str, severity: int, params: str, seed: int):
        self.name, self.severity, self.params = name, severity, params
        self.seed = zlib.crc32(f"{seed}/{name}/{severity}".encode())

    def __call__(self, image: np.ndarray, index: int) -> np.ndarray:
        return corrupt_image(image, self.name, self.severity, self.params, seed=self.seed + 7919 * index)


class _Occlude:
    def __init__(self, ratio: float, patch_size: int, fill: torch.Tensor, seed: int):
        self.ratio, self.patch_size, self.fill, self.seed = ratio, patch_size, fill, seed

    def __call__(self, x: torch.Tensor, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, index, int(round(self.ratio * 1000))])
        return occlude(x, self.ratio, self.patch_size, self.fill, rng)


class _Prepare:
    """The `with_transform` function: decode, RGB, optional uint8 corruption, eval transform, optional occlusion."""

    def __init__(self, transform, image_column: str, label_column: str, pre=None, post=None):
        self.transform, self.image_column, self.label_column = transform, image_column, label_column
        self.pre, self.post = pre, post

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pixels = []
        for value, index in zip(batch[self.image_column], batch[_INDEX]):
            image = decode_image(value, index)
            if self.pre is not None:
                image = PIL.Image.fromarray(self.pre(np.asarray(image, dtype=np.uint8), index))
            x = self.transform(image)
            pixels.append(self.post(x, index) if self.post is not None else x)
        return {"pixel_values": pixels, "labels": batch[self.label_column]}


def _collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
        "labels": torch.tensor([int(r["labels"]) for r in rows], dtype=torch.long),
    }


def _accelerator(accelerator=None):
    if accelerator is not None:
        return accelerator
    from accelerate import Accelerator

    return Accelerator()


def fgsm(
    net: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """FGSM (Goodfellow et al., 2015) on a normalised batch: `x + epsilon / std * sign(grad_x CE)`, clipped to the
    normalised image of [0, 1]; `epsilon` in [0, 1] pixel units. The gradient is of the batch's mean cross-entropy
    with the true labels; `net` (`pixel_values -> logits`) should be in eval mode."""
    mean_, std_ = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, -1, 1, 1) for v in (mean, std))
    lo, hi = (0 - mean_) / std_, (1 - mean_) / std_  # pixel values 0 and 1, normalised
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(F.cross_entropy(net(x), labels), x)
    return torch.maximum(torch.minimum(x.detach() + epsilon / std_ * grad.sign(), hi), lo)


def predict(
    model: LoadedModel,
    dataset: datasets.Dataset,
    *,
    batch_size: int = 128,
    image_column: str | None = None,
    label_column: str | None = None,
    pre: Callable[[np.ndarray, int], np.ndarray] | None = None,
    post: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    fgsm_epsilon: float | None = None,
    num_workers: int = 0,
    accelerator=None,
    desc: str | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of `model` on `dataset` (all processes' rows, in order, after `gather_for_metrics`).

    Args:
        model: from `load_exported`.
        dataset: rows with an image and an integer label column (found as `load_image_datasets` finds them).
        pre: `(uint8 HxWx3 image, row) -> uint8 image`, before the eval transform (corruptions).
        post: `(normalised (3, H, W) tensor, row) -> tensor`, after it (occlusion).
        fgsm_epsilon: attack each batch with FGSM of this L-inf radius in [0, 1] pixel units (see `evaluate_fgsm`).
        num_workers: dataloader workers (corruptions run in them).
        accelerator: an `accelerate.Accelerator`; None makes one.
    """
    from tqdm.auto import tqdm

    accelerator = _accelerator(accelerator)
    image_column = _column(dataset, image_column, IMAGE_COLUMN_CANDIDATES, "image")
    label_column = _column(dataset, label_column, LABEL_COLUMN_CANDIDATES, "label")
    ds = dataset.select_columns([image_column, label_column])
    ds = ds.add_column(_INDEX, np.arange(len(ds)))
    ds = ds.with_transform(_Prepare(model.transform, image_column, label_column, pre, post))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, collate_fn=_collate, num_workers=num_workers
    )
    loader = accelerator.prepare(loader)
    net = model.model.to(accelerator.device).eval()
    logits_all, labels_all = [], []
    for batch in tqdm(loader, desc=desc, disable=not (progress and accelerator.is_local_main_process)):
        x, y = batch["pixel_values"], batch["labels"]
        if fgsm_epsilon is not None:
            x = fgsm(net, x, y, fgsm_epsilon, model.mean, model.std)
        with torch.no_grad():
            logits = net(x).float()
        logits, y = accelerator.gather_for_metrics((logits, y))
        logits_all.append(logits.cpu().numpy())
        labels_all.append(y.cpu().numpy())
    return np.concatenate(logits_all), np.concatenate(labels_all)


# ----------------------------------------------------------------------------------------------------------
# The evaluations
# ----------------------------------------------------------------------------------------------------------


def _summary(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": top1(logits, labels),
        "top5_accuracy": topk_accuracy(logits, labels, k=min(5, logits.shape[1])),
        "nll": nll(logits, labels),
        "ece": ece(logits, labels, n_bins=15, from_logits=True),
    }


def clean_metrics(
    model: LoadedModel, dataset: datasets.Dataset, **kwargs
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Top-1, top-5 (k = min(5, K)), NLL and ECE (15 bins) on the clean data; also returns the logits and labels
    (for `visualize.save_reliability_diagram`). `kwargs` go to `predict`."""
    logits, labels = predict(model, dataset, desc="clean", **kwargs)
    return _summary(logits, labels), logits, labels


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
            pre = _Corrupt(name, severity, params, seed)
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
        post = _Occlude(float(ratio), patch_size, value, seed) if ratio > 0 else None
        logits, labels = predict(model, dataset, post=post, desc=f"occlusion {ratio:.0%}", **kwargs)
        accuracy[f"{float(ratio):g}"] = top1(logits, labels)
    return {"patch_size": patch_size, "fill": fill, "accuracy": accuracy}


# ----------------------------------------------------------------------------------------------------------
# During training: a small fixed subset (`AdAutoMixTrainer` with `--eval_robustness`)
# ----------------------------------------------------------------------------------------------------------

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
        corrupt = _Corrupt(name, severity, params, seed)
        out = np.stack([corrupt(x, i) for i, x in enumerate(hwc)])
        corrupted[name] = torch.from_numpy(out).permute(0, 3, 1, 2)
    drop = _Occlude(occlusion_ratio, patch_size, torch.zeros(clean.shape[1], dtype=torch.uint8), seed)
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
            if attack:
                y = subset.labels[i : i + batch_size].to(param.device)
                x = fgsm(net, x, y, epsilon, subset.mean, subset.std)
            with torch.no_grad():
                logits.append(net(x).float().cpu())
        return top1(torch.cat(logits).numpy(), subset.labels.numpy())

    out = {f"robust_{name}_top1": accuracy(images) for name, images in subset.corrupted.items()}
    out["robust_corruption_top1"] = float(np.mean(list(out.values())))
    out["robust_fgsm_error"] = 1.0 - accuracy(subset.clean, attack=True)
    out[f"robust_occlusion{round(100 * subset.occlusion_ratio)}_top1"] = accuracy(subset.occluded)
    return out


# ----------------------------------------------------------------------------------------------------------
# Everything, with files
# ----------------------------------------------------------------------------------------------------------


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def results_markdown(results: dict[str, Any]) -> str:
    """The results of `evaluate_robustness` as markdown tables (percentages)."""
    lines = [f"# Robustness of {results.get('model', 'the model')}", ""]
    lines.append(f"{results.get('num_samples', '?')} evaluation images.")
    if "clean" in results:
        c = results["clean"]
        lines += [
            "",
            "## Clean",
            "",
            "| top-1 (%) | top-5 (%) | NLL | ECE (%, 15 bins) |",
            "|---|---|---|---|",
        ]
        lines.append(
            f"| {_pct(c['accuracy'])} | {_pct(c['top5_accuracy'])} | {c['nll']:.4f} | {_pct(c['ece'])} |"
        )
    if "corruptions" in results:
        r = results["corruptions"]
        sev = list(r["severity_mean_error"])
        lines += ["", f"## Corruptions ({r['params']} parameters): top-1 error (%)", ""]
        lines += ["| corruption | " + " | ".join(f"s{s}" for s in sev) + " | mean |"]
        lines += ["|---" * (len(sev) + 2) + "|"]
        for name, errs in r["error"].items():
            row = " | ".join(_pct(errs[s]) for s in sev)
            lines.append(f"| {name} | {row} | {_pct(r['type_mean_error'][name])} |")
        row = " | ".join(_pct(r["severity_mean_error"][s]) for s in sev)
        lines.append(f"| **mean** | {row} | **{_pct(r['mean_error'])}** |")
        lines += ["", f"Mean corruption accuracy: {_pct(r['mean_accuracy'])} %."]
    if "fgsm" in results:
        f = results["fgsm"]
        lines += ["", "## FGSM (white box)", "", "| epsilon | error (%) |", "|---|---|"]
        lines.append(f"| {f['epsilon'] * 255:.3g}/255 | {_pct(f['error'])} |")
    if "occlusion" in results:
        o = results["occlusion"]
        ratios = list(o["accuracy"])
        lines += [
            "",
            f"## Occlusion ({o['patch_size']} px patches, fill {o['fill']}): top-1 accuracy (%)",
            "",
        ]
        lines += ["| " + " | ".join(f"{float(r):.0%}" for r in ratios) + " |", "|---" * len(ratios) + "|"]
        lines.append("| " + " | ".join(_pct(o["accuracy"][r]) for r in ratios) + " |")
    return "\n".join(lines) + "\n"


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
    from .. import visualize

    accelerator = _accelerator(accelerator)
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
        os.makedirs(output_dir, exist_ok=True)
        files = {"json": os.path.join(output_dir, "robustness.json"), "markdown": "robustness.md"}
        files["markdown"] = os.path.join(output_dir, "robustness.md")
        files["reliability_diagram"] = visualize.save_reliability_diagram(
            logits, labels, os.path.join(output_dir, "reliability_diagram.png"), n_bins=15
        )
        if "occlusion" in results:
            occ = results["occlusion"]
            files["occlusion_plot"] = visualize.save_occlusion_plot(
                {model.source: occ["accuracy"]},
                os.path.join(output_dir, "occlusion.png"),
                title=f"Random PatchDrop ({occ['patch_size']} px)",
            )
        if "corruptions" in results:
            files["corruption_plot"] = visualize.save_corruption_plot(
                results["corruptions"], os.path.join(output_dir, "corruptions.png")
            )
        results["files"] = files
        with open(files["json"], "w") as f:
            json.dump(results, f, indent=2)
        with open(files["markdown"], "w") as f:
            f.write(results_markdown(results))
        logger.info("Wrote %s and %s.", files["json"], files["markdown"])
    return results
