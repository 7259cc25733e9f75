"""Image datasets for training: loading (Hub, local folders, parquet, the embedded default), transforms, collation.

The usual sequence, as in transformers' `run_image_classification.py`::

    data = load_image_datasets(data_args)                       # splits, columns, integer labels
    train_tf, eval_tf, info = resolve_transforms(data, data_args, model, seed)  # size, recipe, mean/std
    data = apply_transforms(data, train_tf, eval_tf)            # rows -> {"pixel_values", "labels"}
    processor = make_image_processor(info)                      # the eval transform, for pipeline()

Before training, `check_labels` (labels fit the model) and `check_images` (every image decodes) catch bad data
early; `error_summary` turns an error re-raised by a DataLoader worker back into its one-paragraph message.

With no data argument at all, `load_image_datasets` returns the embedded default: scikit-learn's
handwritten digits as 32x32 RGB images, for demos and tests.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import datasets
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets.utils import tqdm as hf_tqdm
from torchvision.transforms import v2
from transformers.data.data_collator import default_data_collator

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataTrainingArguments",
    "ImageData",
    "TransformInfo",
    "apply_transforms",
    "build_transforms",
    "check_images",
    "check_labels",
    "collate_fn",
    "compute_mean_std",
    "InMemoryImages",
    "in_memory_tensors",
    "decode_image",
    "error_summary",
    "load_digits_dataset",
    "load_image_datasets",
    "make_image_processor",
    "fixed_input_size",
    "is_pretrained",
    "pretrained_data_config",
    "pretrained_norm",
    "resolve_transform_info",
    "resolve_transforms",
    "set_augmentation_epoch",
    "to_rgb",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_COLUMN_CANDIDATES = ("image", "img")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label")
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "test")
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
# Each row's index in the split it was loaded from, so that an undecodable image can be named by row.
ROW_COLUMN = "__row__"
SMALL_IMAGE_MAX_SIDE = 64  # "auto" picks the CIFAR recipe at or below this size, the ImageNet one above
EVAL_CROP_PCT = 0.875  # ImageNet eval: resize to size / 0.875, then centre-crop size
# The resizes our tensor transforms share with transformers' torchvision image processors (its PIL NEAREST maps to
# NEAREST_EXACT, PIL's own pixel-centre rule), so that the exported processor gives the same pixels.
INTERPOLATIONS = {
    "nearest": v2.InterpolationMode.NEAREST_EXACT,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}
MAX_LISTED = 10  # error messages list at most this many offending values, files or rows
DEFAULT_CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop default
RAND_AUGMENT_LEVELS = 10  # magnitudes on timm's / mmcls' 0..10 scale ("rand-m7" = 7 of 10)
RAND_AUGMENT_DEFAULT_MAGNITUDE = 9
MAX_RAND_AUGMENT_OPS = 14  # the size of RandAugment's op space

Recipe = Literal["cifar", "imagenet", "none"]


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on, and how to transform it.

    Give at most one source: `dataset_name`, `train_dir` (+ `validation_dir`) or `train_file`
    (+ `validation_file`). With none, the embedded digits dataset is used.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A dataset on the Hub (e.g. 'uoft-cs/cifar10'), or a local folder: one written by "
            "`save_to_disk`, or one `load_dataset` understands (e.g. a folder of parquet files)."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration name of the dataset (via `load_dataset`)."}
    )
    train_dir: str | None = field(
        default=None,
        metadata={"help": "A folder of training images laid out as <train_dir>/<class>/<image>."},
    )
    validation_dir: str | None = field(
        default=None,
        metadata={"help": "A folder of validation images laid out as <validation_dir>/<class>/<image>."},
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "A .parquet (or .csv/.json/.jsonl with image paths) file of training rows, or a glob of such "
            "files (e.g. 'cifar10/train-*.parquet')."
        },
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "A file of validation rows, same format as --train_file."}
    )
    train_val_split: float = field(
        default=0.15,
        metadata={
            "help": "Fraction of the training split held out for validation when there is no validation split."
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Keep only this many (shuffled) training rows, for debugging or quick runs."},
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Keep only this many (shuffled) validation rows, for debugging or quick runs."},
    )
    image_column_name: str | None = field(
        default=None,
        metadata={"help": "The column holding the images. Default: 'image' or 'img', whichever exists."},
    )
    label_column_name: str | None = field(
        default=None,
        metadata={
            "help": "The column holding the labels. Default: 'label', 'labels' or 'fine_label', whichever exists."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Side of the square training images. Default: the model's input size, else the recipe's."
        },
    )
    transform_recipe: Literal["auto", "cifar", "imagenet", "none"] = field(
        default="auto",
        metadata={
            "help": "Augmentation and normalisation. 'cifar': pad-4 reflect crop + flip, dataset mean/std; "
            "'imagenet': random resized crop + flip, ImageNet mean/std, resize + centre crop for eval; "
            "'none': resize only. 'auto': 'cifar' for images of at most 64 px, else 'imagenet'."
        },
    )
    random_resized_crop_scale: str = field(
        default="0.08,1",
        metadata={
            "help": "'lo,hi': the range of the image area that the 'imagenet' recipe's RandomResizedCrop keeps "
            "(e.g. '0.8,1' in the released Swin/DeiT CIFAR settings). No effect under the other recipes."
        },
    )
    rand_augment_ops: int = field(
        default=0,
        metadata={
            "help": "RandAugment (torchvision v2) after crop and flip in the 'cifar' and 'imagenet' recipes: the "
            "number of ops per image; 0 turns it off. The released Swin/ConvNeXt settings use 2."
        },
    )
    rand_augment_magnitude: int = field(
        default=9,
        metadata={
            "help": "RandAugment magnitude on timm's 0..10 scale (timm's 'rand-m<N>'); the released Swin/ConvNeXt "
            "settings use 7. Needs --rand_augment_ops."
        },
    )

    def __post_init__(self):
        sources = [f"--{n} {v!r}" for n, v in self._sources().items() if v is not None]
        if len(sources) > 1:
            raise ValueError(
                f"Give one data source, got {len(sources)}: {', '.join(sources)}. Use --dataset_name for a Hub or "
                "local dataset, --train_dir for an image folder, or --train_file for a parquet file."
            )
        for train_arg, val_arg in (("train_dir", "validation_dir"), ("train_file", "validation_file")):
            if getattr(self, val_arg) is not None and getattr(self, train_arg) is None:
                raise ValueError(
                    f"--{val_arg} {getattr(self, val_arg)!r} was given without --{train_arg}; a validation "
                    f"set needs a training set from the same kind of source (set --{train_arg})."
                )
        for arg in ("train_dir", "validation_dir"):
            path = getattr(self, arg)
            if path is not None and not os.path.isdir(path):
                raise FileNotFoundError(f"--{arg} {path!r} is not an existing directory.")
        for arg in ("train_file", "validation_file"):
            path = getattr(self, arg)
            if path is None:
                continue
            ext = os.path.splitext(path)[1].lower()
            if ext not in FILE_BUILDERS:
                raise ValueError(
                    f"--{arg} {path!r} has an unsupported extension {ext!r}; expected one of {sorted(FILE_BUILDERS)}."
                )
            if glob.has_magic(path):  # a pattern, e.g. 'cifar10/train-*.parquet': datasets expands it
                if not any(os.path.isfile(p) for p in glob.glob(path, recursive=True)):
                    raise FileNotFoundError(f"--{arg} {path!r}: the pattern matches no file.")
            elif not os.path.isfile(path):
                raise FileNotFoundError(f"--{arg} {path!r} is not an existing file.")
        if self.train_file and self.validation_file:
            exts = {
                FILE_BUILDERS[os.path.splitext(p)[1].lower()] for p in (self.train_file, self.validation_file)
            }
            if len(exts) > 1:
                raise ValueError(
                    f"--train_file {self.train_file!r} and --validation_file {self.validation_file!r} must have "
                    "the same format."
                )
        if not 0.0 < self.train_val_split < 1.0:
            raise ValueError(f"--train_val_split must be in (0, 1), got {self.train_val_split}.")
        for arg in ("max_train_samples", "max_eval_samples", "image_size"):
            value = getattr(self, arg)
            if value is not None and value < 1:
                raise ValueError(f"--{arg} must be a positive integer, got {value}.")
        if self.transform_recipe not in ("auto", "cifar", "imagenet", "none"):
            raise ValueError(
                f"--transform_recipe must be one of 'auto', 'cifar', 'imagenet', 'none'; got {self.transform_recipe!r}."
            )
        if isinstance(self.random_resized_crop_scale, (list, tuple)):  # a YAML list, e.g. [0.8, 1]
            self.random_resized_crop_scale = ",".join(str(v) for v in self.random_resized_crop_scale)
        self.crop_scale  # noqa: B018 -- parses and validates
        if isinstance(self.rand_augment_ops, bool) or not 0 <= self.rand_augment_ops <= MAX_RAND_AUGMENT_OPS:
            raise ValueError(
                f"--rand_augment_ops must be an integer in 0..{MAX_RAND_AUGMENT_OPS} (0 turns RandAugment off), "
                f"got {self.rand_augment_ops!r}."
            )
        if not 0 <= self.rand_augment_magnitude <= RAND_AUGMENT_LEVELS:
            raise ValueError(
                f"--rand_augment_magnitude must be in 0..{RAND_AUGMENT_LEVELS} (timm's 'rand-m<N>' scale), got "
                f"{self.rand_augment_magnitude!r}."
            )
        if self.rand_augment_ops == 0 and self.rand_augment_magnitude != RAND_AUGMENT_DEFAULT_MAGNITUDE:
            logger.warning(
                "--rand_augment_magnitude %s has no effect: RandAugment is off (set --rand_augment_ops, e.g. 2).",
                self.rand_augment_magnitude,
            )

    @property
    def crop_scale(self) -> tuple[float, float]:
        """`random_resized_crop_scale` as `(lo, hi)`, validated: 0 < lo <= hi <= 1."""
        text = str(self.random_resized_crop_scale)
        try:
            lo, hi = (float(v) for v in text.split(","))
        except ValueError:
            lo = hi = float("nan")
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"--random_resized_crop_scale must be 'lo,hi' with 0 < lo <= hi <= 1 (the fraction of the image area "
                f"RandomResizedCrop keeps, e.g. '0.08,1' or '0.8,1'), got {text!r}."
            )
        return lo, hi

    def _sources(self) -> dict[str, str | None]:
        return {"dataset_name": self.dataset_name, "train_dir": self.train_dir, "train_file": self.train_file}


@dataclass
class ImageData:
    """Train and validation splits with integer labels 0..K-1.

    Besides the image and label columns, each split carries `__row__`, the row's index in the split it was
    loaded from, so that decoding errors can name the row.

    Attributes:
        train: the training split.
        validation: the validation split.
        image_column: name of the image column.
        label_column: name of the label column (a `ClassLabel`).
        labels: class names; the index is the class id.
        source: a human description of where the data came from.
    """

    train: datasets.Dataset
    validation: datasets.Dataset
    image_column: str
    label_column: str
    labels: list[str]
    source: str

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def load_digits_dataset() -> tuple[datasets.Dataset, datasets.Dataset]:
    """scikit-learn's handwritten digits as a 32x32 RGB image dataset, in memory.

    The 8x8 images (values 0..16) are scaled to 0..255 and enlarged with nearest-neighbour resampling. The
    split is fixed and stratified: `train_test_split(test_size=0.2, stratify=y, random_state=0)`.

    Returns:
        `(train, validation)` with columns `image` (`Image`), `label` (`ClassLabel` "0".."9") and `__row__`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * 255 / 16).astype(np.uint8)
    images = [PIL.Image.fromarray(a).convert("RGB").resize((32, 32), PIL.Image.NEAREST) for a in pixels]
    indices = np.arange(len(images))
    train_idx, val_idx = train_test_split(indices, test_size=0.2, stratify=digits.target, random_state=0)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
            ROW_COLUMN: datasets.Value("int64"),
        }
    )

    def make(idx: np.ndarray) -> datasets.Dataset:
        columns = {
            "image": [images[i] for i in idx],
            "label": digits.target[idx].tolist(),
            ROW_COLUMN: range(len(idx)),
        }
        return datasets.Dataset.from_dict({k: list(v) for k, v in columns.items()}, features=features)

    return make(train_idx), make(val_idx)


