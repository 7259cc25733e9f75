"""The per-split pipeline: transforms applied to each split (decoded once into memory, or per image on the fly),
raw-dataset preparation for `AdAutoMixTrainer` (`prepare_datasets`), the data's class names, and collation."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import datasets
import PIL.Image
import torch
from transformers.data.data_collator import default_data_collator

from . import in_memory
from .arguments import DataTrainingArguments
from .checks import IMAGE_COLUMN_CANDIDATES, LABEL_COLUMN_CANDIDATES, check_labels, find_column
from .config import TransformInfo, resolve_transforms
from .decoding import ROW_COLUMN, decode_image
from .in_memory import InMemoryImages
from .loading import ImageData

logger = logging.getLogger(__name__)


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
    if isinstance(dataset, InMemoryImages):
        target = dataset
    elif isinstance(dataset, datasets.Dataset):
        target = dataset.format["format_kwargs"].get("transform")  # what `with_transform` was given
    else:
        return False
    if not isinstance(target, (_BatchTransform, InMemoryImages)):
        return False
    target.seed, target.epoch = seed, epoch
    return True


def transform_split(
    ds: datasets.Dataset,
    transform,
    image_column: str,
    label_column: str,
    split: str,
    decode_once: bool = True,
):
    """One split made to yield `{"pixel_values", "labels"}` rows transformed by `transform`, its images decoded once.

    A `build_transforms` transform with a batch plan (small images: "cifar" without RandAugment, "none") gives an
    `InMemoryImages`, decoded in one pass that also names every undecodable image; any other (or a split over
    `DECODE_ONCE_MAX_BYTES`) runs an image at a time under `with_transform`.

    Args:
        ds: a raw split (image and label columns).
        transform: the split's transform.
        image_column: the image column.
        label_column: the label column.
        split: the split's name, for messages and the progress bar.
        decode_once: False keeps the split on the per-image path.
    """
    plan = getattr(transform, "batch_plan", None)
    if decode_once and plan is not None:
        decoded = in_memory.decode_once(ds, image_column, label_column, plan, split)
        if decoded is not None:
            return decoded
    columns = [c for c in (image_column, label_column, ROW_COLUMN) if c in ds.column_names]
    raw = ds.cast_column(image_column, datasets.Image(decode=False))
    return raw.with_transform(_BatchTransform(transform, image_column, label_column), columns=columns)


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
    columns = (image_data.image_column, image_data.label_column)
    return replace(
        image_data,
        train=transform_split(image_data.train, train_tf, *columns, "train", decode_once),
        validation=transform_split(image_data.validation, eval_tf, *columns, "validation", decode_once),
    )


def prepare_datasets(
    train, evaluation, *, model_data: dict[str, Any] | None, num_labels: int, seed: int
) -> tuple[Any, Any, TransformInfo | None]:
    """The datasets `AdAutoMixTrainer` was given, ready for training: labels checked, raw image datasets transformed.

    Raw `datasets` image datasets (image + label columns) get the transforms `resolve_transforms` decides (the CLI's
    decision: the data's size unless the model needs one, a pretrained model's preprocessing), decided on the
    training split (else the first raw evaluation split); each split is decoded once. Datasets that already yield
    `pixel_values` are read once into memory where they can be (`in_memory_tensors`), else returned as they are.

    Args:
        train: the training dataset, or None.
        evaluation: an evaluation dataset, a dict of them (each raw one is transformed), or None.
        model_data: the model's data facts (`adapter.data_facts()`); None: decide from the data alone.
        num_labels: the model's number of classes (label check; class names of a raw split without a ClassLabel).
        seed: seed of the dataset mean/std sample.

    Returns:
        `(train, evaluation, info)`: evaluation keeps its form (dict or single); info is None when nothing was raw.

    Raises:
        ValueError: for a streaming dataset, bad labels, or a raw split without the image/label columns.
    """
    evals = evaluation if isinstance(evaluation, dict) else {"eval": evaluation}
    splits = [("train", train), *evals.items()]
    for split, ds in splits:
        _refuse_streaming(ds)
        if ds is not None:  # labels checked up front, also for datasets that are already transformed
            check_labels(ds, None, num_labels, split=split)
            _check_class_count(ds, num_labels, split)
    raw = [(split, ds) for split, ds in splits if _is_raw(ds)]
    undecided = (None, None, (None, None))  # nothing raw: nothing to decide
    info, columns, (train_tf, eval_tf) = _decide(*raw[0], model_data, num_labels, seed) if raw else undecided
    train = _prepare(train, "train", columns, train_tf)
    evals = {split: _prepare(ds, split, columns, eval_tf) for split, ds in evals.items()}
    return train, evals if isinstance(evaluation, dict) else evals["eval"], info


def _prepare(ds, split: str, columns: tuple[str, str] | None, transform):
    """One split of `prepare_datasets`: a raw one transformed (decoded once), a ready one read into memory."""
    if not _is_raw(ds):
        # Ready pixel_values, read once from Arrow rather than formatted row by row at every batch.
        fast = in_memory.in_memory_tensors(ds)
        return ds if fast is None else fast
    for column, kind in zip(columns, ("image", "label")):
        find_column(ds, column, (), kind, split)  # every raw split has the columns the decision was made on
    if ROW_COLUMN not in ds.column_names:  # names undecodable rows, seeds augmentation per row
        ds = ds.add_column(ROW_COLUMN, list(range(len(ds))))
    return transform_split(ds, transform, *columns, split)


def _check_class_count(ds, num_labels: int, split: str) -> None:
    """A ClassLabel label column must have as many classes as the model: otherwise the export's labels are wrong."""
    features = getattr(ds, "features", None) or {}
    column = next((c for c in LABEL_COLUMN_CANDIDATES if c in features), None)
    feature = features[column] if column is not None else None
    if isinstance(feature, datasets.ClassLabel) and feature.num_classes != num_labels:
        raise ValueError(
            f"The model has {num_labels} classes but the '{split}' dataset's label column {column!r} has "
            f"{feature.num_classes}. Build the model with num_labels={feature.num_classes} "
            "(and its id2label), or relabel the data."
        )


