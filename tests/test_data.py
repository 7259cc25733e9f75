"""Data loading and transforms, offline: one class per source, one per transform concern, every error path."""

import io
import logging
import os
from collections import Counter

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import HfArgumentParser

from hf_adautomix.backbones import wrap_classifier
from hf_adautomix.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataTrainingArguments,
    TransformInfo,
    apply_transforms,
    build_transforms,
    collate_fn,
    compute_mean_std,
    decode_image,
    load_image_datasets,
    make_image_processor,
    resolve_transform_info,
    to_rgb,
)

CLASSES = ["cat", "dog"]


def image(size=(12, 10), mode="RGB", seed=0):
    """A random PIL image of `size` (width, height) in `mode`."""
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def image_dataset(n=20, num_classes=2, size=(12, 10), image_col="image", label_col="label", labels=None):
    """An in-memory dataset: an Image column and a ClassLabel column, or string labels when `labels` is given."""
    if labels is None:
        labels = [i % num_classes for i in range(n)]
        label_feature = datasets.ClassLabel(names=[f"c{i}" for i in range(num_classes)])
    else:
        label_feature = datasets.Value("string")
    features = datasets.Features({image_col: datasets.Image(), label_col: label_feature})
    images = [image(size, seed=i) for i in range(len(labels))]
    return datasets.Dataset.from_dict({image_col: images, label_col: labels}, features=features)