def load_image_datasets(
    data_args: DataTrainingArguments,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    seed: int = 42,
) -> ImageData:
    """Loads the train and validation splits that `data_args` names, with integer labels.

    Sources, in order: `dataset_name` (a `save_to_disk` folder, another local folder, or a Hub id),
    `train_dir`/`validation_dir` (image folders), `train_file`/`validation_file`, else the embedded digits.
    The validation split is the first of "validation", "valid", "val", "test" that exists; without one,
    `train_val_split` of the training rows are held out (stratified by label where possible).

    Args:
        data_args: the data arguments.
        cache_dir: where `load_dataset` caches downloads and prepared files.
        token: Hub token, for private datasets.
        seed: seed of the held-out split and of the `max_*_samples` shuffles.

    Returns:
        The splits, column names, class names and a description of the source.
    """
    splits, source = _load_splits(data_args, cache_dir, token)
    if "train" not in splits:
        raise ValueError(f"The dataset from {source} has no 'train' split; its splits are {sorted(splits)}.")
    val_name = next((name for name in VALIDATION_SPLIT_NAMES if name in splits), None)
    train = splits["train"]
    image_col = _find_column(train, data_args.image_column_name, IMAGE_COLUMN_CANDIDATES, "image", "train")
    label_col = _find_column(train, data_args.label_column_name, LABEL_COLUMN_CANDIDATES, "label", "train")
    used = {"train": train}
    if val_name is not None:
        for column, kind in ((image_col, "image"), (label_col, "label")):
            _find_column(splits[val_name], column, (), kind, val_name)
        used["validation"] = splits[val_name]
    used = {name: _prepare_image_column(ds, image_col, name) for name, ds in used.items()}
    split_names = {"train": "train", "validation": val_name}
    classes = {name: _split_classes(ds, label_col, split_names[name]) for name, ds in used.items()}
    if classes["train"].unlabelled:
        raise ValueError(
            f"The 'train' split of {source} has unlabelled rows (label -1 in column {label_col!r})."
        )
    if "validation" in used and classes["validation"].unlabelled:
        logger.warning(
            "The '%s' split has unlabelled rows (label -1); holding out %g of the training split instead.",
            val_name,
            data_args.train_val_split,
        )
        del used["validation"]
    if "validation" in used:
        _check_validation_classes(classes["train"], classes["validation"], label_col, val_name)
    used, labels = _encode_labels(used, label_col)
    used = {
        name: ds if ROW_COLUMN in ds.column_names else ds.add_column(ROW_COLUMN, np.arange(len(ds)))
        for name, ds in used.items()
    }

    train = used["train"]
    if "validation" in used:
        validation = used["validation"]
    else:
        train, validation = _hold_out(train, data_args.train_val_split, label_col, seed)
        source += f" (validation: {data_args.train_val_split:g} of the training split)"
    if data_args.max_train_samples is not None and data_args.max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(data_args.max_train_samples))
    if data_args.max_eval_samples is not None and data_args.max_eval_samples < len(validation):
        validation = validation.shuffle(seed=seed).select(range(data_args.max_eval_samples))
    logger.info(
        "Loaded %s: %d train / %d validation rows, %d classes.",
        source,
        len(train),
        len(validation),
        len(labels),
    )
    return ImageData(train, validation, image_col, label_col, labels, source)


