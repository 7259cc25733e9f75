"""Bad data fails early with one clear message: labels across splits, labels vs the model, config overrides,
undecodable and oversized images, DataLoader worker errors, and the CLI's exit. One class per check."""

import io
import os
import re

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import TINY_RESNET
from test_cli import run_subprocess

from hf_adautomix.backbones import parse_config_overrides
from hf_adautomix.data import (
    DataTrainingArguments,
    ImageData,
    InMemoryImages,
    apply_transforms,
    build_transforms,
    check_images,
    check_labels,
    collate_fn,
    compute_mean_std,
    decode_image,
    error_summary,
    load_image_datasets,
)

CLASSES = ["cat", "dog"]
IMAGE = datasets.Image()


def image(seed=0, size=(12, 10), color=None):
    """A PIL RGB image of `size` (width, height): random pixels, or one `color`."""
    if color is not None:
        return PIL.Image.new("RGB", size, color)
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_bytes(seed=0):
    buffer = io.BytesIO()
    image(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def dataset(labels, label_feature=None, images=None):
    """An in-memory dataset with an `image` column and a `label` column of `labels`."""
    images = images if images is not None else [image(i) for i in range(len(labels))]
    features = {"image": IMAGE}
    if label_feature is not None:
        features["label"] = label_feature
    else:
        kinds = {str: "string", float: "float64"}
        features["label"] = datasets.Value(kinds.get(type(labels[0]), "int64"))
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels}, features=datasets.Features(features)
    )


def transformed(ds, decode_once=False):
    """`ds` after `apply_transforms`, as the trainer gets it: rows are {"pixel_values", "labels"}."""
    names = ds.features["label"].names if isinstance(ds.features["label"], datasets.ClassLabel) else CLASSES
    data = ImageData(ds, ds, "image", "label", list(names), "test")
    transforms = build_transforms("none", 8, (0, 0, 0), (1, 1, 1))
    return apply_transforms(data, *transforms, decode_once=decode_once).validation