def _refuse_streaming(ds) -> None:
    if isinstance(ds, datasets.IterableDataset):
        # Rows are transformed on the fly with `with_transform`, and the mean/std, label checks and exact
        # resume read rows by index: a streaming dataset has none of these.
        raise ValueError(
            f"AdAutoMixTrainer got a {type(ds).__name__} (a streaming dataset); it needs a map-style "
            "datasets.Dataset. Load it with `load_dataset(..., streaming=False)` (or `Dataset.from_generator`)."
        )


def _is_raw(ds) -> bool:
    """A `datasets` image dataset that does not yet yield `pixel_values`; a plain one is told by its columns, without
    decoding an image, one with a `with_transform` by its first row."""
    if not isinstance(ds, datasets.Dataset):
        return False
    if ds.format["type"] == "custom":
        return "pixel_values" not in ds[0]
    return "pixel_values" not in ds.column_names


def _decide(split: str, first: datasets.Dataset, model_data, num_labels: int, seed: int):
    """`prepare_datasets`' decision, made on the raw split `first`: the info, the image and label columns, and the
    train and eval transforms."""
    image_col = find_column(first, None, IMAGE_COLUMN_CANDIDATES, "image", split)
    label_col = find_column(first, None, LABEL_COLUMN_CANDIDATES, "label", split)
    feature = first.features[label_col]
    names = list(feature.names) if hasattr(feature, "names") else [str(i) for i in range(num_labels)]
    image_data = ImageData(first, first, image_col, label_col, names, "user dataset")
    train_tf, eval_tf, info = resolve_transforms(image_data, DataTrainingArguments(), model_data, seed=seed)
    logger.info(
        "Applying the default '%s' transforms (size %d) to the raw image datasets.", info.recipe, info.size
    )
    return info, (image_col, label_col), (train_tf, eval_tf)


def dataset_label_names(splits, num_classes: int) -> list[str] | None:
    """The class names of the data: those of the first `ClassLabel` column (label columns first) with one name per
    class, in the first dataset that has one; None when none has."""
    for ds in splits:
        features = getattr(ds, "features", None) or {}
        columns = [c for c in LABEL_COLUMN_CANDIDATES if c in features] + sorted(features)
        names = [features[c].names for c in columns if isinstance(features[c], datasets.ClassLabel)]
        found = next((list(x) for x in names if len(x) == num_classes), None)
        if found is not None:
            return found
    return None


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