def png_bytes(seed):
    buffer = io.BytesIO()
    image(seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def load(**kwargs):
    cache_dir = kwargs.pop("cache_dir", None)
    return load_image_datasets(DataTrainingArguments(**kwargs), cache_dir=cache_dir)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """train/{cat,dog}/*.png (plus odd modes) and validation/{cat,dog}/*.png."""
    root = tmp_path_factory.mktemp("imagefolder")
    for split, n in (("train", 6), ("validation", 2)):
        for c, name in enumerate(CLASSES):
            os.makedirs(root / split / name)
            for i in range(n):
                image((16, 12), seed=10 * c + i).save(root / split / name / f"{i}.png")
    odd = root / "train" / "cat"
    image((16, 12), "L").save(odd / "grey.png")
    image((16, 12), "P").save(odd / "palette.png")
    rgba = image((16, 12), "RGBA")
    rgba.putalpha(0)  # fully transparent: must come out white
    rgba.save(odd / "rgba.png")
    image((16, 12), "CMYK").save(odd / "cmyk.jpg")
    return root


@pytest.fixture(scope="module")
def corrupt_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    for name in CLASSES:
        os.makedirs(root / name)
        image(seed=1).save(root / name / "ok.png")
    good = (root / "cat" / "ok.png").read_bytes()
    (root / "dog" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    return root


class TestArguments:
    def test_two_sources(self, tmp_path):
        with pytest.raises(ValueError, match="Give one data source, got 2: --dataset_name 'x', --train_dir"):
            DataTrainingArguments(dataset_name="x", train_dir=str(tmp_path))

    @pytest.mark.parametrize("pair", [("train_dir", "validation_dir"), ("train_file", "validation_file")])
    def test_validation_without_train(self, tmp_path, pair):
        with pytest.raises(ValueError, match=f"--{pair[1]} .* without --{pair[0]}"):
            DataTrainingArguments(**{pair[1]: str(tmp_path)})

    @pytest.mark.parametrize("arg", ["train_dir", "validation_dir"])
    def test_missing_dir(self, tmp_path, arg):
        kwargs = {"train_dir": str(tmp_path), arg: str(tmp_path / "nope")}
        with pytest.raises(FileNotFoundError, match=f"--{arg} '.*nope' is not an existing directory"):
            DataTrainingArguments(**kwargs)

    def test_unsupported_extension(self, tmp_path):
        with pytest.raises(
            ValueError, match=r"--train_file '.*data.txt' has an unsupported extension '.txt'"
        ):
            DataTrainingArguments(train_file=str(tmp_path / "data.txt"))

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="--train_file '.*nope.parquet' is not an existing file"):
            DataTrainingArguments(train_file=str(tmp_path / "nope.parquet"))

    def test_mixed_file_formats(self, tmp_path):
        (tmp_path / "a.parquet").touch()
        (tmp_path / "b.csv").touch()
        with pytest.raises(ValueError, match="must have the same format"):
            DataTrainingArguments(
                train_file=str(tmp_path / "a.parquet"), validation_file=str(tmp_path / "b.csv")
            )

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"train_val_split": 0.0}, r"--train_val_split must be in \(0, 1\), got 0.0"),
            ({"max_train_samples": 0}, "--max_train_samples must be a positive integer, got 0"),
            ({"image_size": -3}, "--image_size must be a positive integer, got -3"),
            ({"transform_recipe": "fancy"}, "--transform_recipe must be one of .* got 'fancy'"),
        ],
    )
    def test_bad_values(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            DataTrainingArguments(**kwargs)

    def test_parser_gives_recipe_choices(self):
        parser = HfArgumentParser(DataTrainingArguments)
        (args,) = parser.parse_args_into_dataclasses(
            ["--transform_recipe", "cifar", "--max_train_samples", "5"]
        )
        assert args.transform_recipe == "cifar" and args.max_train_samples == 5
        with pytest.raises(SystemExit):
            parser.parse_args_into_dataclasses(["--transform_recipe", "fancy"])


class TestEmbeddedDefault:
    def test_shape_of_the_data(self, caplog):
        with caplog.at_level(logging.WARNING, logger="hf_adautomix.data"):
            data = load()
        assert "No dataset given: using the embedded default" in caplog.text
        assert "1437 train / 360 validation" in caplog.text
        assert (len(data.train), len(data.validation)) == (1437, 360)
        assert data.labels == [str(i) for i in range(10)]
        assert (data.image_column, data.label_column) == ("image", "label")
        first = data.train[0]["image"]
        assert (first.size, first.mode) == ((32, 32), "RGB")

    def test_split_is_fixed_and_stratified(self):
        a, b = load(), load()
        assert a.train["label"][:] == b.train["label"][:]
        assert np.array_equal(
            np.asarray(a.validation[:20]["image"][0]), np.asarray(b.validation[:20]["image"][0])
        )
        train, val = Counter(a.train["label"]), Counter(a.validation["label"])
        for k in range(10):
            assert train[k] / len(a.train) == pytest.approx(val[k] / len(a.validation), abs=0.01)

    def test_max_samples(self):
        data = load(max_train_samples=50, max_eval_samples=20)
        assert (len(data.train), len(data.validation)) == (50, 20)


class TestSavedToDisk:
    def test_dataset_dict_with_test_split(self, tmp_path):
        datasets.DatasetDict({"train": image_dataset(20), "test": image_dataset(6)}).save_to_disk(
            tmp_path / "ds"
        )
        data = load(dataset_name=str(tmp_path / "ds"))
        assert (len(data.train), len(data.validation)) == (20, 6)
        assert data.labels == ["c0", "c1"]
        assert "saved on disk" in data.source

    def test_single_dataset_is_split(self, tmp_path):
        image_dataset(40).save_to_disk(tmp_path / "ds")
        data = load(dataset_name=str(tmp_path / "ds"), train_val_split=0.25)
        assert (len(data.train), len(data.validation)) == (30, 10)
        assert Counter(data.validation["label"]) == {0: 5, 1: 5}  # stratified

    def test_missing_local_path(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="--dataset_name '.*nope' looks like a local path"):
            load(dataset_name=str(tmp_path / "nope"))


class TestLocalDatasetFolder:
    def test_folder_of_parquet_files(self, tmp_path):
        (tmp_path / "data").mkdir()
        image_dataset(10).to_parquet(tmp_path / "data" / "train.parquet")
        image_dataset(4).to_parquet(tmp_path / "data" / "validation.parquet")
        data = load(dataset_name=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
        assert (len(data.train), len(data.validation)) == (10, 4)
        assert data.labels == ["c0", "c1"]


class TestHub:
    def test_offline_hub_id(self, tmp_path, monkeypatch):
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        with pytest.raises(
            FileNotFoundError, match="Could not load dataset 'someone/no-such-dataset'.*HF_HUB_OFFLINE"
        ):
            load(dataset_name="someone/no-such-dataset", cache_dir=str(tmp_path))


class TestImageFolder:
    def test_train_and_validation_dirs(self, image_folder, tmp_path):
        data = load(
            train_dir=str(image_folder / "train"),
            validation_dir=str(image_folder / "validation"),
            cache_dir=str(tmp_path),
        )
        assert (len(data.train), len(data.validation)) == (16, 4)
        assert data.labels == CLASSES
        assert "image folder" in data.source

    def test_every_mode_comes_out_rgb(self, image_folder, tmp_path):
        data = load(train_dir=str(image_folder / "train"), cache_dir=str(tmp_path))
        info = TransformInfo("none", 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        data = apply_transforms(data, *build_transforms(info.recipe, info.size, info.mean, info.std))
        for row in list(data.train) + list(data.validation):
            assert row["pixel_values"].shape == (3, 16, 16)

    def test_transparent_png_is_white(self, image_folder):
        rgb = decode_image(str(image_folder / "train" / "cat" / "rgba.png"))
        assert rgb.mode == "RGB" and np.all(np.asarray(rgb) == 255)

    def test_train_dir_alone_is_split(self, image_folder, tmp_path):
        data = load(train_dir=str(image_folder / "train"), train_val_split=0.25, cache_dir=str(tmp_path))
        assert (len(data.train), len(data.validation)) == (12, 4)

    def test_corrupt_file_is_named(self, corrupt_folder, tmp_path):
        data = load(train_dir=str(corrupt_folder), train_val_split=0.5, cache_dir=str(tmp_path))
        transforms = build_transforms("none", 12, (0, 0, 0), (1, 1, 1))
        per_image = apply_transforms(data, *transforms, decode_once=False)
        rows = [per_image.train, per_image.validation]
        with pytest.raises(ValueError, match="Could not decode image file '.*broken.png'"):
            [ds[i] for ds in rows for i in range(len(ds))]
        # Decoding once finds it up front.
        with pytest.raises(
            ValueError, match="1 of the . images .* could not be decoded: file '.*broken.png'"
        ):
            apply_transforms(data, *transforms)

    def test_empty_dir(self, tmp_path):
        with pytest.raises(
            FileNotFoundError, match="--train_dir '.*' contains no files; expected images laid out"
        ):
            load(train_dir=str(tmp_path))

    def test_images_without_class_folders(self, tmp_path):
        (tmp_path / "flat").mkdir()
        for i in range(3):
            image(seed=i).save(tmp_path / "flat" / f"{i}.png")
        with pytest.raises(
            ValueError, match="--train_dir '.*flat' gave no labels: .* one sub-folder per class"
        ):
            load(train_dir=str(tmp_path / "flat"), cache_dir=str(tmp_path / "cache"))


class TestParquetFiles:
    def test_train_and_validation_files(self, tmp_path):
        image_dataset(12).to_parquet(tmp_path / "train.parquet")
        image_dataset(4).to_parquet(tmp_path / "val.parquet")
        data = load(
            train_file=str(tmp_path / "train.parquet"),
            validation_file=str(tmp_path / "val.parquet"),
            cache_dir=str(tmp_path / "cache"),
        )
        assert (len(data.train), len(data.validation)) == (12, 4)
        assert isinstance(data.train.features["image"], datasets.Image)
        assert data.train[0]["image"].size == (12, 10)

    def test_garbage_bytes_row_is_named(self, tmp_path):
        rows = [{"bytes": png_bytes(i), "path": None} for i in range(4)]
        rows[2] = {"bytes": b"definitely not an image", "path": None}
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
        datasets.Dataset.from_dict({"image": rows, "label": [0, 1, 0, 1]}, features=features).to_parquet(
            tmp_path / "t.parquet"
        )
        data = load(train_file=str(tmp_path / "t.parquet"), cache_dir=str(tmp_path / "cache"))
        transforms = build_transforms("none", 12, (0, 0, 0), (1, 1, 1))
        per_image = apply_transforms(data, *transforms, decode_once=False)
        with pytest.raises(ValueError, match="Could not decode image at row 2: UnidentifiedImageError"):
            [ds[i] for ds in (per_image.train, per_image.validation) for i in range(len(ds))]
        with pytest.raises(ValueError, match=r"could not be decoded: row 2 \(UnidentifiedImageError"):
            apply_transforms(data, *transforms)


class TestColumnsAndLabels:
    def save(self, ds, tmp_path):
        datasets.DatasetDict({"train": ds}).save_to_disk(tmp_path / "ds")
        return str(tmp_path / "ds")

    def test_img_and_fine_label_are_found(self, tmp_path):
        data = load(
            dataset_name=self.save(image_dataset(10, image_col="img", label_col="fine_label"), tmp_path)
        )
        assert (data.image_column, data.label_column) == ("img", "fine_label")

    def test_missing_column_lists_present_columns(self, tmp_path):
        path = self.save(image_dataset(10, image_col="picture"), tmp_path)
        with pytest.raises(
            ValueError,
            match=r"image column .* none of \['image', 'img'\] .* columns \['picture', 'label'\]\. Set --image_column_name",
        ):
            load(dataset_name=path)

    def test_given_column_missing(self, tmp_path):
        path = self.save(image_dataset(10), tmp_path)
        with pytest.raises(
            ValueError,
            match=r"label column 'y' is not in the 'train' split; its columns are \['image', 'label'\]",
        ):
            load(dataset_name=path, label_column_name="y")

    def test_string_labels_become_sorted_class_ids(self, tmp_path):
        ds = image_dataset(labels=["zebra", "ant", "moth", "ant", "zebra", "moth"] * 2)
        data = load(dataset_name=self.save(ds, tmp_path), train_val_split=0.5)
        assert data.labels == ["ant", "moth", "zebra"]
        assert isinstance(data.train.features["label"], datasets.ClassLabel)
        assert sorted(set(data.train["label"])) == [0, 1, 2]

    def test_sparse_int_labels_sorted_numerically(self, tmp_path):
        ds = datasets.Dataset.from_dict(
            {"image": [image(seed=i) for i in range(8)], "label": [10, 2, 10, 2] * 2}
        )
        data = load(dataset_name=self.save(ds, tmp_path), train_val_split=0.5)
        assert data.labels == ["2", "10"]
        assert data.label2id == {"2": 0, "10": 1}

    def test_single_class_is_an_error(self, tmp_path):
        path = self.save(image_dataset(labels=["a"] * 6), tmp_path)
        with pytest.raises(
            ValueError, match=r"label column 'label' has 1 class\(es\) \(\['a'\]\); .* at least 2"
        ):
            load(dataset_name=path)

    def test_no_train_split(self, tmp_path):
        datasets.DatasetDict({"test": image_dataset(4)}).save_to_disk(tmp_path / "ds")
        with pytest.raises(ValueError, match=r"has no 'train' split; its splits are \['test'\]"):
            load(dataset_name=str(tmp_path / "ds"))

    def test_unlabelled_test_split_falls_back_to_hold_out(self, tmp_path, caplog):
        test = image_dataset(4).cast_column("label", datasets.Value("int64")).map(lambda r: {"label": -1})
        test = test.cast_column("label", datasets.ClassLabel(names=["c0", "c1"]))
        datasets.DatasetDict({"train": image_dataset(20), "test": test}).save_to_disk(tmp_path / "ds")
        with caplog.at_level(logging.WARNING, logger="hf_adautomix.data"):
            data = load(dataset_name=str(tmp_path / "ds"), train_val_split=0.25)
        assert (len(data.train), len(data.validation)) == (15, 5)
        assert "unlabelled rows" in caplog.text


@pytest.mark.parametrize(
    "mode",
    ["RGB", "L", "1", "P", "RGBA", "LA", "CMYK", "YCbCr", "I", "I;16", "F"],
)
def test_to_rgb(mode):
    out = to_rgb(image(mode=mode) if mode not in ("I;16", "F") else image(mode="L").convert(mode))
    assert out.mode == "RGB" and out.size == (12, 10)


def test_to_rgb_rescales_16_bit():
    grey = PIL.Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert np.all(np.asarray(to_rgb(grey)) == 255)


class TestTransformInfo:
    def test_small_images_pick_cifar_with_dataset_stats(self):
        data = load(max_train_samples=100)
        info = resolve_transform_info(data, DataTrainingArguments())
        assert (info.recipe, info.size) == ("cifar", 32)
        mean, std = compute_mean_std(data.train, "image")
        assert info.mean == pytest.approx(mean) and info.std == pytest.approx(std)
        assert info.mean[0] == pytest.approx(info.mean[1])  # grey digits

    def test_large_images_pick_imagenet(self, tmp_path):
        datasets.DatasetDict({"train": image_dataset(4, size=(80, 70))}).save_to_disk(tmp_path / "ds")
        args = DataTrainingArguments(dataset_name=str(tmp_path / "ds"), train_val_split=0.5)
        data = load_image_datasets(args)
        info = resolve_transform_info(data, args)
        assert (info.recipe, info.size, info.mean, info.std) == ("imagenet", 224, IMAGENET_MEAN, IMAGENET_STD)
        assert resolve_transform_info(data, args, image_size=96).size == 96

    def test_overrides(self):
        data = load(max_train_samples=20)
        args = DataTrainingArguments(transform_recipe="imagenet", image_size=48)
        info = resolve_transform_info(data, args, image_size=224, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
        assert info == TransformInfo("imagenet", 48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def test_mean_without_std(self):
        with pytest.raises(ValueError, match="both image_mean and image_std"):
            resolve_transform_info(load(max_train_samples=4), DataTrainingArguments(), image_mean=(0.5,) * 3)

    def test_compute_mean_std_by_hand(self):
        # Half the images black, half white: mean 0.5, std 0.5 on every channel.
        ds = datasets.Dataset.from_dict(
            {"image": [PIL.Image.new("RGB", (4, 4), (v, v, v)) for v in (0, 255) * 3]},
            features=datasets.Features({"image": datasets.Image()}),
        )
        mean, std = compute_mean_std(ds, "image")
        assert mean == pytest.approx((0.5,) * 3) and std == pytest.approx((0.5,) * 3)


class TestTransforms:
    @pytest.mark.parametrize("recipe", ["cifar", "imagenet", "none"])
    @pytest.mark.parametrize("size", [(32, 32), (40, 30)])
    def test_shapes_and_dtypes(self, recipe, size):
        train_tf, eval_tf = build_transforms(recipe, 32, IMAGENET_MEAN, IMAGENET_STD)
        for tf in (train_tf, eval_tf):
            out = tf(image(size))
            assert out.shape == (3, 32, 32) and out.dtype == torch.float32

    def test_normalisation_of_a_constant_image(self):
        mean, std = (0.2, 0.4, 0.6), (0.1, 0.2, 0.3)
        _, eval_tf = build_transforms("cifar", 8, mean, std)
        out = eval_tf(PIL.Image.new("RGB", (8, 8), (51, 102, 153)))  # (0.2, 0.4, 0.6) in [0, 1] units
        assert out.mean(dim=(1, 2)).tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
        out = eval_tf(PIL.Image.new("RGB", (8, 8), (255, 255, 255)))
        assert out.mean(dim=(1, 2)).tolist() == pytest.approx([8.0, 3.0, 4 / 3], rel=1e-5)

    def test_cifar_eval_is_only_normalisation_at_native_size(self):
        img = image((32, 32))
        _, eval_tf = build_transforms("cifar", 32, (0, 0, 0), (1, 1, 1))
        expected = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
        assert torch.allclose(eval_tf(img), expected, atol=1e-6)

    def test_cifar_crop_pads_by_reflection(self):
        # Pixel values 10..249: constant (zero) padding would show up as 0 in the crops.
        train_tf, _ = build_transforms("cifar", 8, (0, 0, 0), (1, 1, 1))
        crop = next(t for t in train_tf.transforms if type(t).__name__ == "RandomCrop")
        assert (crop.padding, crop.padding_mode) == ([4, 4, 4, 4], "reflect")
        rng = np.random.default_rng(0)
        img = PIL.Image.fromarray(rng.integers(10, 250, (8, 8, 3), dtype=np.uint8))
        values = set(np.asarray(img).ravel().tolist())
        torch.manual_seed(0)
        outs = torch.stack([train_tf(img) for _ in range(50)])
        assert set((outs * 255).round().int().unique().tolist()) <= values
        assert not all(torch.equal(o, outs[0]) for o in outs)  # it does crop/flip

    def test_bad_recipe(self):
        with pytest.raises(ValueError, match="Expected recipe 'cifar', 'imagenet' or 'none', got 'auto'"):
            build_transforms("auto", 32, IMAGENET_MEAN, IMAGENET_STD)

    def test_apply_transforms_and_collate(self):
        data = load(max_train_samples=8, max_eval_samples=4)
        info = resolve_transform_info(data, DataTrainingArguments())
        out = apply_transforms(data, *build_transforms(info.recipe, info.size, info.mean, info.std))
        row = out.train[0]
        assert set(row) == {"pixel_values", "labels"}
        assert type(row["pixel_values"]) is torch.Tensor and isinstance(row["labels"], int)
        batch = collate_fn([out.validation[i] for i in range(4)])
        assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
        assert batch["labels"].dtype == torch.long
        assert batch["labels"].tolist() == data.validation["label"][:4]
        assert out.labels == data.labels and len(out.train) == 8


class TestAugmentationOptions:
    """--random_resized_crop_scale and --rand_augment_*: parsing, validation, effect on the train transform."""

    def test_defaults_leave_the_transforms_as_they_were(self):
        args = DataTrainingArguments()
        assert args.crop_scale == (0.08, 1.0) and args.rand_augment_ops == 0
        info = resolve_transform_info(load(max_train_samples=4), args)
        assert info.crop_scale == (0.08, 1.0) and info.rand_augment is None

    @pytest.mark.parametrize(
        "value, expected", [("0.8,1", (0.8, 1.0)), ([0.5, 1], (0.5, 1.0)), ("1,1", (1, 1))]
    )
    def test_crop_scale_parses(self, value, expected):
        assert DataTrainingArguments(random_resized_crop_scale=value).crop_scale == expected

    @pytest.mark.parametrize("value", ["0.8", "0,1", "0.9,0.8", "0.5,1.5", "a,b", "0.1,0.2,0.3"])
    def test_bad_crop_scale(self, value):
        with pytest.raises(
            ValueError, match=r"--random_resized_crop_scale must be 'lo,hi' with 0 < lo <= hi <= 1"
        ):
            DataTrainingArguments(random_resized_crop_scale=value)

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"rand_augment_ops": -1}, r"--rand_augment_ops must be an integer in 0\.\.14"),
            (
                {"rand_augment_ops": 2, "rand_augment_magnitude": 11},
                r"--rand_augment_magnitude must be in 0\.\.10",
            ),
            (
                {"rand_augment_ops": 2, "rand_augment_magnitude": -1},
                r"--rand_augment_magnitude must be in 0\.\.10",
            ),
        ],
    )
    def test_bad_rand_augment(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            DataTrainingArguments(**kwargs)

    def test_command_line(self):
        (args,) = HfArgumentParser(DataTrainingArguments).parse_args_into_dataclasses(
            args=[
                "--rand_augment_ops",
                "2",
                "--rand_augment_magnitude",
                "7",
                "--random_resized_crop_scale",
                "0.8,1",
            ]
        )
        assert (args.rand_augment_ops, args.rand_augment_magnitude, args.crop_scale) == (2, 7, (0.8, 1.0))

    def test_magnitude_without_ops_warns(self, caplog):
        with caplog.at_level(logging.WARNING, logger="hf_adautomix.data"):
            DataTrainingArguments(rand_augment_magnitude=7)
        assert "--rand_augment_magnitude 7 has no effect" in caplog.text

    def test_crop_scale_under_cifar_warns(self, caplog):
        args = DataTrainingArguments(random_resized_crop_scale="0.8,1")
        with caplog.at_level(logging.WARNING, logger="hf_adautomix.data"):
            info = resolve_transform_info(load(max_train_samples=4), args)  # 32 px digits: "cifar"
        assert info.recipe == "cifar"
        assert "--random_resized_crop_scale 0.8,1 has no effect under the 'cifar' recipe" in caplog.text

    def test_rand_augment_under_none_warns_and_is_left_out(self, caplog):
        args = DataTrainingArguments(transform_recipe="none", rand_augment_ops=2)
        with caplog.at_level(logging.WARNING, logger="hf_adautomix.data"):
            info = resolve_transform_info(load(max_train_samples=4), args)
        assert info.rand_augment is None
        assert "--rand_augment_ops 2 has no effect under the 'none' recipe" in caplog.text

    def test_recorded_in_transform_info(self, tmp_path):
        datasets.DatasetDict({"train": image_dataset(4, size=(80, 70))}).save_to_disk(tmp_path / "ds")
        args = DataTrainingArguments(
            dataset_name=str(tmp_path / "ds"),
            train_val_split=0.5,
            random_resized_crop_scale="0.8,1",
            rand_augment_ops=2,
            rand_augment_magnitude=7,
        )
        info = resolve_transform_info(load_image_datasets(args), args)
        assert (info.recipe, info.crop_scale, info.rand_augment) == ("imagenet", (0.8, 1.0), (2, 7))

    def test_crop_scale_one_keeps_the_whole_image(self):
        img = image((24, 24))
        whole_crop, _ = build_transforms("imagenet", 24, (0, 0, 0), (1, 1, 1), crop_scale=(1.0, 1.0))
        no_flip = no_flip_of(whole_crop)
        whole = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
        torch.manual_seed(0)
        for _ in range(10):  # the crop is the whole (square) image every time
            assert torch.allclose(no_flip(img), whole, atol=1e-6)
        default, _ = build_transforms("imagenet", 24, (0, 0, 0), (1, 1, 1))
        torch.manual_seed(0)
        assert not all(torch.allclose(no_flip_of(default)(img), whole, atol=1e-6) for _ in range(10))

    def test_rand_augment_changes_pixels_with_a_fixed_seed(self):
        img = image((16, 16))
        for recipe in ("cifar", "imagenet"):
            plain_train, plain_eval = build_transforms(recipe, 16, (0.5,) * 3, (0.2,) * 3)
            ra_train, ra_eval = build_transforms(recipe, 16, (0.5,) * 3, (0.2,) * 3, rand_augment=(2, 7))
            ra = ra_train.transforms[-3]
            assert type(ra).__name__ == "RandAugment"
            assert (ra.num_ops, ra.magnitude, ra.num_magnitude_bins) == (2, 7, 11)
            changed = 0
            for seed in range(5):
                torch.manual_seed(seed)
                a = plain_train(img)
                torch.manual_seed(seed)
                b = ra_train(img)
                torch.manual_seed(seed)
                assert torch.equal(b, ra_train(img))  # deterministic given the seed (per-row seeding holds)
                changed += not torch.equal(a, b)
            assert changed > 0
            assert torch.equal(plain_eval(img), ra_eval(img))  # eval unchanged
            assert str(plain_eval) == str(ra_eval)

    def test_bad_build_arguments(self):
        with pytest.raises(ValueError, match="Expected crop_scale"):
            build_transforms("imagenet", 8, (0, 0, 0), (1, 1, 1), crop_scale=(0.0, 1.0))
        with pytest.raises(ValueError, match="Expected rand_augment"):
            build_transforms("cifar", 8, (0, 0, 0), (1, 1, 1), rand_augment=(2, 20))


def no_flip_of(compose):
    return type(compose)([t for t in compose.transforms if type(t).__name__ != "RandomHorizontalFlip"])


class TestImageProcessor:
    @pytest.mark.parametrize(
        "recipe, size, image_size",
        [
            ("cifar", 32, (32, 32)),
            ("cifar", 32, (40, 30)),
            ("none", 24, (30, 20)),
            ("imagenet", 64, (100, 80)),  # odd crop offset
            ("imagenet", 384, (500, 423)),  # >= 384: short-side resize + centre crop
        ],
    )
    def test_matches_eval_transform(self, recipe, size, image_size, tmp_path):
        info = TransformInfo(recipe, size, IMAGENET_MEAN, IMAGENET_STD)
        _, eval_tf = build_transforms(info.recipe, info.size, info.mean, info.std)
        self.check(info, eval_tf, image_size, tmp_path)

    @pytest.mark.parametrize(
        "recipe, size, crop_pct, interpolation",
        [
            ("imagenet", 64, 0.95, "bicubic"),  # a timm pretrained_cfg's
            ("imagenet", 224, 224 / 232, "bicubic"),  # crop 224 of a 232 short side
            ("cifar", 64, 0.9, "bilinear"),  # a pretrained model's crop under the cifar recipe
            ("imagenet", 64, None, "bicubic"),  # ViT-style: resize to size x size
            ("none", 64, None, "nearest"),
        ],
    )
    def test_matches_a_pretrained_eval(self, recipe, size, crop_pct, interpolation, tmp_path):
        info = TransformInfo(
            recipe, size, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4), crop_pct=crop_pct, interpolation=interpolation
        )
        _, eval_tf = build_transforms(
            info.recipe, info.size, info.mean, info.std, crop_pct=info.crop_pct, interpolation=interpolation
        )
        self.check(info, eval_tf, (301, 263), tmp_path)
        if crop_pct == 224 / 232:
            assert eval_tf.transforms[1].size == [232]  # not 231

    @staticmethod
    def check(info, eval_tf, image_size, tmp_path):
        from transformers import AutoImageProcessor

        make_image_processor(info).save_pretrained(tmp_path)
        processor = AutoImageProcessor.from_pretrained(tmp_path)
        img = image(image_size)
        out = processor(img, return_tensors="pt")["pixel_values"][0]
        assert out.shape == (3, info.size, info.size)
        assert torch.allclose(out, eval_tf(img), atol=1e-2)


class TestPretrainedPreprocessing:
    """A pretrained model is evaluated as it was pretrained: its own library's preprocessing config decides."""

    @staticmethod
    def data():
        from hf_adautomix.data import ImageData

        train = image_dataset(4, size=(40, 30))
        return ImageData(train, train, "image", "label", ["c0", "c1"], "test")

    def test_timm_pretrained_cfg(self):
        import timm
        from timm.data import create_transform, resolve_data_config

        from hf_adautomix.data import resolve_transforms

        model = timm.create_model("resnet18", num_classes=2)
        model.pretrained_cfg = {
            **model.pretrained_cfg,
            "input_size": (3, 48, 48),
            "crop_pct": 0.8,
            "interpolation": "bilinear",
            "mean": (0.5, 0.4, 0.3),
            "std": (0.25, 0.2, 0.3),
        }
        facts = wrap_classifier(model).data_facts
        _, eval_tf, info = resolve_transforms(self.data(), DataTrainingArguments(), facts(pretrained=True))
        assert (info.recipe, info.size, info.crop_pct, info.interpolation) == (
            "imagenet",
            48,
            0.8,
            "bilinear",
        )
        assert (info.mean, info.std) == ((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
        img = image((101, 83))
        theirs = create_transform(**resolve_data_config(model=model))(img)  # timm resizes a PIL image
        assert eval_tf(img).shape == theirs.shape == (3, 48, 48)
        assert (eval_tf(img) - theirs).abs().mean() < 0.02
        # Not pretrained: the recipe's preprocessing, not the checkpoint's.
        _, _, info = resolve_transforms(self.data(), DataTrainingArguments(), facts(pretrained=False))
        assert (info.recipe, info.size, info.crop_pct, info.interpolation) == (
            "cifar",
            40,
            "recipe",
            "bilinear",
        )
        # The user's image size still wins; the rest follows the model.
        _, _, info = resolve_transforms(
            self.data(), DataTrainingArguments(image_size=32), facts(pretrained=True)
        )
        assert (info.size, info.crop_pct, info.mean) == (32, 0.8, (0.5, 0.4, 0.3))

    @pytest.mark.parametrize(
        "processor_kwargs, expected",
        [
            (dict(size={"shortest_edge": 48}, crop_pct=0.8, resample=3), (48, 0.8, "bicubic")),
            (dict(size={"height": 40, "width": 40}, resample=2), (40, None, "bilinear")),
        ],
    )
    def test_transformers_saved_image_processor(self, processor_kwargs, expected, tmp_path):
        from conftest import make_model
        from transformers import (
            AutoImageProcessor,
            AutoModelForImageClassification,
            ConvNextImageProcessor,
            ViTImageProcessor,
        )

        from hf_adautomix.data import resolve_transforms

        make_model("hf_convnext", num_labels=2)[0].save_pretrained(tmp_path)
        kind = ConvNextImageProcessor if "crop_pct" in processor_kwargs else ViTImageProcessor
        kind(image_mean=[0.5, 0.4, 0.3], image_std=[0.25, 0.2, 0.3], **processor_kwargs).save_pretrained(
            tmp_path
        )
        model = AutoModelForImageClassification.from_pretrained(tmp_path)
        _, eval_tf, info = resolve_transforms(
            self.data(), DataTrainingArguments(), wrap_classifier(model).data_facts()
        )
        assert (info.recipe, info.size, info.crop_pct, info.interpolation) == ("imagenet", *expected)
        assert (info.mean, info.std) == ((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
        img = image((101, 83))
        theirs = AutoImageProcessor.from_pretrained(tmp_path)(img, return_tensors="pt")["pixel_values"][0]
        assert torch.allclose(eval_tf(img), theirs, atol=1e-2)
        # The exported processor gives the same pixels.
        exported = make_image_processor(info)(img, return_tensors="pt")["pixel_values"][0]
        assert torch.allclose(exported, theirs, atol=1e-2)

    def test_transformers_without_saved_processor_uses_the_recipe(self, tmp_path):
        from conftest import make_model
        from transformers import AutoModelForImageClassification

        from hf_adautomix.data import resolve_transforms

        make_model("hf_convnext", num_labels=2)[0].save_pretrained(tmp_path)
        model = AutoModelForImageClassification.from_pretrained(tmp_path)
        _, _, info = resolve_transforms(
            self.data(), DataTrainingArguments(), wrap_classifier(model).data_facts()
        )
        assert (info.recipe, info.size, info.crop_pct) == ("cifar", 40, "recipe")
