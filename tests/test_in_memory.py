"""The in-memory data path: small-image splits decoded once and augmented a batch at a time, and ready
`pixel_values` datasets read once from Arrow, give exactly the rows of the per-image `datasets` path."""

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_model
from transformers import TrainingArguments

from hf_adautomix import AdAutoMixTrainer
from hf_adautomix import data as data_lib
from hf_adautomix.data import (
    ImageData,
    InMemoryImages,
    apply_transforms,
    build_transforms,
    collate_fn,
    in_memory_tensors,
    set_augmentation_epoch,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def raw(n=24, sizes=((32, 32),), seed=0):
    """A raw split: random RGB images (cycling through `sizes`, width x height) and integer labels."""
    rng = np.random.default_rng(seed)
    images = [
        PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in (sizes * n)[:n]
    ]
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    ds = datasets.Dataset.from_dict({"img": images, "label": [i % 3 for i in range(n)]}, features)
    return ds.add_column(data_lib.ROW_COLUMN, list(range(100, 100 + n)))  # rows as loading numbers them


def both_paths(recipe, size=32, **kwargs):
    ds = raw(**kwargs)
    data = ImageData(ds, ds, "img", "label", ["a", "b", "c"], "test")
    transforms = build_transforms(recipe, size, MEAN, STD)
    return apply_transforms(data, *transforms, decode_once=False), apply_transforms(data, *transforms)


def fetch(ds, indices, global_seed=None):
    if global_seed is not None:
        torch.manual_seed(global_seed)
    return collate_fn(ds.__getitems__(indices))


class TestDecodedOnce:
    @pytest.mark.parametrize("seed", [None, 3])
    def test_cifar_train_rows_are_the_per_image_pixels(self, seed):
        per_image, in_memory = both_paths("cifar")
        assert isinstance(in_memory.train, InMemoryImages)
        assert not isinstance(per_image.train, InMemoryImages)
        indices = [5, 0, 23, 5, 11, 7, 19]
        for epoch in (0, 1):
            for ds in (per_image.train, in_memory.train):
                assert set_augmentation_epoch(ds, seed, epoch)
            a, b = fetch(per_image.train, indices, 0), fetch(in_memory.train, indices, 0)
            assert torch.equal(a["pixel_values"], b["pixel_values"])
            assert torch.equal(a["labels"], b["labels"])

    def test_augmentation_really_happens_and_follows_the_epoch(self):
        _, in_memory = both_paths("cifar")
        ds, indices = in_memory.train, list(range(24))
        set_augmentation_epoch(ds, 0, 0)
        epoch0, again = fetch(ds, indices), fetch(ds, indices)
        set_augmentation_epoch(ds, 0, 1)
        epoch1 = fetch(ds, indices)
        assert torch.equal(epoch0["pixel_values"], again["pixel_values"])  # seeded: the same draws
        assert not torch.equal(epoch0["pixel_values"], epoch1["pixel_values"])
        plain = (ds.images[:24].float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(
            3, 1, 1
        )
        changed = (epoch0["pixel_values"] - plain).abs().flatten(1).amax(1) > 1e-5
        assert changed.float().mean() > 0.5  # most rows cropped off-centre or flipped

    def test_mixed_sizes_are_resized_as_per_image(self):
        per_image, in_memory = both_paths("cifar", sizes=((32, 32), (40, 24), (16, 16)))
        assert isinstance(in_memory.train, InMemoryImages)
        assert in_memory.train.images.shape == (24, 3, 32, 32)
        for ds in (per_image.train, in_memory.train):
            set_augmentation_epoch(ds, 1, 0)
        indices = list(range(24))
        assert torch.equal(
            fetch(per_image.train, indices)["pixel_values"], fetch(in_memory.train, indices)["pixel_values"]
        )

    @pytest.mark.parametrize("recipe", ["cifar", "none"])
    def test_eval_rows(self, recipe):
        per_image, in_memory = both_paths(recipe)
        indices = list(range(24))
        for split in ("train", "validation"):
            a, b = getattr(per_image, split), getattr(in_memory, split)
            set_augmentation_epoch(a, 0, 0)
            set_augmentation_epoch(b, 0, 0)
            assert torch.equal(fetch(a, indices)["pixel_values"], fetch(b, indices)["pixel_values"])

    def test_single_rows_and_dataloader(self):
        _, in_memory = both_paths("none")
        ds = in_memory.validation
        assert torch.equal(ds[3]["pixel_values"], ds.__getitems__([3])[0]["pixel_values"])
        assert torch.equal(ds[-1]["pixel_values"], ds[23]["pixel_values"])
        with pytest.raises(IndexError):
            ds[24]
        loader = torch.utils.data.DataLoader(ds, batch_size=10, collate_fn=collate_fn)
        batches = list(loader)
        assert [len(b["labels"]) for b in batches] == [10, 10, 4]
        assert torch.equal(
            torch.cat([b["pixel_values"] for b in batches]), fetch(ds, list(range(24)))["pixel_values"]
        )

    def test_workers_give_the_same_batches(self):
        _, in_memory = both_paths("cifar")
        ds = in_memory.train
        set_augmentation_epoch(ds, 5, 2)  # seeded per row: the same pixels whatever process draws them
        batches = [
            list(torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_fn, num_workers=workers))
            for workers in (0, 2)
        ]
        for a, b in zip(*batches):
            assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])

    def test_other_recipes_stay_per_image(self):
        ds = raw()
        data = ImageData(ds, ds, "img", "label", ["a", "b", "c"], "test")
        for transforms in (
            build_transforms("imagenet", 32, MEAN, STD),
            build_transforms("cifar", 32, MEAN, STD, rand_augment=(2, 9)),
            build_transforms("cifar", 32, MEAN, STD, crop_pct=0.9),
        ):
            out = apply_transforms(data, *transforms)
            assert not isinstance(out.train, InMemoryImages)

    def test_too_large_a_split_stays_per_image(self, monkeypatch):
        monkeypatch.setattr(data_lib.in_memory, "DECODE_ONCE_MAX_BYTES", 24 * 3 * 32 * 32 - 1)
        per_image, in_memory = both_paths("cifar")
        assert not isinstance(in_memory.train, InMemoryImages)