def write_image_folder(root, classes, n=3, broken=None):
    """root/<class>/<i>.png for each class; `broken` ("<class>/<name>.png") is a truncated PNG."""
    for c, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(n):
            image(10 * c + i, size=(32, 32)).save(root / name / f"{i}.png")
    if broken is not None:
        good = (root / classes[0] / "0.png").read_bytes()
        (root / broken).write_bytes(good[: len(good) // 2])
    return root


def load(tmp_path, **kwargs):
    return load_image_datasets(DataTrainingArguments(**kwargs), cache_dir=str(tmp_path / "cache"))


def save_splits(tmp_path, **splits):
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "ds")
    return str(tmp_path / "ds")


class TestLabelsAcrossSplits:
    """`load_image_datasets` (the CLI path) checks the label values of every split before encoding them."""

    def test_validation_class_absent_from_train(self, tmp_path):
        write_image_folder(tmp_path / "train", ["cat", "dog"])
        write_image_folder(tmp_path / "val", ["bird", "cat", "dog", "emu"])
        with pytest.raises(
            ValueError,
            match=r"'validation' split has 2 class\(es\) that the 'train' split has no rows of \(label column "
            r"'label'\): \['bird', 'emu'\]",
        ):
            load(tmp_path, train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))

    def test_absent_classes_list_at_most_ten(self, tmp_path):
        path = save_splits(
            tmp_path, train=dataset(["a", "b"] * 2), test=dataset([f"x{i:02d}" for i in range(14)])
        )
        with pytest.raises(ValueError, match=r"'test' split has 14 class\(es\).*'x09' and 4 more\]"):
            load(tmp_path, dataset_name=path)

    def test_class_names_match_across_classlabel_and_strings(self, tmp_path):
        train = dataset([0, 1, 0, 1], datasets.ClassLabel(names=CLASSES))
        path = save_splits(tmp_path, train=train, test=dataset(["dog", "cat"]))
        data = load(tmp_path, dataset_name=path)
        assert data.labels == CLASSES and data.validation["label"] == [1, 0]

    @pytest.mark.parametrize("train_first", [True, False], ids=["strings-then-ints", "ints-then-strings"])
    def test_mixed_label_types_in_parquet_files(self, tmp_path, train_first):
        strings, ints = dataset(["cat", "dog"] * 2), dataset([0, 1] * 2)
        train, val = (strings, ints) if train_first else (ints, strings)
        train.to_parquet(tmp_path / "train.parquet")
        val.to_parquet(tmp_path / "val.parquet")
        kinds = ("string", "int64") if train_first else ("int64", "string")
        with pytest.raises(
            ValueError,
            match=rf"column 'label' has {kinds[0]} labels in the 'train' split .* but {kinds[1]} labels in the "
            r"'validation' split .* cannot be matched",
        ):
            load(
                tmp_path,
                train_file=str(tmp_path / "train.parquet"),
                validation_file=str(tmp_path / "val.parquet"),
            )

    def test_mixed_label_types_in_saved_splits(self, tmp_path):
        # Before: the string names "0".."9" and the integers 0..9 became 20 disjoint classes.
        labels = list(range(10))
        path = save_splits(tmp_path, train=dataset([str(v) for v in labels]), validation=dataset(labels))
        with pytest.raises(
            ValueError, match=r"string labels in the 'train' split \(\['0', '1', .* int64 labels"
        ):
            load(tmp_path, dataset_name=path)

    @pytest.mark.parametrize("split", ["train", "test"])
    def test_negative_integer_label(self, tmp_path, split):
        splits = {"train": dataset([0, 1, 2, 0]), "test": dataset([0, 1])}
        splits[split] = dataset([-1, 0, 1, -1, -5, 1])
        with pytest.raises(
            ValueError,
            match=rf"label column 'label' of the '{split}' split has negative labels \[-5, -1\] in 3 row\(s\)",
        ):
            load(tmp_path, dataset_name=save_splits(tmp_path, **splits))

    def test_classlabel_ids_out_of_range(self, tmp_path):
        # cast_column does not check the ids against the names, so such a dataset is easy to make.
        ds = dataset([0, 1, 2, 5, 7, 1]).cast_column("label", datasets.ClassLabel(names=["a", "b", "c"]))
        with pytest.raises(
            ValueError,
            match=r"'train' split is a ClassLabel with 3 classes \(ids 0..2.*but holds ids \[5, 7\]",
        ):
            load(tmp_path, dataset_name=save_splits(tmp_path, train=ds))

    def test_missing_labels(self, tmp_path):
        path = save_splits(tmp_path, train=dataset([0, None, 1, None]))
        with pytest.raises(
            ValueError, match=r"column 'label' of the 'train' split has 2 row\(s\) without a label"
        ):
            load(tmp_path, dataset_name=path)

    def test_unsupported_label_feature(self, tmp_path):
        ds = dataset([0, 1]).cast_column("label", datasets.Value("int64"))
        ds = ds.map(lambda r: {"label": [r["label"]]})  # a list per row
        with pytest.raises(ValueError, match=r"has feature List\(.*expected a ClassLabel, integer or string"):
            load(tmp_path, dataset_name=save_splits(tmp_path, train=ds))

    def test_sparse_integer_labels_still_encode(self, tmp_path):
        path = save_splits(tmp_path, train=dataset([10, 2, 10, 2]), test=dataset([2, 10]))
        data = load(tmp_path, dataset_name=path)
        assert data.labels == ["2", "10"] and data.validation["label"] == [0, 1]


