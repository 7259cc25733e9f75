"""Raw-dataset preparation (`data.prepare_datasets`, what `AdAutoMixTrainer` does with raw datasets) and the CLI's
validation split: each split is decoded exactly once, and every raw split of a dict of eval datasets is transformed."""

import os
from collections import Counter

import datasets
import numpy as np
import PIL.Image
import pytest
from conftest import TINY_RESNET, make_model
from test_data_path import NUM_LABELS, cli_trainer, raw_splits
from transformers import TrainingArguments

from hf_adautomix import AdAutoMixTrainer, MixupArguments
from hf_adautomix.data import InMemoryImages, load_digits_dataset


@pytest.fixture
def decoded_splits(monkeypatch):
    """The number of images of each split decoded into memory (`InMemoryImages` of a decode-once pass), in order."""
    sizes = []
    init = InMemoryImages.__init__

    def spy(self, images, labels, rows, plan, *args, **kwargs):
        if plan is not None:  # made from decoded images, not from ready pixel_values
            sizes.append(len(images))
        init(self, images, labels, rows, plan, *args, **kwargs)

    monkeypatch.setattr(InMemoryImages, "__init__", spy)
    return sizes


@pytest.fixture
def opened(monkeypatch):
    """Every image file or buffer Pillow opens (ours or `datasets`' decoding), counted by what was opened."""
    counts = Counter()
    real_open = PIL.Image.open

    def spy(fp, *args, **kwargs):
        counts[os.fspath(fp) if isinstance(fp, (str, os.PathLike)) else "<bytes>"] += 1
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", spy)
    return counts


def trainer(tmp_path, train, evaluation, num_labels=NUM_LABELS):
    return AdAutoMixTrainer(
        model=make_model("hf_resnet", num_labels=num_labels)[0],
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none", per_device_eval_batch_size=64),
        mixup_args=MixupArguments(mixup="none"),
        train_dataset=train,
        eval_dataset=evaluation,
    )


class TestDecodedOnce:
    """Defect 1 of issue 16: raw datasets given to the trainer, and the CLI's validation split, were decoded twice."""

    def test_api_decodes_each_raw_split_once(self, tmp_path, decoded_splits, opened):
        train, validation = load_digits_dataset()  # 1,437 / 360 embedded digits
        trainer(tmp_path, train, validation, num_labels=10)
        assert decoded_splits == [len(train), len(validation)]
        # Every image once, plus the training images' mean/std sample (all 1,437) and the first image's size.
        assert opened.total() <= len(validation) + 2 * len(train) + 1

    def test_cli_decodes_the_validation_split_once(self, tmp_path, monkeypatch, opened):
        from test_bad_data import write_image_folder

        val = write_image_folder(tmp_path / "val", ["cat", "dog"], n=4)
        write_image_folder(tmp_path / "train", ["cat", "dog"], n=4)
        args = [
            "--train_dir",
            str(tmp_path / "train"),
            "--validation_dir",
            str(val),
            "--model_type",
            "resnet",
        ]
        args += ["--config_overrides", TINY_RESNET, "--cifar_stem", "--output_dir", str(tmp_path / "out")]
        cli_trainer(args, monkeypatch)
        files = sorted(str(p) for p in val.rglob("*.png"))
        assert {f: opened[f] for f in files} == dict.fromkeys(files, 1)


class TestEvalDict:
    """Defect 4 of issue 16: a dict of raw evaluation datasets was left untransformed."""

    def test_evaluate_gives_metrics_for_every_raw_eval_dataset(self, tmp_path):
        raw = raw_splits(n_train=8, n_val=6)
        other = raw_splits(n_train=4, n_val=4)["validation"]
        metrics = trainer(tmp_path, raw["train"], {"a": raw["validation"], "b": other}).evaluate()
        for name in ("a", "b"):
            assert 0.0 <= metrics[f"eval_{name}_accuracy"] <= 1.0
            assert np.isfinite(metrics[f"eval_{name}_loss"])


class TestPrepareDatasets:
    def test_every_raw_split_of_a_dict_once(self, decoded_splits):
        from hf_adautomix.data import prepare_datasets

        raw = raw_splits(n_train=8, n_val=6)
        train, evals, info = prepare_datasets(
            raw["train"],
            {"a": raw["validation"], "b": raw["train"]},
            model_data=None,
            num_labels=NUM_LABELS,
            seed=0,
        )
        assert (info.recipe, info.size) == ("cifar", 32)
        assert all(isinstance(ds, InMemoryImages) for ds in (train, *evals.values()))
        assert decoded_splits == [8, 6, 8]
        assert (
            evals["b"].plan.padding == 0 and not evals["b"].plan.flip
        )  # the eval transform, not the train one

    def test_model_facts_decide_the_size(self):
        from hf_adautomix.data import prepare_datasets

        raw = raw_splits(n_train=4, n_val=4)
        facts = {"fixed_size": 48, "pretrained_config": None, "cifar_stem": False}
        train, evaluation, info = prepare_datasets(
            raw["train"], raw["validation"], model_data=facts, num_labels=NUM_LABELS, seed=0
        )
        assert info.size == 48 and train[0]["pixel_values"].shape == evaluation[0]["pixel_values"].shape == (
            3,
            48,
            48,
        )

    def test_ready_datasets_are_read_into_memory_without_info(self):
        from hf_adautomix.data import prepare_datasets

        ready = datasets.Dataset.from_dict(
            {"pixel_values": list(np.zeros((4, 3, 8, 8), np.float32)), "labels": [0, 1, 2, 3]}
        )
        train, evaluation, info = prepare_datasets(ready, None, model_data=None, num_labels=4, seed=0)
        assert info is None and evaluation is None and isinstance(train, InMemoryImages)

    def test_labels_are_checked_against_the_model(self):
        from hf_adautomix.data import prepare_datasets

        raw = raw_splits(n_train=4, n_val=4)
        with pytest.raises(ValueError, match=r"'b' dataset has .* outside 0\.\.1"):
            prepare_datasets(None, {"b": raw["validation"]}, model_data=None, num_labels=2, seed=0)


class TestDatasetLabelNames:
    def test_classlabel_with_one_name_per_class(self):
        from hf_adautomix.data import dataset_label_names

        raw = raw_splits(n_train=4, n_val=4)
        assert dataset_label_names([None, raw["train"]], NUM_LABELS) == [f"c{i}" for i in range(NUM_LABELS)]
        assert dataset_label_names([raw["train"]], NUM_LABELS + 1) is None
        plain = datasets.Dataset.from_dict({"label": [0, 1]})
        assert dataset_label_names([plain], 2) is None


class TestIssue17:
    def test_decode_bars_name_their_splits_and_rows_stay_internal(self, capfd):
        # Issue 17 (27): each decode progress bar carries its own split's name; users see no `__row__` column.
        from hf_adautomix.data import prepare_datasets

        raw = raw_splits(n_train=6, n_val=4)
        prepare_datasets(
            raw["train"], {"a": raw["validation"]}, model_data=None, num_labels=NUM_LABELS, seed=0
        )
        bars = {line.split(":")[0] for line in capfd.readouterr().err.replace("\r", "\n").splitlines()}
        assert {"Decoding the train images", "Decoding the a images"} <= bars, bars
        assert "__row__" not in raw["train"].column_names
        assert "__row__" not in load_digits_dataset()[0].column_names