def _load_splits(
    args: DataTrainingArguments, cache_dir: str | None, token: str | bool | None
) -> tuple[dict[str, datasets.Dataset], str]:
    """Loads the raw splits of whichever source `args` names, and describes the source."""
    if args.dataset_name is not None:
        return _load_named(args.dataset_name, args.dataset_config_name, cache_dir, token)
    if args.train_dir is not None:
        data_files = {"train": os.path.join(args.train_dir, "**")}
        if args.validation_dir is not None:
            data_files["validation"] = os.path.join(args.validation_dir, "**")
        layout = "expected images laid out as <dir>/<class>/<image>"
        for arg in ("train_dir", "validation_dir"):
            folder = getattr(args, arg)
            if folder is not None and not any(files for _, _, files in os.walk(folder)):
                raise FileNotFoundError(f"--{arg} {folder!r} contains no files; {layout}.")
        ds = datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)
        if args.label_column_name is None and "label" not in ds["train"].column_names:
            raise ValueError(
                f"--train_dir {args.train_dir!r} gave no labels: its images are not in one sub-folder per class; "
                f"{layout}."
            )
        return dict(ds), f"image folder {_short_path(args.train_dir)!r}"
    if args.train_file is not None:
        builder = FILE_BUILDERS[os.path.splitext(args.train_file)[1].lower()]
        # One file at a time: loaded together, datasets casts the validation file to the training file's
        # schema, which turns integer labels into strings silently (or fails with DatasetGenerationError), so
        # the label check could not tell the user that the two files disagree.
        files = {"train": args.train_file, "validation": args.validation_file}
        splits = {
            split: datasets.load_dataset(builder, data_files={split: path}, split=split, cache_dir=cache_dir)
            for split, path in files.items()
            if path is not None
        }
        return splits, f"{builder} file {_short_path(args.train_file)!r}"
    train, validation = load_digits_dataset()
    logger.warning(
        "No dataset given: using the embedded default, scikit-learn's handwritten digits (%d train / %d "
        "validation, 32x32 RGB). Pass --dataset_name, --train_dir or --train_file to train on your data.",
        len(train),
        len(validation),
    )
    return {"train": train, "validation": validation}, "scikit-learn's handwritten digits (embedded default)"


def _short_path(path: str) -> str:
    """The last two components of a local path: enough to name the data in logs and model cards, without the
    user's directory layout (which a pushed card would publish)."""
    parts = os.path.normpath(path).split(os.sep)
    return os.path.join(*parts[-2:]) if len(parts) > 2 else path


def _load_named(
    name: str, config: str | None, cache_dir: str | None, token: str | bool | None
) -> tuple[dict[str, datasets.Dataset], str]:
    """`dataset_name`: a `save_to_disk` folder, a folder `load_dataset` reads, or a Hub id."""
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        saved = any(
            os.path.isfile(os.path.join(path, f))
            for f in (datasets.config.DATASETDICT_JSON_FILENAME, "state.json")
        )
        if saved:
            ds = datasets.load_from_disk(path)
            source = f"dataset saved on disk at {_short_path(name)!r}"
        else:
            ds = datasets.load_dataset(path, config, cache_dir=cache_dir)
            source = f"local dataset folder {_short_path(name)!r}"
        return ({"train": ds} if isinstance(ds, datasets.Dataset) else dict(ds)), source
    if name.startswith((".", "/", "~")) or os.path.isabs(name):
        raise FileNotFoundError(
            f"--dataset_name {name!r} looks like a local path but is not an existing directory."
        )
    try:
        ds = datasets.load_dataset(name, config, cache_dir=cache_dir, token=token)
    except Exception as err:  # datasets raises ConnectionError, DatasetNotFoundError, HTTP errors, ...
        offline = datasets.config.HF_HUB_OFFLINE
        cause = (
            "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, so only datasets already in the cache can be loaded"
            if offline
            else "the likely cause is no network access, a misspelt name, or a private dataset without a token"
        )
        raise FileNotFoundError(
            f"Could not load dataset {name!r} (config {config!r}) from the Hugging Face Hub: {cause}. "
            f"Use a local folder (--dataset_name <dir>, --train_dir or --train_file) or run with network access. "
            f"The error was: {type(err).__name__}: {err}"
        ) from err
    return ({"train": ds} if isinstance(ds, datasets.Dataset) else dict(ds)), f"Hub dataset {name!r}"


def _find_column(
    ds: datasets.Dataset, given: str | None, candidates: tuple[str, ...], kind: str, split: str
) -> str:
    """The name of the image/label column: `given` if set, else the first of `candidates` present."""
    columns = [c for c in ds.column_names if c != ROW_COLUMN]
    if given is not None:
        if given in columns:
            return given
        raise ValueError(
            f"The {kind} column {given!r} is not in the '{split}' split; its columns are {columns}. "
            f"Set --{kind}_column_name to one of them."
        )
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(
        f"Could not find the {kind} column in the '{split}' split: none of {list(candidates)} is among its "
        f"columns {columns}. Set --{kind}_column_name to the column that holds the {kind}s."
    )


def _prepare_image_column(ds: datasets.Dataset, column: str, split: str) -> datasets.Dataset:
    """Makes `column` an `Image` feature; a string column is read as image file paths."""
    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        return ds
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return ds.cast_column(column, datasets.Image())
    raise ValueError(
        f"The image column {column!r} of the '{split}' split has feature {feature}; expected an Image feature "
        "or a string column of image file paths. Set --image_column_name to the image column."
    )


def _encode_labels(
    splits: dict[str, datasets.Dataset], column: str
) -> tuple[dict[str, datasets.Dataset], list[str]]:
    """Makes `column` a `ClassLabel` with the same names in every split; returns the splits and names."""
    features = [ds.features[column] for ds in splits.values()]
    if all(isinstance(f, datasets.ClassLabel) for f in features) and all(
        f.names == features[0].names for f in features
    ):
        names = list(features[0].names)
    else:
        # Values (ints, strings, or ClassLabel names that differ between splits) -> sorted class list.
        def values(ds: datasets.Dataset) -> list[Any]:
            feature = ds.features[column]
            raw = list(ds[column])
            return feature.int2str(raw) if isinstance(feature, datasets.ClassLabel) else raw

        per_split = {name: values(ds) for name, ds in splits.items()}
        classes = {v for vals in per_split.values() for v in vals}
        numeric = all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in classes)
        classes = sorted(classes) if numeric else sorted(classes, key=str)
        names = [str(v) for v in classes]
        index = {v: i for i, v in enumerate(classes)}
        label_feature = datasets.ClassLabel(names=names)
        splits = {
            name: ds.remove_columns(column).add_column(
                column, [index[v] for v in per_split[name]], feature=label_feature
            )
            for name, ds in splits.items()
        }
    if len(names) < 2:
        raise ValueError(
            f"The label column {column!r} has {len(names)} class(es) ({names}); classification needs at least 2. "
            "Check --label_column_name."
        )
    return splits, names


@dataclass(frozen=True)
class _SplitClasses:
    """What `_split_classes` found in one split's label column."""

    split: str
    kind: str  # how the labels are written, e.g. "string", "int64", "ClassLabel"
    named: bool  # class names (strings or ClassLabel) rather than numbers: the two cannot be matched
    values: frozenset  # the classes present: names for ClassLabel and string columns, else the values
    unlabelled: bool  # ClassLabel's -1 ("no label") occurs