class TestCheckLabels:
    """`check_labels`, the Python API's check of a dataset's labels against the model."""

    def test_good_labels_pass(self):
        check_labels(dataset([0, 1, 2]), "label", num_labels=3)
        check_labels(dataset([0.0, 1.0]), "label", num_labels=2)  # integral floats are class ids

    def test_empty(self):
        with pytest.raises(ValueError, match="The 'validation' dataset is empty"):
            check_labels(dataset([0, 1]).select([]), "label", 2, split="validation")

    def test_empty_torch_dataset(self):
        with pytest.raises(ValueError, match="The 'train' dataset is empty"):
            check_labels(torch.utils.data.TensorDataset(torch.zeros(0, 3)), num_labels=2)

    def test_string_labels(self):
        with pytest.raises(
            ValueError,
            match=r"column 'label' of the 'train' dataset holds strings \(\['cat', 'dog'\]\), but the model "
            r"expects integer class ids\. Map them to ids .* or give a ClassLabel column",
        ):
            check_labels(dataset(["dog", "cat", "dog"]), "label", num_labels=2)

    @pytest.mark.parametrize(
        "labels, bad, rows",
        [([0, 1, 2, 3, 3], r"\[2, 3\]", 3), ([0, -1, 1], r"\[-1\]", 1)],
        ids=["high", "negative"],
    )
    def test_out_of_range(self, labels, bad, rows):
        with pytest.raises(
            ValueError,
            match=rf"has {rows} row\(s\) with class ids outside 0..1 \(the model has 2 classes\): {bad}",
        ):
            check_labels(dataset(labels), "label", num_labels=2)

    def test_out_of_range_lists_at_most_ten(self):
        with pytest.raises(ValueError, match=r"\[2, 3, .*, 11 and 4 more\]"):
            check_labels(dataset(list(range(16))), "label", num_labels=2)

    def test_negative_without_num_labels(self):
        with pytest.raises(ValueError, match=r"class ids outside 0 or more: \[-1\]"):
            check_labels(dataset([0, -1]), "label")

    def test_non_integer_floats(self):
        with pytest.raises(
            ValueError, match=r"expected one integer class id per row \(values seen: \[0.0, 1.5\]\)"
        ):
            check_labels(dataset([0.0, 1.5]), "label", num_labels=2)

    def test_missing_labels(self):
        with pytest.raises(ValueError, match=r"has 1 row\(s\) without a label"):
            check_labels(dataset([0, None, 1]), "label", num_labels=2)

    @pytest.mark.parametrize("decode_once", [False, True])
    def test_after_apply_transforms_reads_the_label_column(self, decode_once):
        ds = transformed(dataset([0, 1, 2, 1], datasets.ClassLabel(names=["a", "b", "c"])), decode_once)
        assert isinstance(ds, InMemoryImages) == decode_once
        assert set(ds[0]) == {"pixel_values", "labels"}
        check_labels(ds, "labels", num_labels=3)
        with pytest.raises(ValueError, match=r"column 'label' of the 'eval' dataset has 1 row\(s\).*: \[2\]"):
            check_labels(ds, "labels", num_labels=2, split="eval")

    def test_does_not_decode_images(self):
        rows = [{"bytes": b"not an image", "path": None}] * 3
        check_labels(dataset([0, 1, 0], images=rows), num_labels=2)  # would raise if it decoded

    def test_no_label_column(self):
        ds = datasets.Dataset.from_dict(
            {"image": [image()], "y": [0]},
            features=datasets.Features({"image": IMAGE, "y": datasets.Value("int64")}),
        )
        with pytest.raises(
            ValueError, match=r"has no label column: none of \['label', 'labels', 'fine_label'\]"
        ):
            check_labels(ds, num_labels=2)

    def test_collate_rejects_a_class_name(self):
        rows = [{"pixel_values": torch.zeros(3, 2, 2), "labels": label} for label in (1, "cat")]
        with pytest.raises(
            ValueError, match=r"'labels' to be an integer class id, got 'cat' \(str\)\. Map class"
        ):
            collate_fn(rows)

    @pytest.mark.parametrize("label", ["3", 1.5, None])
    def test_collate_rejects_non_integers(self, label):
        with pytest.raises(ValueError, match="to be an integer class id"):
            collate_fn([{"pixel_values": torch.zeros(3, 2, 2), "labels": label}])

    def test_collate_accepts_integer_like(self):
        rows = [
            {"pixel_values": torch.zeros(3, 2, 2), "labels": v} for v in (np.int64(2), 1.0, torch.tensor(0))
        ]
        assert collate_fn(rows)["labels"].tolist() == [2, 1, 0]


