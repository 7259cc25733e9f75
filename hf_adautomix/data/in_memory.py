"""The in-memory data path: a split held as one tensor and fetched (and augmented) a batch at a time.

`decode_once` decodes a raw small-image split once into uint8 (`InMemoryImages` with a `BatchPlan`);
`in_memory_tensors` reads an already transformed split's `pixel_values` once from Arrow. Either way the DataLoader's
batch fetch is one gather instead of per-row decoding or formatting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchvision.transforms import v2

from .decoding import decode_all

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPlan:
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
    `{"pixel_values", "labels"}`. Either images decoded once into uint8 and a `BatchPlan` (`apply_transforms`), or
    ready `pixel_values` with no plan (`in_memory_tensors`).

    `apply_transforms` makes one for small-image recipes ("cifar" without RandAugment, "none"): decoding and
    resizing every image at every epoch, one image at a time, would cost more than a CIFAR step of a small model.
    The DataLoader fetches a batch through `__getitems__`: one gather, one reflect pad, one indexed crop+flip and
    one normalisation for the whole batch. Each row draws its crop offset and flip exactly as the per-image
    transform would (seeded per (seed, epoch, row) as in `pipeline._BatchTransform`, else from the global RNG), so
    the pixels are the same as with `with_transform` (tested), and exact resume holds.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        rows: torch.Tensor,
        plan: BatchPlan | None,
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


def decode_once(ds: datasets.Dataset, column: str, label_column: str, plan: BatchPlan, split: str):
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

    rows = decode_all(ds, column, split, keep=keep)
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
