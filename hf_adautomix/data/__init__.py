"""Image datasets for training: the public names of the data package, one concern per module.

The usual sequence, as in transformers' `run_image_classification.py`::

    data = load_image_datasets(data_args)                       # splits, columns, integer labels
    facts = wrap_classifier(model).data_facts()                 # the model's size/preprocessing, as plain values
    train_tf, eval_tf, info = resolve_transforms(data, data_args, facts, seed)  # size, recipe, mean/std
    data = apply_transforms(data, train_tf, eval_tf)            # rows -> {"pixel_values", "labels"}
    processor = make_image_processor(info)                      # the eval transform, for pipeline()

Before training, `check_labels` (labels fit the model) and `check_images` (every image decodes) catch bad data
early; `error_summary` turns an error re-raised by a DataLoader worker back into its one-paragraph message.
`AdAutoMixTrainer` prepares the datasets it is given with `prepare_datasets`.

With no data argument at all, `load_image_datasets` returns the embedded default: scikit-learn's
handwritten digits as 32x32 RGB images, for demos and tests.

Modules: `arguments` (DataTrainingArguments), `loading` (sources, labels, ImageData), `decoding` (images to RGB,
errors naming the file or row), `checks` (columns, labels, images, worker errors), `config` (the transform
decision, TransformInfo), `transforms` (transform construction, the exported image processor), `in_memory` (the
decode-once and ready-tensor fast path), `pipeline` (per-split application, raw-dataset preparation, collation).
This package never imports a model: model facts arrive as plain values (`adapter.data_facts()`).
"""

from .arguments import (
    DEFAULT_CROP_SCALE,
    FILE_BUILDERS,
    MAX_RAND_AUGMENT_OPS,
    RAND_AUGMENT_DEFAULT_MAGNITUDE,
    RAND_AUGMENT_LEVELS,
    DataTrainingArguments,
)
from .checks import (
    IMAGE_COLUMN_CANDIDATES,
    LABEL_COLUMN_CANDIDATES,
    check_images,
    check_labels,
    error_summary,
    find_column,
)
from .config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SMALL_IMAGE_MAX_SIDE,
    TransformInfo,
    compute_mean_std,
    resolve_transform_info,
    resolve_transforms,
)
from .decoding import MAX_LISTED, ROW_COLUMN, decode_image, to_rgb
from .in_memory import DECODE_ONCE_MAX_BYTES, InMemoryImages, in_memory_tensors
from .loading import VALIDATION_SPLIT_NAMES, ImageData, load_digits_dataset, load_image_datasets
from .pipeline import (
    apply_transforms,
    collate_fn,
    dataset_label_names,
    prepare_datasets,
    set_augmentation_epoch,
    transform_split,
)
from .transforms import EVAL_CROP_PCT, INTERPOLATIONS, Recipe, build_transforms, make_image_processor

__all__ = [
    "DECODE_ONCE_MAX_BYTES",
    "DEFAULT_CROP_SCALE",
    "EVAL_CROP_PCT",
    "FILE_BUILDERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_COLUMN_CANDIDATES",
    "INTERPOLATIONS",
    "LABEL_COLUMN_CANDIDATES",
    "MAX_LISTED",
    "MAX_RAND_AUGMENT_OPS",
    "RAND_AUGMENT_DEFAULT_MAGNITUDE",
    "RAND_AUGMENT_LEVELS",
    "ROW_COLUMN",
    "SMALL_IMAGE_MAX_SIDE",
    "VALIDATION_SPLIT_NAMES",
    "Recipe",
    "DataTrainingArguments",
    "ImageData",
    "InMemoryImages",
    "TransformInfo",
    "apply_transforms",
    "build_transforms",
    "check_images",
    "check_labels",
    "collate_fn",
    "compute_mean_std",
    "dataset_label_names",
    "decode_image",
    "error_summary",
    "find_column",
    "in_memory_tensors",
    "load_digits_dataset",
    "load_image_datasets",
    "make_image_processor",
    "prepare_datasets",
    "resolve_transform_info",
    "resolve_transforms",
    "set_augmentation_epoch",
    "to_rgb",
    "transform_split",
]
