"""Checks before training: the image and label columns exist, labels fit the model and agree across splits, every
image decodes; and `error_summary`, the one-paragraph message of an error re-raised by a DataLoader worker."""

from __future__ import annotations

import re
from dataclasses import dataclass

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from .decoding import MAX_LISTED, ROW_COLUMN, decode_all
from .in_memory import InMemoryImages

IMAGE_COLUMN_CANDIDATES = ("image", "img")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label")


def find_column(
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


@dataclass(frozen=True)
class SplitClasses:
    """What `split_classes` found in one split's label column."""

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


def split_classes(ds: datasets.Dataset, column: str, split: str) -> SplitClasses:
    """Checks the label values of one split of the CLI path and returns its classes.

    Raises:
        ValueError: for rows without a label, ClassLabel ids outside -1..num_classes-1, negative plain numeric
            labels, or a label feature that is neither a ClassLabel, strings nor numbers.
    """
    if len(ds) == 0:
        raise ValueError(f"The '{split}' split has no rows; it needs at least one image and label.")
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
        return SplitClasses(split, "ClassLabel", True, names, -1 in values)
    if is_string:
        return SplitClasses(split, "string", True, frozenset(values), False)
    negative = {v for v in values if v < 0}
    if negative:
        rows = pc.sum(pc.less(labels, 0)).as_py()
        raise ValueError(
            f"{where} has negative labels {_preview(negative)} in {rows} row(s); class labels must be "
            "non-negative integers or class names. If they mark unlabelled rows, remove those rows."
        )
    _refuse_fractions(labels, where)
    return SplitClasses(split, feature.dtype, False, frozenset(values), False)


def _refuse_fractions(labels: pa.ChunkedArray, where: str) -> None:
    """Float labels must be whole numbers (class ids): 2.5 is no class. Names the first offending row."""
    if not pa.types.is_floating(labels.type):
        return
    fractional = pc.not_equal(labels, pc.floor(labels))  # NaN != NaN: NaN is refused too
    rows = pc.sum(fractional).as_py() or 0
    if rows:
        first = pc.index(fractional, True).as_py()
        values = pc.unique(pc.filter(labels, fractional)).to_pylist()
        raise ValueError(
            f"{where} has {rows} row(s) with non-integer labels {_preview(values)} (first: row {first}, label "
            f"{labels[first].as_py()!r}); expected one integer class id per row. Fix those labels."
        )


def check_validation_classes(train: SplitClasses, validation: SplitClasses, column: str, val_name: str):
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
        values = _torch_dataset_labels(dataset)
        if values is None:
            return
        labels, column = pa.chunked_array([pa.array(values)]), "labels"
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
        fractional = pc.invert(pc.fill_null(pc.equal(labels, pc.floor(labels)), False))
        first = pc.index(fractional, True).as_py()
        raise ValueError(
            f"{where} has feature {dataset.features[column]}; expected one integer class id per row "
            f"(values seen: {_preview(pc.unique(labels).to_pylist())}); first non-integer: row {first}, label "
            f"{labels[first].as_py()!r}."
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


TORCH_SCAN_MAX_ROWS = (
    20_000  # a torch Dataset without `targets` is read row by row up to this size to check labels
)


def _torch_dataset_labels(dataset) -> list | None:
    """The labels of a torch-style dataset: its `targets` attribute (torchvision's), else each row's "labels" when
    it has at most `TORCH_SCAN_MAX_ROWS` dict rows; None when they cannot be read."""
    targets = getattr(dataset, "targets", None)
    if targets is not None and not callable(targets):
        values = list(targets)
    elif hasattr(dataset, "__getitem__") and 0 < len(dataset) <= TORCH_SCAN_MAX_ROWS:
        rows = (dataset[i] for i in range(len(dataset)))
        values = []
        for row in rows:
            if not isinstance(row, dict) or "labels" not in row:
                return None
            values.append(row["labels"])
    else:
        return None
    values = [v.item() if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 else v for v in values]
    if any(not isinstance(v, (int, float, str)) or isinstance(v, bool) for v in values if v is not None):
        return None  # soft labels or other targets: `collate_fn` names them
    return values


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
    column = find_column(dataset, image_column, IMAGE_COLUMN_CANDIDATES, "image", split)
    decode_all(dataset, column, split, batch_size=batch_size)


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