class TestConfigOverrides:
    """`parse_config_overrides`: malformed strings are errors naming the fragment."""

    @pytest.mark.parametrize(
        "text, match",
        [
            ("depths=[1,1", r"unclosed bracket in 'depths=\[1,1'"),
            ("a=1,depths=[1,[1,1]", r"unclosed bracket in 'depths=\[1,\[1,1\]'"),
            ("a=1,b=2]", r"unbalanced '\]' in 'b=2\]'"),
            ("a=1,=3", r"'=3' has an empty key"),
            ("a=", r"'a=' has an empty value"),
            ("depths=[1,1}", r"the value of 'depths', '\[1,1\}', looks like JSON but does not parse"),
            ("d={x: 1}", r"the value of 'd', '\{x: 1\}', looks like JSON"),
            ("a=1,oops", r"'oops' is not of the form key=value"),
        ],
    )
    def test_malformed(self, text, match):
        with pytest.raises(ValueError, match=rf"--config_overrides: {match}.*\(in '{re.escape(text)}'\)"):
            parse_config_overrides(text)

    def test_well_formed(self):
        assert parse_config_overrides(' layer_type=basic, depths=[1,[2,3]], d={"k": null}, x=1.5 ,') == {
            "layer_type": "basic",
            "depths": [1, [2, 3]],
            "d": {"k": None},
            "x": 1.5,
        }
        assert parse_config_overrides("") == {} and parse_config_overrides(None) == {}