def _label_array(ds: datasets.Dataset, column: str) -> pa.ChunkedArray:
    """The label column as Arrow: reads no image and runs no `with_transform`, so it is cheap at any size."""
    return ds.with_format("arrow")[column]


def _preview(values, limit: int = MAX_LISTED) -> str:
    """`[a, b, c and 4 more]`: the first `limit` of `values`, sorted, for error messages."""
    try:
        values = sorted(values)
    except TypeError:  # mixed types
        values = sorted(values, key=str)
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return f"[{', '.join(repr(v) for v in values[:limit])}{more}]"


def _split_classes(ds: datasets.Dataset, column: str, split: str) -> _SplitClasses:
    """Checks the label values of one split of the CLI path and returns its classes.

    Raises:
        ValueError: for rows without a label, ClassLabel ids outside -1..num_classes-1, negative plain numeric
            labels, or a label feature that is neither a ClassLabel, strings nor numbers.
    """
    feature = ds.features[column]
    labels = _label_array(ds, column)
    where = f"The label column {column!r} of the '{split}' split"
    is_string = isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
    is_number = isinstance(feature, datasets.Value) and (
        pa.types.is_integer(labels.type)
        or pa.types.is_floating(labels.type)
        or pa.types.is_boolean(labels.type)
    )
    if not (isinstance(feature, datasets.ClassLabel) or is_string or is_number):
        raise ValueError(
            f"{where} has feature {feature}; expected a ClassLabel, integer or string labels. "
            "Set --label_column_name to the column that holds the labels."
        )
    if labels.null_count:
        raise ValueError(f"{where} has {labels.null_count} row(s) without a label; every row needs a label.")
    values = set(pc.unique(labels).to_pylist())
    if isinstance(feature, datasets.ClassLabel):
        n = feature.num_classes
        bad = {v for v in values if not -1 <= v < n}
        if bad:
            raise ValueError(
                f"{where} is a ClassLabel with {n} classes (ids 0..{n - 1}, -1 for unlabelled) but holds ids "
                f"{_preview(bad)}: the ids do not match the class names. Fix those labels or the ClassLabel names."
            )
        names = frozenset(feature.names[v] for v in values if v >= 0)
        return _SplitClasses(split, "ClassLabel", True, names, -1 in values)
    if is_string:
        return _SplitClasses(split, "string", True, frozenset(values), False)
    negative = {v for v in values if v < 0}
    if negative:
        rows = pc.sum(pc.less(labels, 0)).as_py()
        raise ValueError(
            f"{where} has negative labels {_preview(negative)} in {rows} row(s); class labels must be "
            "non-negative integers or class names. If they mark unlabelled rows, remove those rows."
        )
    return _SplitClasses(split, feature.dtype, False, frozenset(values), False)


def _check_validation_classes(train: _SplitClasses, validation: _SplitClasses, column: str, val_name: str):
    """Every validation class must be a training class, written the same way (names or numbers)."""
    if train.named != validation.named:
        raise ValueError(
            f"The label column {column!r} has {train.kind} labels in the 'train' split "
            f"({_preview(train.values)}) but {validation.kind} labels in the '{val_name}' split "
            f"({_preview(validation.values)}); the two cannot be matched. Write the labels of both splits the "
            "same way: class names in both, or the same integer ids in both."
        )
    absent = validation.values - train.values
    if absent:
        raise ValueError(
            f"The '{val_name}' split has {len(absent)} class(es) that the 'train' split has no rows of "
            f"(label column {column!r}): {_preview(absent)}. A model cannot learn a class it never sees: add "
            f"training images of these classes, or remove them from the '{val_name}' split."
        )


def _hold_out(
    train: datasets.Dataset, fraction: float, label_col: str, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Splits `fraction` of `train` off as validation, stratified by label when every class allows it."""
    try:
        parts = train.train_test_split(test_size=fraction, stratify_by_column=label_col, seed=seed)
    except ValueError as err:  # e.g. a class with a single row cannot be stratified
        logger.warning(
            "Could not stratify the validation split by %r (%s); splitting at random.", label_col, err
        )
        parts = train.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


# ----------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Converts any PIL mode to RGB: transparency is composited on white, 16-bit and float grey is rescaled."""
    # Ours, not `datasets.Image(mode="RGB")` (PIL's convert): that drops alpha (transparent pixels keep their hidden
    # colour, often black) and clips 16-bit grey at 255, so most 16-bit images come out white (checked, datasets 5.2).
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        # PIL's own convert("RGB") clips 16-bit values at 255, which turns most images white.
        arr = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or arr.max() > 255:
            arr = arr / 257.0
        elif image.mode == "F" and arr.max() <= 1.0:
            arr = arr * 255.0
        return PIL.Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def decode_image(value: Any, row: int | None = None) -> PIL.Image.Image:
    """Decodes one stored image (an `Image(decode=False)` dict, a path or a PIL image) to RGB.

    Ours rather than `datasets.Image` decoding, whose errors name neither the file nor the row (see `to_rgb`).

    Args:
        value: `{"bytes": ..., "path": ...}`, a file path, or a PIL image.
        row: the row's index, used to name the image in errors when it has no file path.

    Raises:
        ValueError: naming the file or row when the image cannot be decoded.
    """
    if isinstance(value, PIL.Image.Image):
        return to_rgb(value)
    if isinstance(value, (str, os.PathLike)):
        value = {"path": os.fspath(value), "bytes": None}
    data, path = value.get("bytes"), value.get("path")
    try:
        image = PIL.Image.open(io.BytesIO(data) if data is not None else path)
        image.load()  # decode now, so truncated files fail here rather than inside the transform
        return to_rgb(image)
    except PIL.Image.DecompressionBombError as err:  # not an OSError: Pillow refuses, the file may be fine
        raise ValueError(
            f"Could not decode image {_image_where(value, row)}: {_reason(err)} {_BOMB_HINT}"
        ) from err
    except (OSError, ValueError, SyntaxError, TypeError) as err:
        raise ValueError(
            f"Could not decode image {_image_where(value, row)}: {_reason(err)}. Remove or replace this image."
        ) from err


_BOMB_HINT = (
    "If you trust this image, raise Pillow's limit (PIL.Image.MAX_IMAGE_PIXELS, in pixels; None for no limit) "
    "before training, or shrink the image."
)


def _reason(err: BaseException) -> str:
    """`Type: message` of a decoding error, without the `<_io.BytesIO object at 0x...>` Pillow puts in it."""
    return f"{type(err).__name__}: {re.sub(r' <_io.BytesIO object at 0x[0-9a-f]+>', '', str(err))}"


def _image_where(value: dict, row: int | None) -> str:
    """How errors name an image: by its file when it is read from one, else by row (and stored file name)."""
    data, path = value.get("bytes"), value.get("path")
    if data is None and path:
        return f"file {path!r}"
    where = f"at row {row}" if row is not None else "in an unnamed row"
    return where + (f" ({path!r})" if path else "")


# ----------------------------------------------------------------------------------------------------------
# Checks before training
# ----------------------------------------------------------------------------------------------------------


def check_labels(
    dataset: datasets.Dataset,
    label_column: str | None = None,
    num_labels: int | None = None,
    split: str = "train",
) -> None:
    """Checks that `dataset` has rows and that its labels are integer class ids in 0..num_labels-1.

    Reads only the label column, as Arrow, and ignores any `with_transform`, so it is cheap on large datasets and
    works on raw datasets and on ones `apply_transforms` has already set up.

    Args:
        dataset: a `datasets.Dataset` or an `InMemoryImages`. For another dataset (e.g. a torch `Dataset`) only
            emptiness is checked.
        label_column: the label column; if absent or None, the first of "label", "labels", "fine_label" present.
            A dataset with a `with_transform` and none of these columns is not checked further.
        num_labels: the model's number of classes; None skips the upper bound.
        split: the split's name, for messages.

    Raises:
        ValueError: for an empty dataset, missing, string or non-integer labels, or ids outside 0..num_labels-1.
    """
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise ValueError(f"The '{split}' dataset is empty: it has no rows.")
    if isinstance(dataset, InMemoryImages):
        labels, column = pa.array(dataset.labels.numpy()), dataset.label_column
    elif not isinstance(dataset, datasets.Dataset):
        return
    else:
        candidates = (label_column, *LABEL_COLUMN_CANDIDATES)
        column = next((c for c in candidates if c is not None and c in dataset.column_names), None)
        if column is None:
            if dataset.format["type"] == "custom":
                return  # its transform makes the labels; they cannot be read cheaply
            raise ValueError(
                f"The '{split}' dataset has no label column: none of {[c for c in candidates if c]} is among its "
                f"columns {dataset.column_names}."
            )
        labels = _label_array(dataset, column)
    where = f"The label column {column!r} of the '{split}' dataset"
    if labels.null_count:
        raise ValueError(f"{where} has {labels.null_count} row(s) without a label; every row needs a label.")
    if pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type):
        raise ValueError(
            f"{where} holds strings ({_preview(pc.unique(labels).to_pylist())}), but the model expects integer "
            f"class ids. Map them to ids (e.g. `dataset.class_encode_column({column!r})`), or give a ClassLabel "
            "column."
        )
    integral = pa.types.is_integer(labels.type) or (
        pa.types.is_floating(labels.type) and pc.all(pc.equal(labels, pc.floor(labels))).as_py()
    )
    if not integral:
        raise ValueError(
            f"{where} has feature {dataset.features[column]}; expected one integer class id per row "
            f"(values seen: {_preview(pc.unique(labels).to_pylist())})."
        )
    upper = num_labels if num_labels is not None else float("inf")
    bad = pc.or_(pc.less(labels, 0), pc.greater_equal(labels, upper))
    rows = pc.sum(bad).as_py() or 0
    if rows:
        values = pc.unique(pc.filter(labels, bad)).to_pylist()
        expected = f"0..{num_labels - 1} (the model has {num_labels} classes)" if num_labels else "0 or more"
        raise ValueError(
            f"{where} has {rows} row(s) with class ids outside {expected}: {_preview(values)}. Fix those "
            "labels, or give the model as many classes as the data has."
        )