def ready(n=40, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 8, 8)).astype(dtype)
    return datasets.Dataset.from_dict(
        {"pixel_values": list(x), "labels": [i % 3 for i in range(n)], "id": list(range(n))}
    )


class TestReadyTensors:
    @pytest.mark.parametrize(
        "make",
        [
            lambda ds: ds,
            lambda ds: ds.with_format("torch"),
            lambda ds: ds.with_format("numpy"),
            lambda ds: ds.cast_column("pixel_values", datasets.Array3D((3, 8, 8), "float32")).with_format(
                "torch"
            ),
            lambda ds: ds.shuffle(seed=0).select(range(25)).with_format("torch"),
            lambda ds: ready(dtype=np.float64).with_format("torch"),
        ],
        ids=["python", "torch", "numpy", "array3d", "shuffled-selected", "float64"],
    )
    def test_rows_equal_the_datasets_rows(self, make):
        ds = make(ready())
        fast = in_memory_tensors(ds)
        assert isinstance(fast, InMemoryImages) and len(fast) == len(ds)
        indices = list(range(0, len(ds), 3))
        a, b = collate_fn(ds.__getitems__(indices)), collate_fn(fast.__getitems__(indices))
        assert b["pixel_values"].dtype == torch.float32
        assert torch.allclose(a["pixel_values"].float(), b["pixel_values"], rtol=0, atol=1e-6)
        assert torch.equal(a["labels"], b["labels"])

    def test_not_applicable(self):
        ds = ready()
        assert in_memory_tensors(ds.with_transform(lambda batch: batch)) is None
        assert in_memory_tensors(ds.with_format("torch", columns=["pixel_values"])) is None
        assert in_memory_tensors(ds.remove_columns("labels")) is None
        ragged = datasets.Dataset.from_dict(
            {
                "pixel_values": [np.zeros((3, 8, 8), np.float32), np.zeros((3, 8, 9), np.float32)],
                "labels": [0, 1],
            }
        )
        assert in_memory_tensors(ragged) is None
        named = ready().cast_column("labels", datasets.Value("string"))
        assert in_memory_tensors(named) is None
        assert in_memory_tensors(torch.utils.data.TensorDataset(torch.zeros(2))) is None

    def test_trainer_reads_ready_datasets_once(self, tmp_path):
        model, _ = make_model("hf_resnet", num_labels=3)
        ds = ready(n=16).map(
            lambda b: {"pixel_values": [np.zeros((3, 32, 32), np.float32)] * len(b["id"])}, batched=True
        )
        args = TrainingArguments(
            output_dir=str(tmp_path), report_to=[], per_device_train_batch_size=8, max_steps=2
        )
        trainer = AdAutoMixTrainer(
            model=model, args=args, train_dataset=ds.with_format("torch"), eval_dataset=ds
        )
        assert isinstance(trainer.train_dataset, InMemoryImages)
        assert isinstance(trainer.eval_dataset, InMemoryImages)
        trainer.train()
        assert trainer.state.global_step == 2
