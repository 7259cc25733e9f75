"""Loading image datasets: the Hub, local folders, parquet/csv/json files or the embedded digits, as train and
validation splits with an `Image` column and integer labels 0..K-1 (`ImageData`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import PIL.Image

from .arguments import FILE_BUILDERS, DataTrainingArguments
from .checks import (
    IMAGE_COLUMN_CANDIDATES,
    LABEL_COLUMN_CANDIDATES,
    check_validation_classes,
    find_column,
    split_classes,
)
from .decoding import ROW_COLUMN

logger = logging.getLogger(__name__)

VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "test")


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
        validation_source: where the validation split came from when it has its own folder or file
            (`--validation_dir`/`--validation_file`), else None.
    """

    train: datasets.Dataset
    validation: datasets.Dataset
    image_column: str
    label_column: str
    labels: list[str]
    source: str
    validation_source: str | None = None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}


def load_digits_dataset() -> tuple[datasets.Dataset, datasets.Dataset]:
    """scikit-learn's handwritten digits as a 32x32 RGB image dataset, in memory.

    The 8x8 images (values 0..16) are scaled to 0..255 and enlarged with nearest-neighbour resampling. The
    split is fixed and stratified: `train_test_split(test_size=0.2, stratify=y, random_state=0)`.

    Returns:
        `(train, validation)` with columns `image` (`Image`) and `label` (`ClassLabel` "0".."9").
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
        }
    )

    def make(idx: np.ndarray) -> datasets.Dataset:
        columns = {
            "image": [images[i] for i in idx],
            "label": digits.target[idx].tolist(),
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
    image_col = find_column(train, data_args.image_column_name, IMAGE_COLUMN_CANDIDATES, "image", "train")
    label_col = find_column(train, data_args.label_column_name, LABEL_COLUMN_CANDIDATES, "label", "train")
    used = {"train": train}
    if val_name is not None:
        for column, kind in ((image_col, "image"), (label_col, "label")):
            find_column(splits[val_name], column, (), kind, val_name)
        used["validation"] = splits[val_name]
    used = {name: _prepare_image_column(ds, image_col, name) for name, ds in used.items()}
    split_names = {"train": "train", "validation": val_name}
    classes = {name: split_classes(ds, label_col, split_names[name]) for name, ds in used.items()}
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
        check_validation_classes(classes["train"], classes["validation"], label_col, val_name)
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
    own = data_args.validation_dir or data_args.validation_file
    validation_source = (
        f"{'image folder' if data_args.validation_dir else 'file'} {_short_path(own)!r}" if own else None
    )
    return ImageData(train, validation, image_col, label_col, labels, source, validation_source)


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
            split: _load_file(builder, split, path, cache_dir)
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


def _load_file(builder: str, split: str, path: str, cache_dir: str | None) -> datasets.Dataset:
    """One `--train_file`/`--validation_file`; an empty file is an error naming it."""
    empty = ValueError(f"--{split}_file {path!r} has no rows; it needs at least one image and label.")
    try:
        ds = datasets.load_dataset(builder, data_files={split: path}, split=split, cache_dir=cache_dir)
    except ValueError as err:  # pyarrow's ArrowInvalid is a ValueError too
        if "corresponds to no data" in str(err) or "BatchSize must be greater than 0" in str(err):
            raise empty from err
        raise
    if len(ds) == 0:
        raise empty
    return ds


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
