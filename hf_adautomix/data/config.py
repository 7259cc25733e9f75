"""The transform decision: which recipe, size, eval crop, interpolation and mean/std the data gets
(`TransformInfo`), from the data, the data arguments and the model's data facts (plain values from
`adapter.data_facts()`: this package never looks at a model)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import datasets
import numpy as np
from torchvision.transforms import v2

from .arguments import DEFAULT_CROP_SCALE, DataTrainingArguments
from .decoding import ROW_COLUMN, decode_image
from .loading import ImageData
from .transforms import INTERPOLATIONS, Recipe, build_transforms, recipe_crop_pct

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_IMAGE_MAX_SIDE = 64  # "auto" picks the CIFAR recipe at or below this size, the ImageNet one above


@dataclass(frozen=True)
class TransformInfo:
    """What the transforms do, enough to rebuild them or to export a matching image processor.

    Attributes:
        recipe: "cifar", "imagenet" or "none" (never "auto").
        size: side of the square output images.
        mean: per-channel normalisation mean, in [0, 1] units.
        std: per-channel normalisation std, in [0, 1] units.
        crop_scale: area range of the "imagenet" recipe's RandomResizedCrop (unused by the other recipes).
        rand_augment: `(num_ops, magnitude)` of the training RandAugment (magnitude of 0..10), or None.
        crop_pct: the eval geometry: a float resizes the short side to `int(size / crop_pct)` and centre-crops
            size (timm's and ConvNeXt's `crop_pct`); None resizes to size x size; "recipe" is the recipe's own
            (0.875 for "imagenet", else None).
        interpolation: "bilinear", "bicubic" or "nearest", for the resizes of both transforms.
    """

    recipe: Recipe
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE
    rand_augment: tuple[int, int] | None = None
    crop_pct: float | None | Literal["recipe"] = "recipe"
    interpolation: str = "bilinear"

    @property
    def eval_crop_pct(self) -> float | None:
        """`crop_pct` with "recipe" resolved."""
        return recipe_crop_pct(self.recipe) if self.crop_pct == "recipe" else self.crop_pct


def compute_mean_std(
    dataset: datasets.Dataset, image_column: str, max_images: int = 2000, seed: int = 0
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of the RGB pixels of up to `max_images` images, in [0, 1] units.

    Every image counts once, whatever its size: the mean is the average of the per-image channel means, and
    std = sqrt(E[x^2] - mean^2) with E[x^2] the average of the per-image channel means of x^2 (otherwise one large
    image would outweigh thousands of small ones). A random sample (seeded) is used when the dataset has more
    than `max_images` rows.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("Cannot compute the mean/std of an empty dataset.")
    if n > max_images:
        indices = np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))
    else:
        indices = np.arange(n)
    raw = dataset.with_format(None).cast_column(image_column, datasets.Image(decode=False)).select(indices)
    rows = raw[ROW_COLUMN] if ROW_COLUMN in raw.column_names else indices.tolist()
    means, square_means = [], []
    for value, row in zip(raw[image_column], rows):
        pixels = np.asarray(decode_image(value, row), dtype=np.float64).reshape(-1, 3) / 255.0
        means.append(pixels.mean(axis=0))
        square_means.append((pixels**2).mean(axis=0))
    mean = np.mean(means, axis=0)
    # A constant channel would divide by zero; 1e-3 keeps it finite (such a channel carries no signal).
    std = np.maximum(np.sqrt(np.maximum(np.mean(square_means, axis=0) - mean**2, 0.0)), 1e-3)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def resolve_transform_info(
    image_data: ImageData,
    data_args: DataTrainingArguments,
    image_size: int | None = None,
    image_mean: tuple[float, ...] | None = None,
    image_std: tuple[float, ...] | None = None,
    seed: int = 0,
    *,
    crop_pct: float | None | Literal["recipe"] = "recipe",
    interpolation: str = "bilinear",
    recipe: Recipe | None = None,
) -> TransformInfo:
    """Decides the recipe, size and normalisation of the transforms.

    Recipe: `data_args.transform_recipe`; "auto" is "cifar" when the first training image's larger side is at
    most 64 px, else "imagenet". Size: `data_args.image_size`, else `image_size` (the model's input size),
    else the first image's larger side ("cifar"/"none") or 224 ("imagenet"). Mean/std: `image_mean`/`image_std`
    when given (e.g. a pretrained model's), else the dataset's own (`compute_mean_std`, "cifar"), ImageNet's
    ("imagenet"), or none at all (0 and 1, "none"). Crop scale and RandAugment: from `data_args`; a flag
    without effect under the resolved recipe is logged as a warning and left out.

    Most callers want `resolve_transforms`, which also takes the size and normalisation from the model's data
    facts.

    Args:
        image_data: the loaded splits (before `apply_transforms`).
        data_args: the data arguments.
        image_size: the model's input size, if it has one.
        image_mean: normalisation mean to use instead of the recipe's.
        image_std: normalisation std to use instead of the recipe's.
        seed: seed of the image sample for the dataset mean/std.
        crop_pct: the eval crop (see `TransformInfo`) to use instead of the recipe's.
        interpolation: the resize interpolation, one of "nearest", "bilinear", "bicubic".
        recipe: the recipe "auto" stands for, instead of deciding it from the image size.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"Expected interpolation to be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}."
        )
    if (image_mean is None) != (image_std is None):
        raise ValueError("Give both image_mean and image_std, or neither.")
    for name, value in (("image_mean", image_mean), ("image_std", image_std)):
        if value is not None and len(value) != 3:
            raise ValueError(f"Expected {name} to have 3 values (RGB), got {value!r}.")
    first = image_data.train.with_format(None).cast_column(
        image_data.image_column, datasets.Image(decode=False)
    )[0]
    max_side = max(decode_image(first[image_data.image_column], first.get(ROW_COLUMN)).size)
    auto = recipe or ("cifar" if max_side <= SMALL_IMAGE_MAX_SIDE else "imagenet")
    recipe = auto if data_args.transform_recipe == "auto" else data_args.transform_recipe
    size = data_args.image_size or image_size or (224 if recipe == "imagenet" else max_side)
    if image_mean is not None:
        mean, std = tuple(map(float, image_mean)), tuple(map(float, image_std))
    elif recipe == "cifar":
        mean, std = compute_mean_std(image_data.train, image_data.image_column, seed=seed)
    elif recipe == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    crop_scale = data_args.crop_scale
    if recipe != "imagenet" and crop_scale != DEFAULT_CROP_SCALE:
        logger.warning(
            "--random_resized_crop_scale %s has no effect under the '%s' recipe (only 'imagenet' uses "
            "RandomResizedCrop).",
            data_args.random_resized_crop_scale,
            recipe,
        )
    rand_augment = None
    if data_args.rand_augment_ops:
        if recipe == "none":
            logger.warning(
                "--rand_augment_ops %d has no effect under the 'none' recipe (resize only); use 'cifar' or "
                "'imagenet'.",
                data_args.rand_augment_ops,
            )
        else:
            rand_augment = (int(data_args.rand_augment_ops), int(data_args.rand_augment_magnitude))
    info = TransformInfo(
        recipe=recipe,
        size=int(size),
        mean=mean,
        std=std,
        crop_scale=crop_scale,
        rand_augment=rand_augment,
        crop_pct=crop_pct,
        interpolation=interpolation,
    )
    logger.info("Transforms: %s", info)
    return info


def resolve_transforms(
    image_data: ImageData,
    data_args: DataTrainingArguments,
    model_data: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[v2.Compose, v2.Compose, TransformInfo]:
    """The train and eval transforms for `image_data` and a model: the one decision the CLI and
    `AdAutoMixTrainer` (given raw datasets) both use.

    - Size: `data_args.image_size`, else the model's size if it needs one (`fixed_size`: ViT, Swin), else the
      data's (the first image's larger side; 224 under the "imagenet" recipe). A CIFAR-stem or other
      convolutional model trained on 32 px images therefore trains at 32 px.
    - Recipe: `data_args.transform_recipe` ("auto": "cifar" for images of at most 64 px, else "imagenet").
    - Crop scale and RandAugment: `data_args.random_resized_crop_scale`, `data_args.rand_augment_*`.

    A pretrained model's recorded preprocessing (`pretrained_config`: timm's `pretrained_cfg`, or the image
    processor saved with a transformers checkpoint) sets the size (unless `data_args.image_size` is given),
    interpolation, eval crop and mean/std instead, and "auto" means the "imagenet" recipe: the model is evaluated as
    it was pretrained. A pretrained model given a CIFAR stem (`cifar_stem`) keeps only its mean/std.

    Args:
        image_data: the loaded splits (before `apply_transforms`).
        data_args: the data arguments.
        model_data: the model's data facts, `adapter.data_facts(pretrained=...)` (`{"fixed_size",
            "pretrained_config", "cifar_stem"}`); None: decide from the data alone.
        seed: seed of the image sample for the dataset mean/std.

    Returns:
        `(train_transform, eval_transform, info)`.
    """
    if model_data is not None and not isinstance(model_data, dict):
        raise TypeError(
            "resolve_transforms takes the model's data facts, a dict from `wrap_classifier(model).data_facts()` "
            f"(hf_adautomix.backbones), not a {type(model_data).__name__}."
        )
    facts = model_data or {}
    config, size = facts.get("pretrained_config"), facts.get("fixed_size")
    if config is None:
        info = resolve_transform_info(image_data, data_args, image_size=size, seed=seed)
    elif facts.get("cifar_stem"):
        # A pretrained model given a CIFAR stem (--cifar_stem) is made for the data's small images: keep its
        # normalisation only, not its pretraining size and eval crop.
        info = resolve_transform_info(
            image_data,
            data_args,
            image_size=size,
            image_mean=config["mean"],
            image_std=config["std"],
            seed=seed,
        )
    else:
        info = resolve_transform_info(
            image_data,
            data_args,
            image_size=size or config["size"],
            image_mean=config["mean"],
            image_std=config["std"],
            seed=seed,
            crop_pct=config["crop_pct"],
            interpolation=config["interpolation"],
            recipe="imagenet",
        )
    train_tf, eval_tf = build_transforms(
        info.recipe,
        info.size,
        info.mean,
        info.std,
        crop_scale=info.crop_scale,
        rand_augment=info.rand_augment,
        crop_pct=info.crop_pct,
        interpolation=info.interpolation,
    )
    return train_tf, eval_tf, info