def check_images(
    dataset: datasets.Dataset,
    image_column: str | None = None,
    split: str = "validation",
    batch_size: int = 1000,
) -> None:
    """Decodes every image of `dataset` and raises one error naming all the undecodable ones.

    Run it before training on a split that is only read later (validation), so that a bad image stops the run
    at once rather than after training. Images are decoded with `decode_image`, as the transforms do, from the
    stored bytes or paths (any `with_transform` is ignored); a CIFAR-sized split takes a few seconds.

    Args:
        dataset: a `datasets.Dataset`, raw or after `apply_transforms`.
        image_column: the image column (an `Image` feature, or a string column of paths); default: "image" or
            "img", whichever exists.
        split: the split's name, for messages and the progress bar.
        batch_size: rows read at a time.

    Raises:
        ValueError: naming up to 10 undecodable images (file, else row) and how many there are.
    """
    if isinstance(dataset, InMemoryImages):
        return  # decoded (and so checked) when it was made
    column = _find_column(dataset, image_column, IMAGE_COLUMN_CANDIDATES, "image", split)
    _decode_all(dataset, column, split, batch_size=batch_size)


def _decode_all(
    dataset: datasets.Dataset, column: str, split: str, keep=None, batch_size: int = 1000
) -> list[int]:
    """Decodes every image of `dataset` (`decode_image`), hands each to `keep(position, image)` if given, and
    raises one error naming all the undecodable ones (`check_images`). Returns each row's `ROW_COLUMN` value (its
    position when there is no such column)."""
    raw = dataset.with_format(None).select_columns(
        [c for c in (column, ROW_COLUMN) if c in dataset.column_names]
    )
    if isinstance(raw.features[column], datasets.Image):
        raw = raw.cast_column(column, datasets.Image(decode=False))
    failures, bombs, all_rows = [], False, []
    desc = f"{'Decoding' if keep else 'Checking'} the {split} images"
    with hf_tqdm(total=len(raw), desc=desc, unit=" images") as progress:
        for start, batch in zip(range(0, len(raw), batch_size), raw.iter(batch_size=batch_size)):
            rows = batch.get(ROW_COLUMN) or range(start, start + len(batch[column]))
            for position, (value, row) in enumerate(zip(batch[column], rows), start):
                all_rows.append(row)
                try:
                    image = decode_image(value, row)
                except ValueError as err:
                    cause = err.__cause__
                    if isinstance(value, (str, os.PathLike)):
                        value = {"path": os.fspath(value), "bytes": None}
                    failures.append(f"{_image_where(value, row).removeprefix('at ')} ({_reason(cause)})")
                    bombs |= isinstance(cause, PIL.Image.DecompressionBombError)
                    continue
                if keep is not None:
                    keep(position, image)
            progress.update(len(batch[column]))
    if failures:
        more = f"; and {len(failures) - MAX_LISTED} more" if len(failures) > MAX_LISTED else ""
        raise ValueError(
            f"{len(failures)} of the {len(raw)} images of the '{split}' split (column {column!r}) could not be "
            f"decoded: {'; '.join(failures[:MAX_LISTED])}{more}. Remove or replace these images."
            + (f" {_BOMB_HINT}" if bombs else "")
        )
    return all_rows


