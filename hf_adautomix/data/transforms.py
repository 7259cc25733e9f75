"""Transform construction: the train and eval transforms of a recipe (`build_transforms`), and the transformers
image processor that reproduces the eval transform (`make_image_processor`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torchvision.transforms import v2

from .arguments import DEFAULT_CROP_SCALE, RAND_AUGMENT_LEVELS
from .in_memory import BatchPlan

if TYPE_CHECKING:
    from .config import TransformInfo

EVAL_CROP_PCT = 0.875  # ImageNet eval: resize to size / 0.875, then centre-crop size
# The resizes our tensor transforms share with transformers' torchvision image processors (its PIL NEAREST maps to
# NEAREST_EXACT, PIL's own pixel-centre rule), so that the exported processor gives the same pixels.
INTERPOLATIONS = {
    "nearest": v2.InterpolationMode.NEAREST_EXACT,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}

Recipe = Literal["cifar", "imagenet", "none"]


def recipe_crop_pct(recipe: str) -> float | None:
    """The eval crop of a recipe: 0.875 for "imagenet", none (resize to size x size) for the others."""
    return EVAL_CROP_PCT if recipe == "imagenet" else None


def _resize_side(size: int, crop_pct: float) -> int:
    """The short side the eval transform resizes to before its centre crop (timm's `floor(size / crop_pct)`); the
    epsilon keeps a crop_pct derived from integer sizes (e.g. 224 / 232) from rounding one pixel down."""
    return int(size / crop_pct + 1e-6)


def build_transforms(
    recipe: Recipe,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
    rand_augment: tuple[int, int] | None = None,
    crop_pct: float | None | Literal["recipe"] = "recipe",
    interpolation: str = "bilinear",
) -> tuple[v2.Compose, v2.Compose]:
    """Train and eval transforms from an RGB PIL image to a normalised float tensor (3, size, size).

    - "cifar": train = resize to size x size if needed, `RandomCrop(size, padding=4, padding_mode="reflect")`,
      horizontal flip; eval = resize to size x size if needed.
    - "imagenet": train = `RandomResizedCrop(size, scale=crop_scale)`, horizontal flip; eval = resize the short
      side to `int(size / 0.875)`, centre-crop size.
    - "none": resize to size x size if needed, for both.

    `crop_pct` replaces the recipe's eval geometry (a float: resize the short side to `int(size / crop_pct)`,
    centre-crop size; None: resize to size x size), and `interpolation` every resize's, as a pretrained model's
    config asks (`resolve_transforms`).

    We build these rather than take timm's `create_transform`: it resizes PIL images and rounds the crop offset to
    nearest, so no transformers image processor would reproduce its pixels (`make_image_processor`), and its
    RandAugment draws from Python's `random`, which `_BatchTransform`'s per-row seeding does not reach.

    `rand_augment=(num_ops, magnitude)` appends torchvision v2's `RandAugment` to the "cifar" and "imagenet"
    train transforms, the magnitude on timm's 0..10 scale (11 bins), filling with the mean colour as timm does.
    It draws from torch's RNG only, so `_BatchTransform`'s per-row seeding covers it (timm's
    `rand_augment_transform` draws from Python's `random`, which that seeding does not reach). The released
    recipes' magnitude noise (std 0.5) is not reproduced.

    Geometry runs on uint8 tensors (antialiased bilinear), the same arithmetic as transformers' torchvision
    image processors, so `make_image_processor` reproduces the eval transform.
    """
    if recipe not in ("cifar", "imagenet", "none"):
        raise ValueError(f"Expected recipe 'cifar', 'imagenet' or 'none', got {recipe!r}.")
    if size < 1:
        raise ValueError(f"Expected a positive image size, got {size}.")
    lo, hi = crop_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"Expected crop_scale (lo, hi) with 0 < lo <= hi <= 1, got {crop_scale!r}.")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"Expected interpolation to be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}."
        )
    mode = INTERPOLATIONS[interpolation]
    crop_pct = recipe_crop_pct(recipe) if crop_pct == "recipe" else crop_pct
    if crop_pct is not None and not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"Expected crop_pct in (0, 1] or None, got {crop_pct!r}.")
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    square = v2.Resize((size, size), interpolation=mode)  # a no-op on images already size x size
    if crop_pct is None:
        evaluation = [square]
    else:
        evaluation = [v2.Resize(_resize_side(size, crop_pct), interpolation=mode), _CenterCrop(size)]
    if recipe == "cifar":
        train = [square, v2.RandomCrop(size, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip()]
    elif recipe == "imagenet":
        train = [v2.RandomResizedCrop(size, scale=(lo, hi), interpolation=mode), v2.RandomHorizontalFlip()]
    else:
        train = [square]
    if rand_augment is not None and recipe != "none":
        num_ops, magnitude = rand_augment
        if num_ops < 0 or not 0 <= magnitude <= RAND_AUGMENT_LEVELS:
            raise ValueError(
                f"Expected rand_augment (num_ops >= 0, magnitude in 0..{RAND_AUGMENT_LEVELS}), got {rand_augment!r}."
            )
        # Fill with the mean colour, as timm's RandAugment does.
        fill = [min(255, max(0, round(255 * m))) for m in mean]
        train = [
            *train,
            v2.RandAugment(
                num_ops=num_ops,
                magnitude=magnitude,
                num_magnitude_bins=RAND_AUGMENT_LEVELS + 1,
                interpolation=v2.InterpolationMode.BILINEAR,
                fill=fill,
            ),
        ]
    train_tf = v2.Compose([v2.ToImage(), *train, *finish])
    eval_tf = v2.Compose([v2.ToImage(), *evaluation, *finish])
    # What `apply_transforms` can run on whole batches of images decoded once: square resize (per image, once),
    # then the CIFAR crop and flip drawn per row, then float + normalise.
    if crop_pct is None and (recipe == "none" or (recipe == "cifar" and rand_augment is None)):
        prepare, cifar = v2.Compose([v2.ToImage(), square]), recipe == "cifar"
        eval_tf.batch_plan = BatchPlan(prepare, 0, False, tuple(mean), tuple(std))
        train_tf.batch_plan = BatchPlan(prepare, 4 if cifar else 0, cifar, tuple(mean), tuple(std))
    return train_tf, eval_tf


class _CenterCrop(torch.nn.Module):
    """Centre crop whose offset rounds down, as in transformers' image processors.

    `v2.CenterCrop` rounds a half-pixel offset to even instead; we write our own so that the exported image
    processor gives exactly the eval pixels.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        top, left = int((height - self.size) / 2.0), int((width - self.size) / 2.0)
        return v2.functional.crop(image, top, left, self.size, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def make_image_processor(info: TransformInfo):
    """A transformers image processor that reproduces the eval transform, for `pipeline("image-classification")`.

    A `ViTImageProcessor` (torchvision backend, the arithmetic of our transforms): resize to size x size when the
    eval transform has no crop ("cifar", "none"); else resize the short side to `int(size / crop_pct)` and
    centre-crop size. The resample follows `info.interpolation`.
    """
    from transformers import ViTImageProcessor
    from transformers.image_utils import PILImageResampling

    if info.recipe not in ("cifar", "imagenet", "none"):
        raise ValueError(f"Expected recipe 'cifar', 'imagenet' or 'none', got {info.recipe!r}.")
    common = {
        "resample": PILImageResampling[info.interpolation.upper()],
        "do_rescale": True,
        "do_normalize": True,
        "image_mean": list(info.mean),
        "image_std": list(info.std),
    }
    size, crop_pct = info.size, info.eval_crop_pct
    if crop_pct is None:
        return ViTImageProcessor(do_resize=True, size={"height": size, "width": size}, **common)
    return ViTImageProcessor(
        do_resize=True,
        size={"shortest_edge": _resize_side(size, crop_pct)},
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        **common,
    )
