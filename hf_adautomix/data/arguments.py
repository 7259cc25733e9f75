"""The data arguments: `DataTrainingArguments` (which data, how to transform it) and their validation."""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Literal

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
DEFAULT_CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop default
RAND_AUGMENT_LEVELS = 10  # magnitudes on timm's / mmcls' 0..10 scale ("rand-m7" = 7 of 10)
RAND_AUGMENT_DEFAULT_MAGNITUDE = 9
MAX_RAND_AUGMENT_OPS = 14  # the size of RandAugment's op space


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
        self._check_sources()
        for arg in ("train_dir", "validation_dir"):
            path = getattr(self, arg)
            if path is not None and not os.path.isdir(path):
                raise FileNotFoundError(f"--{arg} {path!r} is not an existing directory.")
        for arg in ("train_file", "validation_file"):
            if getattr(self, arg) is not None:
                _check_file(arg, getattr(self, arg))
        if self.train_file and self.validation_file:
            exts = {
                FILE_BUILDERS[os.path.splitext(p)[1].lower()] for p in (self.train_file, self.validation_file)
            }
            if len(exts) > 1:
                raise ValueError(
                    f"--train_file {self.train_file!r} and --validation_file {self.validation_file!r} must have "
                    "the same format."
                )
        self._check_values()
        self._check_rand_augment()

    def _check_sources(self) -> None:
        """At most one source; a validation source only with a training source of the same kind."""
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

    def _check_values(self) -> None:
        """The split fraction, sample counts, image size, recipe and crop scale."""
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

    def _check_rand_augment(self) -> None:
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


def _check_file(arg: str, path: str) -> None:
    """`--train_file`/`--validation_file`: a supported extension, and an existing file or a glob matching one."""
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