def error_summary(err: BaseException) -> str:
    """The one-paragraph message of `err`, unwrapping an error re-raised from a DataLoader worker.

    torch re-raises a worker's exception as "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback
    (most recent call last): ...". This returns the original message: what follows the traceback's last frame,
    without the exception's type name. Any other error gives `str(err)`.
    """
    text = str(err)
    if "Original Traceback" not in text:
        return text
    lines = text.rstrip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    if not frames:
        return text
    # After the last frame come its indented source and ^^^ lines, then the exception line(s).
    start = next((i for i in range(frames[-1] + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    message = "\n".join(lines[start:])
    return re.sub(r"^[\w.]+: ", "", message, count=1) if message else text


# ----------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------


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
        return _recipe_crop_pct(self.recipe) if self.crop_pct == "recipe" else self.crop_pct


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

    Most callers want `resolve_transforms`, which also reads the size and normalisation off the model.

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


def fixed_input_size(model) -> int | None:
    """The image side `model` needs, or None when it takes any size.

    Models with absolute position embeddings or fixed attention windows need one size: timm models whose
    `pretrained_cfg` says `fixed_input_size` (ViT, Swin, ...) unless built with `dynamic_img_size`, and
    transformers models whose forward takes `interpolate_pos_encoding` (ViT, DeiT, BEiT, Swin, ...), at
    `config.image_size`. Convolutional networks take any size, CIFAR-stem variants included: timm's nominal
    224 only says what the architecture is usually trained at, and transformers' `config.image_size` of a
    ConvNeXt is unused.

    Args:
        model: a timm or transformers classifier, its `ClassifierAdapter`, or a `MixupModel`.
    """
    adapter = _adapter(model)
    if adapter is None:
        return None
    net = adapter.model
    if adapter.family == "timm":
        dynamic = getattr(net, "dynamic_img_size", False)
        fixed = bool(net.pretrained_cfg.get("fixed_input_size", False)) and not dynamic
    else:
        import inspect

        fixed = "interpolate_pos_encoding" in inspect.signature(net.forward).parameters
    if not fixed:
        return None
    height, width = adapter.input_size
    if height != width:
        raise ValueError(
            f"{type(net).__name__} needs {height}x{width} inputs; hf_adautomix's transforms make square images."
        )
    return int(height)


def pretrained_data_config(model) -> dict[str, Any] | None:
    """The eval preprocessing a pretrained model was trained with, as its own library records it.

    timm: `timm.data.resolve_data_config(model=...)` over its `pretrained_cfg`. transformers: the image processor
    saved with the checkpoint (`AutoImageProcessor.from_pretrained(model.name_or_path)`); None when there is none.

    Returns:
        `{"size", "crop_pct", "interpolation", "mean", "std"}` in `TransformInfo`'s terms (crop_pct None: resize to
        size x size), or None.
    """
    adapter = _adapter(model)
    if adapter is None:
        return None
    name = type(adapter.model).__name__
    if adapter.family == "timm":
        from timm.data import resolve_data_config

        return _from_timm_config(resolve_data_config(model=adapter.model), name)
    path = getattr(adapter.model, "name_or_path", "")
    if not path:
        return None
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.info(
            "No image processor with %s (%s); the transform recipe decides the preprocessing.", path, err
        )
        return None
    if isinstance(getattr(processor, "data_config", None), dict):  # TimmWrapperImageProcessor: a timm config
        return _from_timm_config(processor.data_config, name)
    return _from_image_processor(processor, name)


def _from_timm_config(cfg: dict, name: str) -> dict[str, Any]:
    """`TransformInfo` terms of a timm data config (`input_size`, `crop_pct`, `crop_mode`, `interpolation`, ...)."""
    height, width = cfg["input_size"][-2:]
    if height != width:
        logger.warning(
            "%s was trained on %dx%d images; hf_adautomix's transforms are square: using %d.",
            name,
            height,
            width,
            height,
        )
    crop_pct, mode = cfg.get("crop_pct") or 1.0, cfg.get("crop_mode", "center")
    if mode == "squash" and crop_pct == 1.0:
        crop_pct = None  # timm resizes to size x size
    elif mode != "center":
        logger.warning(
            "%s's crop_mode %r is approximated by a centre crop (crop_pct %s).", name, mode, crop_pct
        )
    return {
        "size": int(height),
        "crop_pct": crop_pct,
        "interpolation": _interpolation(cfg.get("interpolation", "bilinear"), name),
        "mean": tuple(float(m) for m in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
    }


def _from_image_processor(processor, name: str) -> dict[str, Any] | None:
    """`TransformInfo` terms of a transformers image processor: ConvNeXt's `crop_pct`, a short-side resize plus
    centre crop (ResNet, BiT, CLIP, ...), or a resize to height x width (ViT, Swin, ...); None for anything else."""
    size, crop = processor.size or {}, getattr(processor, "crop_size", None) or {}
    short = size["shortest_edge"] if "shortest_edge" in size else None
    square = size["height"] if "height" in size and size["height"] == size["width"] else None
    do_crop = (
        getattr(processor, "do_center_crop", False) and "height" in crop and crop["height"] == crop["width"]
    )
    if getattr(processor, "crop_pct", None) is not None and short is not None:
        # ConvNextImageProcessor: below 384 resize to short / crop_pct and crop short; from 384 on, warp.
        out = {"size": short, "crop_pct": processor.crop_pct if short < 384 else None}
    elif do_crop and (short is not None or square is not None):
        out = {"size": crop["height"], "crop_pct": crop["height"] / (short or square)}
        if short is None:
            logger.warning(
                "%s's image processor warps to %dx%d before its crop; using a short-side resize.",
                name,
                square,
                square,
            )
    elif square is not None and not getattr(processor, "do_center_crop", False):
        out = {"size": square, "crop_pct": None}
    else:
        logger.warning(
            "%s's image processor (%s, size %s) is not one hf_adautomix can reproduce; the transform "
            "recipe decides the preprocessing.",
            name,
            type(processor).__name__,
            dict(size),
        )
        return None
    resample = getattr(processor, "resample", None)
    if getattr(processor, "do_normalize", True):
        mean = (
            processor.image_mean
            if isinstance(processor.image_mean, (list, tuple))
            else [processor.image_mean] * 3
        )
        std = (
            processor.image_std
            if isinstance(processor.image_std, (list, tuple))
            else [processor.image_std] * 3
        )
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return {
        **out,
        "size": int(out["size"]),
        "interpolation": _interpolation(_resample_name(resample), name),
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(v) for v in std),
    }


def _resample_name(resample) -> str:
    """ "bicubic" for `PILImageResampling.BICUBIC`, its int 3 (as a saved processor reloads it) or
    `InterpolationMode.BICUBIC`."""
    from transformers.image_utils import PILImageResampling

    if resample is None:
        return "bilinear"
    if isinstance(resample, int):  # PILImageResampling is an IntEnum
        return PILImageResampling(resample).name
    return str(getattr(resample, "value", resample))


def _interpolation(name: str, model: str) -> str:
    """A resize interpolation the tensor transforms (and the exported image processor) share."""
    name = str(name).lower()
    if name not in INTERPOLATIONS:
        logger.warning(
            "%s's interpolation %r is not one of %s; using 'bicubic'.", model, name, sorted(INTERPOLATIONS)
        )
        return "bicubic"
    return name


def _recipe_crop_pct(recipe: str) -> float | None:
    return EVAL_CROP_PCT if recipe == "imagenet" else None


def _resize_side(size: int, crop_pct: float) -> int:
    """The short side the eval transform resizes to before its centre crop (timm's `floor(size / crop_pct)`); the
    epsilon keeps a crop_pct derived from integer sizes (e.g. 224 / 232) from rounding one pixel down."""
    return int(size / crop_pct + 1e-6)


def pretrained_norm(model) -> tuple[tuple[float, ...], tuple[float, ...]] | tuple[None, None]:
    """The normalisation a pretrained model was trained with (`pretrained_data_config`); `(None, None)` when there
    is none."""
    config = pretrained_data_config(model)
    return (config["mean"], config["std"]) if config else (None, None)


def is_pretrained(model) -> bool:
    """Whether `model` was loaded from a checkpoint, as far as the model object tells.

    transformers models remember their `name_or_path` (empty for `from_config`); timm models loaded from the Hub
    or a local folder (`hf-hub:` / `local-dir:`) say so in `pretrained_cfg["source"]`. timm does not record
    `create_model(name, pretrained=True)`: pass `pretrained=True` to `resolve_transforms` for such a model.
    """
    adapter = _adapter(model)
    if adapter is None:
        return False
    if adapter.family == "timm":
        return adapter.model.pretrained_cfg.get("source") in ("hf-hub", "local-dir")
    return bool(getattr(adapter.model, "name_or_path", ""))


def _has_cifar_stem(model) -> bool:
    """Whether `model` is one of our `--cifar_stem` variants (timm `<arch>_cifar`, transformers `cifar_resnet`)."""
    from .backbones import wrap_classifier

    try:
        adapter = wrap_classifier(model.classifier if hasattr(model, "mixer") else model)  # MixupModel
    except (TypeError, ValueError):
        return False
    config = getattr(adapter.model, "config", None)
    return adapter.arch_name.endswith("_cifar") or getattr(config, "model_type", None) == "cifar_resnet"


def resolve_transforms(
    image_data: ImageData,
    data_args: DataTrainingArguments,
    model=None,
    seed: int = 0,
    *,
    pretrained: bool | None = None,
) -> tuple[v2.Compose, v2.Compose, TransformInfo]:
    """The train and eval transforms for `image_data` and `model`: the one decision the CLI and
    `AdAutoMixTrainer` (given raw datasets) both use.

    - Size: `data_args.image_size`, else the model's size if it needs one (`fixed_input_size`: ViT, Swin), else
      the data's (the first image's larger side; 224 under the "imagenet" recipe). A CIFAR-stem or other
      convolutional model trained on 32 px images therefore trains at 32 px.
    - Recipe: `data_args.transform_recipe` ("auto": "cifar" for images of at most 64 px, else "imagenet").
    - Normalisation: a pretrained model's own mean/std (`pretrained_norm`), else the recipe's.
    - Crop scale and RandAugment: `data_args.random_resized_crop_scale`, `data_args.rand_augment_*`.

    A pretrained model with a recorded preprocessing (`pretrained_data_config`: timm's `pretrained_cfg`, or the
    image processor saved with a transformers checkpoint) sets the size (unless `data_args.image_size` is given),
    interpolation, eval crop and mean/std instead, and "auto" means the "imagenet" recipe: the model is evaluated
    as it was pretrained.

    Args:
        image_data: the loaded splits (before `apply_transforms`).
        data_args: the data arguments.
        model: the classifier (timm, transformers, its adapter or a `MixupModel`); None: decide from the data.
        seed: seed of the image sample for the dataset mean/std.
        pretrained: whether the model's weights are pretrained; None reads it off the model (`is_pretrained`).

    Returns:
        `(train_transform, eval_transform, info)`.
    """
    if pretrained is None:
        pretrained = is_pretrained(model)
    config = pretrained_data_config(model) if pretrained else None
    size = fixed_input_size(model)
    if config is not None and _has_cifar_stem(model):
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
    elif config is None:
        info = resolve_transform_info(image_data, data_args, image_size=size, seed=seed)
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


def _adapter(model):
    """The `ClassifierAdapter` of a timm/transformers model, an adapter, or a `MixupModel`; None for None."""
    if model is None:
        return None
    from .backbones import ClassifierAdapter, wrap_classifier

    if isinstance(model, ClassifierAdapter):
        return model
    if isinstance(getattr(model, "classifier", None), ClassifierAdapter):  # a MixupModel
        return model.classifier
    return wrap_classifier(model)


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
    crop_pct = _recipe_crop_pct(recipe) if crop_pct == "recipe" else crop_pct
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
        eval_tf.batch_plan = _BatchPlan(prepare, 0, False, tuple(mean), tuple(std))
        train_tf.batch_plan = _BatchPlan(prepare, 4 if cifar else 0, cifar, tuple(mean), tuple(std))
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


@dataclass(frozen=True)
class _BatchPlan:
    """A `build_transforms` transform split for whole batches: `prepare` (ToImage and the square resize,
    deterministic: run once per image), then a crop of a `padding`-reflect-padded image at a random offset and a
    random horizontal flip (`v2.RandomCrop` and `v2.RandomHorizontalFlip`, the same draws in the same order), then
    float in [0, 1] and `Normalize(mean, std)`."""

    prepare: v2.Compose
    padding: int
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Largest split `apply_transforms` decodes into memory (uint8, 3 x size x size per image): 2 GiB is CIFAR-10's
# training set 13 times over.
DECODE_ONCE_MAX_BYTES = 2 * 2**30


class InMemoryImages(torch.utils.data.Dataset):
    """A split held in memory as one tensor, fetched (and augmented) a batch at a time; rows are
    `{"pixel_values", "labels"}`. Either images decoded once into uint8 and a `_BatchPlan` (`apply_transforms`), or
    ready `pixel_values` with no plan (`in_memory_tensors`).

    `apply_transforms` makes one for small-image recipes ("cifar" without RandAugment, "none"): decoding and
    resizing every image at every epoch, one image at a time, would cost more than a CIFAR step of a small model.
    The DataLoader fetches a batch through `__getitems__`: one gather, one reflect pad, one indexed crop+flip and
    one normalisation for the whole batch. Each row draws its crop offset and flip exactly as the per-image
    transform would (seeded per (seed, epoch, row) as in `_BatchTransform`, else from the global RNG), so the
    pixels are the same as with `with_transform` (tested), and exact resume holds.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        rows: torch.Tensor,
        plan: _BatchPlan | None,
        label_column: str = "labels",
        label_feature: datasets.ClassLabel | None = None,
    ):
        self.images, self.labels, self.rows, self.plan = images, labels, rows, plan
        self.label_column = label_column  # the source's, for `check_labels`' messages
        # The source's label feature, where class names are read (model card, exported id2label).
        self.features = datasets.Features({label_column: label_feature} if label_feature is not None else {})
        self.seed: int | None = None
        self.epoch = 0
        self._generator = torch.Generator()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"Row {index} is out of range for {len(self)} rows.")
        return self.__getitems__([index % len(self)])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        pixels, plan = self.images[index], self.plan
        if plan is not None:
            if plan.padding or plan.flip:
                pixels = self._crop_flip(pixels, self.rows[index].tolist())
            pixels = v2.functional.normalize(
                v2.functional.to_dtype(pixels, torch.float32, scale=True), list(plan.mean), list(plan.std)
            )
        return [{"pixel_values": x, "labels": y} for x, y in zip(pixels, self.labels[index].tolist())]

    def _draw(self, row: int) -> tuple[int, int, bool]:
        """One row's (top, left, flip), drawn as `v2.RandomCrop` then `v2.RandomHorizontalFlip` draw them."""
        plan, generator = self.plan, None
        if self.seed is not None:
            generator = self._generator
            generator.manual_seed(hash((self.seed, self.epoch, int(row))) & 0x7FFF_FFFF_FFFF_FFFF)
        top = left = 0
        if plan.padding:
            top = int(torch.randint(0, 2 * plan.padding + 1, size=(), generator=generator))
            left = int(torch.randint(0, 2 * plan.padding + 1, size=(), generator=generator))
        flip = plan.flip and bool(torch.rand(1, generator=generator) < 0.5)
        return top, left, flip

    def _crop_flip(self, images: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Crops each image at its drawn offset in its reflect-padded copy, flipped if drawn: one gather, the
        padding folded into the indices (reflect: -1 -> 1, size -> size - 2)."""
        pad, (height, width) = self.plan.padding, images.shape[-2:]
        top, left, flip = (
            torch.tensor([self._draw(row) for row in rows], dtype=torch.long).view(-1, 3).unbind(1)
        )

        def reflect(i: torch.Tensor, size: int) -> torch.Tensor:
            return (size - 1) - ((size - 1) - i.abs()).abs()

        ys = reflect(top[:, None] + torch.arange(height) - pad, height)
        xs = torch.arange(width).expand(len(rows), -1)
        xs = reflect(left[:, None] + torch.where(flip[:, None].bool(), width - 1 - xs, xs) - pad, width)
        batch = torch.arange(len(rows))[:, None, None, None]
        channel = torch.arange(images.shape[1])[None, :, None, None]
        return images[batch, channel, ys[:, None, :, None], xs[:, None, None, :]]


def _decode_once(ds: datasets.Dataset, column: str, label_column: str, plan: _BatchPlan, split: str):
    """`InMemoryImages` of a raw split, or None when it would take more than `DECODE_ONCE_MAX_BYTES`."""
    size = plan.prepare.transforms[-1].size
    need = len(ds) * 3 * size[0] * size[1]
    if need > DECODE_ONCE_MAX_BYTES:
        logger.info(
            "The %s split would take %.1f GiB decoded; decoding it one image at a time instead.",
            split,
            need / 2**30,
        )
        return None
    labels = np.asarray(ds.with_format("numpy")[label_column])
    if not np.issubdtype(labels.dtype, np.integer):
        return None  # `collate_fn` names the offending label
    images = torch.empty((len(ds), 3, *size), dtype=torch.uint8)

    def keep(i: int, image: PIL.Image.Image) -> None:
        if image.size == (size[1], size[0]):  # what `prepare` gives (its resize is then a no-op), 20x faster
            images[i].copy_(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        else:
            images[i].copy_(plan.prepare(image))

    rows = _decode_all(ds, column, split, keep=keep)
    labels, rows = torch.as_tensor(labels, dtype=torch.long), torch.as_tensor(rows, dtype=torch.long)
    return InMemoryImages(images, labels, rows, plan, label_column, ds.features[label_column])


def in_memory_tensors(ds) -> InMemoryImages | None:
    """The `pixel_values` and `labels` of an already transformed `datasets.Dataset` as one in-memory float32
    tensor and one label tensor, or None when that does not apply (another kind of dataset, a `with_transform`,
    ragged or non-float pixel values, non-integer labels, more than `DECODE_ONCE_MAX_BYTES` of float32).

    `datasets` formats a batch of nested-list pixel values row by row and value by value (its torch formatter took
    0.6 of a small CIFAR model's step per batch): read once from Arrow, the DataLoader's batch fetch is one gather.
    Floats come out as float32, as `datasets`' torch formatter gives them.
    """
    if not isinstance(ds, datasets.Dataset) or not {"pixel_values", "labels"} <= set(ds.column_names):
        return None
    if ds.format["type"] not in (None, "numpy", "torch", "python") or ds.format["format_kwargs"]:
        return None  # a with_transform, or format options we would not reproduce
    if ds.format["columns"] is not None and not {"pixel_values", "labels"} <= set(ds.format["columns"]):
        return None
    values = ds.with_format("arrow")[:].column("pixel_values").combine_chunks()
    shape = []
    while True:
        if isinstance(values.type, pa.ExtensionType):
            values = values.storage
        elif (
            pa.types.is_list(values.type)
            or pa.types.is_large_list(values.type)
            or pa.types.is_fixed_size_list(values.type)
        ):
            lengths = values.value_lengths()
            if values.null_count or pc.min(lengths).as_py() != pc.max(lengths).as_py():
                return None
            shape.append(pc.min(lengths).as_py())
            values = values.flatten()
        else:
            break
    if not pa.types.is_floating(values.type) or values.null_count or len(shape) != 3:
        return None
    if len(values) * 4 > DECODE_ONCE_MAX_BYTES:
        return None
    labels = np.asarray(ds.with_format("numpy")["labels"])
    if not np.issubdtype(labels.dtype, np.integer):
        return None
    images = torch.from_numpy(
        values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ds), *shape)
    )
    rows = torch.arange(len(ds))
    labels = torch.as_tensor(labels, dtype=torch.long)
    return InMemoryImages(images, labels, rows, None, "labels", ds.features["labels"])


class _BatchTransform:
    """The `with_transform` function: decodes, converts to RGB, transforms; a class so that it pickles.

    With `seed` set, each image's random augmentation is drawn from a generator seeded by (seed, epoch, row)
    and the global RNG is left as it was. Augmentation then depends neither on the global RNG (which the
    mixers draw λ from), nor on DataLoader workers or the number of processes, so a resumed run draws exactly
    what the uninterrupted one did (Trainer restores the RNG only after it has fetched the first batch).
    `AdAutoMixTrainer` sets `seed` and, at each epoch, `epoch` (`set_augmentation_epoch`).
    """

    def __init__(self, transform, image_column: str, label_column: str, seed: int | None = None):
        self.transform, self.image_column, self.label_column = transform, image_column, label_column
        self.seed, self.epoch = seed, 0

    def _apply(self, image: PIL.Image.Image, row: int | None) -> torch.Tensor:
        if self.seed is None or row is None:
            return self.transform(image)
        generator = torch.default_generator  # its own methods: torch.manual_seed would also seed CUDA
        state = generator.get_state()
        generator.manual_seed(hash((self.seed, self.epoch, int(row))) & 0x7FFF_FFFF_FFFF_FFFF)
        try:
            return self.transform(image)
        finally:
            generator.set_state(state)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images = batch[self.image_column]
        rows = batch.get(ROW_COLUMN) or [None] * len(images)
        pixel_values = [
            self._apply(decode_image(value, row), row).as_subclass(torch.Tensor)
            for value, row in zip(images, rows)
        ]
        return {"pixel_values": pixel_values, "labels": list(batch[self.label_column])}


def set_augmentation_epoch(dataset, seed: int | None, epoch: int) -> bool:
    """Seeds the per-image augmentation of a dataset made by `apply_transforms` for `epoch` (see
    `_BatchTransform`); `seed=None` goes back to the global RNG. Returns False for any other dataset."""
    target = (
        dataset
        if isinstance(dataset, InMemoryImages)
        else getattr(dataset, "_format_kwargs", {}).get("transform")
    )
    if not isinstance(target, (_BatchTransform, InMemoryImages)):
        return False
    target.seed, target.epoch = seed, epoch
    return True


def apply_transforms(image_data: ImageData, train_tf, eval_tf, decode_once: bool = True) -> ImageData:
    """Makes each row of the splits `{"pixel_values", "labels"}`, transformed by `train_tf` / `eval_tf`.

    Small-image transforms of `build_transforms` ("cifar" without RandAugment, "none") run on batches: each split
    is decoded once into memory (`InMemoryImages`, uint8; up to `DECODE_ONCE_MAX_BYTES`), which also checks every
    image up front. Other transforms run on the fly, an image at a time (`with_transform`). Either way images are
    decoded by us (not by `datasets`) so that an undecodable one raises a ValueError naming its file or row. Train
    with `remove_unused_columns=False`: Trainer would otherwise drop the image column before the transform sees it.

    Args:
        decode_once: False keeps every split on the per-image path.

    Returns:
        A copy of `image_data` whose `train` uses `train_tf` and `validation` uses `eval_tf`.
    """
    image_col, label_col = image_data.image_column, image_data.label_column

    def with_tf(ds: datasets.Dataset, tf, split: str):
        plan = getattr(tf, "batch_plan", None)
        if decode_once and plan is not None:
            decoded = _decode_once(ds, image_col, label_col, plan, split)
            if decoded is not None:
                return decoded
        columns = [c for c in (image_col, label_col, ROW_COLUMN) if c in ds.column_names]
        raw = ds.cast_column(image_col, datasets.Image(decode=False))
        return raw.with_transform(_BatchTransform(tf, image_col, label_col), columns=columns)

    return replace(
        image_data,
        train=with_tf(image_data.train, train_tf, "train"),
        validation=with_tf(image_data.validation, eval_tf, "validation"),
    )


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stacks `{"pixel_values", "labels"}` rows into a float (B, 3, H, W) and a long (B,) tensor.

    Raises:
        ValueError: when a label is not an integer class id (e.g. a class name).
    """
    # Labels checked here: `default_data_collator` silently drops string labels and makes float ones soft targets.
    rows = [{"pixel_values": e["pixel_values"], "labels": _class_id(e["labels"])} for e in examples]
    return default_data_collator(rows, return_tensors="pt")


def _class_id(label: Any) -> int:
    try:
        class_id = int(label)
    except (TypeError, ValueError, OverflowError):  # None, "cat", NaN, ...
        class_id = None
    if class_id is None or class_id != label:  # also rejects "3" and 1.5, which int() would accept
        raise ValueError(
            f"Expected each row's 'labels' to be an integer class id, got {label!r} ({type(label).__name__}). "
            "Map class names to ids (e.g. `dataset.class_encode_column(...)`), or give a ClassLabel column."
        )
    return class_id


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