class TestCheckImages:
    """`check_images` decodes a whole split and names every undecodable image."""

    def test_clean_split_passes(self):
        check_images(dataset([0, 1] * 10), split="validation")

    def test_corrupt_file_is_named(self, tmp_path):
        write_image_folder(tmp_path / "train", CLASSES)
        write_image_folder(tmp_path / "val", CLASSES, broken="dog/broken.png")
        data = load(tmp_path, train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
        check_images(data.train, data.image_column, split="train")
        with pytest.raises(
            ValueError,
            match=r"1 of the 7 images of the 'validation' split \(column 'image'\) could not be decoded: file "
            r"'.*broken\.png' \(OSError: .*\)\. Remove or replace these images\.",
        ):
            check_images(data.validation, data.image_column, split="validation")

    def test_rows_are_named_at_most_ten_and_counted(self):
        rows = [{"bytes": png_bytes(i), "path": None} for i in range(30)]
        for i in range(3, 28, 2):  # 13 garbage rows
            rows[i] = {"bytes": b"junk", "path": None}
        with pytest.raises(
            ValueError,
            match=r"^13 of the 30 images .* decoded: row 3 \(UnidentifiedImageError: cannot identify image file\); "
            r"row 5 .*; row 21 \([^;]*\); and 3 more\. Remove",
        ):
            check_images(dataset([0] * 30, images=rows))

    def test_after_apply_transforms_with_row_numbers(self, tmp_path):
        rows = [{"bytes": png_bytes(i), "path": None} for i in range(6)]
        rows[4] = {"bytes": b"junk", "path": "four.png"}
        dataset([0, 1] * 3, images=rows).to_parquet(tmp_path / "t.parquet")
        data = load(tmp_path, train_file=str(tmp_path / "t.parquet"), train_val_split=0.5)
        transforms = build_transforms("none", 8, (0, 0, 0), (1, 1, 1))
        per_image = apply_transforms(data, *transforms, decode_once=False)
        with pytest.raises(ValueError, match=r"could not be decoded: row 4 \('four.png'\) \(Unidentified"):
            for ds in (per_image.train, per_image.validation):
                check_images(ds)
        with pytest.raises(ValueError, match=r"could not be decoded: row 4 \('four.png'\) \(Unidentified"):
            apply_transforms(data, *transforms)  # decoding once checks every image up front

    def test_string_path_column(self, tmp_path):
        image().save(tmp_path / "ok.png")
        (tmp_path / "bad.png").write_bytes(b"junk")
        ds = datasets.Dataset.from_dict({"img": [str(tmp_path / "ok.png"), str(tmp_path / "bad.png")]})
        with pytest.raises(ValueError, match=r"1 of the 2 .* \(column 'img'\) .*: file '.*bad\.png'"):
            check_images(ds, split="test")


class TestDecompressionBomb:
    """An image above Pillow's pixel limit gives the same named ValueError, saying how to allow it."""

    @pytest.fixture
    def small_limit(self, monkeypatch):
        monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 50)  # 12x10 = 120 pixels > 2 x 50: an error

    def test_decode_image_names_the_file(self, tmp_path, small_limit):
        image().save(tmp_path / "huge.png")
        with pytest.raises(
            ValueError,
            match=r"Could not decode image file '.*huge\.png': DecompressionBombError: .* raise Pillow's limit "
            r"\(PIL\.Image\.MAX_IMAGE_PIXELS",
        ):
            decode_image(str(tmp_path / "huge.png"))

    def test_in_transformed_rows_and_check_images(self, small_limit):
        ds = dataset([0, 1], datasets.ClassLabel(names=CLASSES))
        with pytest.raises(ValueError, match=r"image at row 1: DecompressionBombError: .*MAX_IMAGE_PIXELS"):
            transformed(ds.add_column("__row__", [0, 1]))[1]
        with pytest.raises(
            ValueError, match=r"2 of the 2 .* row 0 \(DecompressionBombError.*MAX_IMAGE_PIXELS"
        ):
            check_images(ds)

    def test_limit_can_be_raised(self, tmp_path, monkeypatch):
        image().save(tmp_path / "huge.png")
        monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", None)
        assert decode_image(str(tmp_path / "huge.png")).size == (12, 10)


class TestErrorSummary:
    """`error_summary` gives back the one-paragraph message of an error from a DataLoader worker."""

    def test_dataloader_worker_error(self):
        rows = [{"bytes": png_bytes(i), "path": None} for i in range(4)]
        rows[2] = {"bytes": b"junk", "path": None}
        ds = dataset([0, 1, 0, 1], datasets.ClassLabel(names=CLASSES), images=rows)
        ds = transformed(ds.add_column("__row__", list(range(4))))
        with pytest.raises(ValueError) as direct:
            decode_image(rows[2], row=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate_fn)
        with pytest.raises(ValueError, match="Caught ValueError in DataLoader worker process 0") as wrapped:
            next(iter(loader))
        assert "Traceback" in str(wrapped.value)
        summary = error_summary(wrapped.value)
        assert summary == str(direct.value)
        assert summary.startswith("Could not decode image at row 2: UnidentifiedImageError")

    def test_plain_error_is_unchanged(self):
        assert error_summary(ValueError("bad thing")) == "bad thing"


class TestMeanStdPerImage:
    """`compute_mean_std` weighs every image equally, whatever its size."""

    def test_one_large_and_several_small_images(self):
        images = [image(color=(255, 0, 0), size=(64, 64))] + [image(color=(0, 0, 255), size=(4, 4))] * 4
        ds = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": IMAGE}))
        mean, std = compute_mean_std(ds, "image")
        # Per image: red (1, 0, 0) once and blue (0, 0, 1) four times -> mean (0.2, 0, 0.8); E[x^2] = mean, so
        # std = sqrt(0.2 - 0.04) = 0.4 on red and blue, and the 1e-3 floor on the constant green channel.
        assert mean == pytest.approx((0.2, 0.0, 0.8))
        assert std == pytest.approx((0.4, 1e-3, 0.4))


def assert_failed_before_training(proc, out, *names):
    """Non-zero exit; stderr ends in one `error: ...` line naming `names`; nothing was trained or saved."""
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-2000:]
    for name in names:
        assert name in last, last
    leftovers = [p.name for p in out.glob("*") if p.name.startswith("checkpoint-")]
    leftovers += [n for n in ("model.safetensors", "train_results.json") if (out / n).exists()]
    assert not leftovers, leftovers


class TestCLI:
    """The script stops before training with one `error:` line; run in a subprocess like a user would."""

    def run(self, tmp_path, *args, config_overrides=TINY_RESNET):
        out = tmp_path / "out"
        proc = run_subprocess(
            [
                *args,
                "--model_type",
                "resnet",
                "--cifar_stem",
                "--config_overrides",
                config_overrides,
                "--use_cpu",
                "True",
                "--output_dir",
                str(out),
                "--max_steps",
                "1",
                "--report_to",
                "none",
            ],
            tmp_path,
        )
        return proc, out

    def test_validation_class_absent_from_train(self, tmp_path):
        write_image_folder(tmp_path / "train", ["cat", "dog"])
        write_image_folder(tmp_path / "val", ["bird", "cat", "dog"])
        proc, out = self.run(
            tmp_path, "--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val")
        )
        assert_failed_before_training(proc, out, "'validation' split", "['bird']")

    def test_string_train_labels_integer_validation_labels(self, tmp_path):
        dataset(["cat", "dog"] * 3).to_parquet(tmp_path / "train.parquet")
        dataset([0, 1] * 2).to_parquet(tmp_path / "val.parquet")
        proc, out = self.run(
            tmp_path,
            "--train_file",
            str(tmp_path / "train.parquet"),
            "--validation_file",
            str(tmp_path / "val.parquet"),
        )
        assert_failed_before_training(proc, out, "string labels in the 'train' split", "int64 labels")

    def test_negative_integer_label(self, tmp_path):
        dataset([0, 1, -1, 0, 1, 1, 0, 0]).to_parquet(tmp_path / "train.parquet")
        proc, out = self.run(tmp_path, "--train_file", str(tmp_path / "train.parquet"))
        assert_failed_before_training(proc, out, "negative labels [-1]", "'label'")

    def test_malformed_config_overrides(self, tmp_path):
        proc, out = self.run(tmp_path, "--max_train_samples", "32", config_overrides="depths=[1,1")
        assert_failed_before_training(proc, out, "--config_overrides", "depths=[1,1")

    def test_corrupt_validation_image_stops_before_training(self, tmp_path):
        """Needs the CLI to call `check_images` on the validation split before training."""
        write_image_folder(tmp_path / "train", CLASSES)
        write_image_folder(tmp_path / "val", CLASSES, broken="cat/broken.png")
        proc, out = self.run(
            tmp_path, "--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val")
        )
        assert_failed_before_training(proc, out, "broken.png")


class TestIssue17CLI:
    """Issue 17 (5, 11): bad data files stop the script before training with one `error:` line naming them."""

    run = TestCLI.run

    def test_fractional_float_label_names_row_and_value(self, tmp_path):
        # Before: 2.5 became an 11th class "2.5" and the run exited 0.
        dataset([0.0, 1.0, 2.5, 1.0] * 4).to_parquet(tmp_path / "train.parquet")
        proc, out = self.run(tmp_path, "--train_file", str(tmp_path / "train.parquet"))
        assert_failed_before_training(proc, out, "non-integer labels [2.5]", "row 2", "'label'")

    def test_null_image_names_the_row(self, tmp_path):
        # Before: AttributeError: 'NoneType' object has no attribute 'get', as a traceback.
        images = [image(i) for i in range(16)]
        images[3] = None
        dataset([0, 1] * 8, images=images).to_parquet(tmp_path / "train.parquet")
        proc, out = self.run(tmp_path, "--train_file", str(tmp_path / "train.parquet"))
        assert_failed_before_training(proc, out, "row 3", "no image (null)")

    @pytest.mark.parametrize("empty", ["train", "validation"])
    def test_empty_parquet_names_the_file(self, tmp_path, empty):
        dataset([0, 1] * 4).to_parquet(tmp_path / "train.parquet")
        dataset([0, 1] * 4).select([]).to_parquet(tmp_path / "empty.parquet")
        files = {"train": tmp_path / "train.parquet", "validation": tmp_path / "train.parquet"}
        files[empty] = tmp_path / "empty.parquet"
        proc, out = self.run(
            tmp_path, "--train_file", str(files["train"]), "--validation_file", str(files["validation"])
        )
        assert_failed_before_training(proc, out, f"--{empty}_file", "empty.parquet", "has no rows")


class TestIssue17API:
    """Issue 17 (5, 6, 11, 27): the Python API's data checks."""

    def test_fractional_float_label_names_the_row(self):
        with pytest.raises(
            ValueError, match=r"values seen: \[0.0, 1.0, 2.5\]\); first non-integer: row 2, label 2.5"
        ):
            check_labels(dataset([0.0, 1.0, 2.5, 1.0]), "label", num_labels=3)

    def test_fractional_label_in_a_saved_split(self, tmp_path):
        path = save_splits(tmp_path, train=dataset([0.0, 1.0, 1.0, 0.5]))
        with pytest.raises(ValueError, match=r"1 row\(s\) with non-integer labels \[0.5\] \(first: row 3"):
            load(tmp_path, dataset_name=path)

    def test_null_image(self):
        with pytest.raises(ValueError, match=r"image at row 7: ValueError: the row has no image \(null\)"):
            decode_image(None, row=7)
        rows = [{"bytes": png_bytes(i), "path": None} for i in range(3)] + [None]
        with pytest.raises(
            ValueError, match=r"1 of the 4 images .* row 3 \(ValueError: the row has no image"
        ):
            check_images(dataset([0] * 4, images=rows))

    def test_classlabel_count_differs_from_the_model(self):
        from hf_adautomix.data import prepare_datasets

        raw = dataset([0, 1, 2, 1], datasets.ClassLabel(names=["a", "b", "c"]))
        with pytest.raises(
            ValueError, match=r"The model has 20 classes but the 'train' dataset's .* has 3\."
        ):
            prepare_datasets(raw, None, model_data=None, num_labels=20, seed=0)

    def test_torch_dataset_label_outside_the_model(self):
        from hf_adautomix.data import prepare_datasets

        class Rows(torch.utils.data.Dataset):
            def __len__(self):
                return 4

            def __getitem__(self, i):
                return {"pixel_values": torch.zeros(3, 4, 4), "labels": torch.tensor([1, 15, 0, 2][i])}

        with pytest.raises(ValueError, match=r"outside 0\.\.9 \(the model has 10 classes\): \[15\]"):
            prepare_datasets(Rows(), None, model_data=None, num_labels=10, seed=0)
        targets = torch.utils.data.TensorDataset(torch.zeros(3, 3, 4, 4))
        targets.targets = [0, 12, 1]  # torchvision's attribute
        with pytest.raises(ValueError, match=r"the model has 10 classes\): \[12\]"):
            check_labels(targets, num_labels=10)

    def test_digits_have_no_internal_column(self):
        from hf_adautomix.data import load_digits_dataset

        train, validation = load_digits_dataset()
        assert train.column_names == validation.column_names == ["image", "label"]
