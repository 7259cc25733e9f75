"""One transform decision for the CLI and the Python API; data paths the CLI accepts (globs) or refuses
(streaming datasets), offline."""

import importlib.util
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_model
from transformers import TrainingArguments

from hf_adautomix import AdAutoMixTrainer, MixupArguments
from hf_adautomix.backbones import wrap_classifier
from hf_adautomix.data import (
    DataTrainingArguments,
    collate_fn,
    load_image_datasets,
    set_augmentation_epoch,
)

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "run_image_classification.py"
NUM_LABELS = 4
# (build_model flags of the CLI, conftest family of the same model)
CLI_MODELS = {
    "hf_resnet": [
        "--model_type",
        "resnet",
        "--config_overrides",
        "embedding_size=8,hidden_sizes=[8,8,16,16],depths=[1,1,1,1],layer_type=basic",
        "--cifar_stem",
    ],
    "timm_resnet": ["--timm_model", "resnet18", "--config_overrides", "layers=[1,1,1,1]", "--cifar_stem"],
}


def raw_splits(n_train=12, n_val=8, size=32):
    """Raw CIFAR-like splits: random `size`x`size` RGB images and a ClassLabel column."""
    rng = np.random.default_rng(0)
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{i}" for i in range(NUM_LABELS)])}
    )

    def split(n):
        images = [
            PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
        ]
        return datasets.Dataset.from_dict(
            {"img": images, "label": [i % NUM_LABELS for i in range(n)]}, features
        )

    return datasets.DatasetDict({"train": split(n_train), "validation": split(n_val)})


class _Built(Exception):
    """Raised by the CLI's trainer once built, to stop main() before training."""

    def __init__(self, trainer):
        super().__init__("built")
        self.trainer = trainer


def cli_trainer(args, monkeypatch):
    """The AdAutoMixTrainer that the CLI's main() builds from `args`."""
    spec = importlib.util.spec_from_file_location("run_image_classification", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    class Capture(AdAutoMixTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            raise _Built(self)

    monkeypatch.setattr(script, "AdAutoMixTrainer", Capture)
    with pytest.raises(_Built) as built:
        script.main(args)
    return built.value.trainer


def batches(trainer):
    """Every train row (augmentation seeded per row, epoch 0) and every eval row, collated."""
    set_augmentation_epoch(trainer.train_dataset, 0, 0)
    train = collate_fn([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    evaluation = collate_fn([trainer.eval_dataset[i] for i in range(len(trainer.eval_dataset))])
    return train, evaluation


class TestCliAndApiAgree:
    @pytest.mark.parametrize("family", sorted(CLI_MODELS))
    def test_identical_batches(self, family, tmp_path, monkeypatch):
        raw = raw_splits()
        raw.save_to_disk(tmp_path / "data")
        cli = cli_trainer(
            ["--dataset_name", str(tmp_path / "data"), *CLI_MODELS[family], "--mixup", "none", "--seed", "7"]
            + ["--output_dir", str(tmp_path / "cli")],
            monkeypatch,
        )
        model, _ = make_model(family, num_labels=NUM_LABELS)
        api = AdAutoMixTrainer(
            model=model,
            args=TrainingArguments(output_dir=str(tmp_path / "api"), seed=7, report_to="none"),
            mixup_args=MixupArguments(mixup="none"),
            train_dataset=raw["train"],
            eval_dataset=raw["validation"],
        )
        assert cli.transform_info == api.transform_info
        assert (api.transform_info.recipe, api.transform_info.size) == ("cifar", 32)  # not timm's 224
        for ours, theirs in zip(batches(cli), batches(api)):
            assert ours["pixel_values"].shape[-2:] == (32, 32)
            assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
            assert torch.equal(ours["labels"], theirs["labels"])


class TestFixedInputSize:
    @pytest.mark.parametrize(
        "family, expected",
        [
            ("hf_resnet", None),
            ("hf_convnext", None),  # config.image_size exists but is unused by a ConvNeXt
            ("timm_resnet", None),  # a CIFAR stem: timm's nominal 224 does not apply
            ("timm_convnext", None),
            ("hf_swin", 64),
            ("timm_swin", 64),
        ],
    )
    def test_families(self, family, expected):
        assert wrap_classifier(make_model(family)[0]).data_facts()["fixed_size"] == expected

    def test_api_uses_the_size_a_swin_needs(self, tmp_path):
        raw = raw_splits(n_train=4, n_val=4)
        trainer = AdAutoMixTrainer(
            model=make_model("timm_swin", num_labels=NUM_LABELS)[0],
            args=TrainingArguments(output_dir=str(tmp_path), report_to="none"),
            mixup_args=MixupArguments(mixup="none"),
            train_dataset=raw["train"],
            eval_dataset=raw["validation"],
        )
        assert trainer.transform_info.size == 64
        assert trainer.train_dataset[0]["pixel_values"].shape == (3, 64, 64)


class TestTrainFileGlob:
    def test_two_parquet_shards(self, tmp_path):
        raw = raw_splits(n_train=10, n_val=6, size=8)
        raw["train"].select(range(5)).to_parquet(str(tmp_path / "train-00000.parquet"))
        raw["train"].select(range(5, 10)).to_parquet(str(tmp_path / "train-00001.parquet"))
        raw["validation"].to_parquet(str(tmp_path / "test-00000.parquet"))
        args = DataTrainingArguments(
            train_file=str(tmp_path / "train-*.parquet"), validation_file=str(tmp_path / "test-*.parquet")
        )
        data = load_image_datasets(args)
        assert (len(data.train), len(data.validation)) == (10, 6)
        assert data.labels == [f"c{i}" for i in range(NUM_LABELS)]

    def test_pattern_matching_nothing_names_it(self, tmp_path):
        pattern = str(tmp_path / "train-*.parquet")
        with pytest.raises(
            FileNotFoundError, match=r"--train_file '.*train-\*\.parquet': the pattern matches no"
        ):
            DataTrainingArguments(train_file=pattern)

    def test_missing_plain_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="is not an existing file"):
            DataTrainingArguments(train_file=str(tmp_path / "train.parquet"))


class TestStreamingDataset:
    @pytest.mark.parametrize("split", ["train", "eval"])
    def test_refused_with_a_clear_error(self, split, tmp_path):
        raw = raw_splits(n_train=4, n_val=4)
        streaming = raw["train"].to_iterable_dataset()
        kwargs = {"train_dataset": raw["train"], "eval_dataset": raw["validation"]}
        kwargs[f"{split}_dataset"] = streaming
        with pytest.raises(ValueError, match=r"IterableDataset \(a streaming dataset\).*streaming=False"):
            AdAutoMixTrainer(
                model=make_model("hf_resnet", num_labels=NUM_LABELS)[0],
                args=TrainingArguments(output_dir=str(tmp_path), report_to="none"),
                mixup_args=MixupArguments(mixup="none"),
                **kwargs,
            )


def test_a_pretrained_cifar_stem_model_keeps_the_data_size(monkeypatch):
    """A pretrained model given a CIFAR stem trains and evaluates at the data's 32 px, with its own mean/std."""
    import datasets
    import numpy as np
    from PIL import Image

    from hf_adautomix import data as data_lib
    from hf_adautomix.backbones import build_model

    model = build_model(
        num_labels=2,
        id2label={0: "a", 1: "b"},
        timm_model="resnet18",
        cifar_stem=True,
        config_overrides="layers=[1,1,1,1]",
    )
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (3, 224, 224),
        "mean": (0.1, 0.2, 0.3),
        "std": (0.4, 0.5, 0.6),
        "crop_pct": 0.875,
    }
    images = [Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)) for i in range(4)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]})
    image_data = data_lib.ImageData(ds, ds, "image", "label", ["a", "b"], "test")
    facts = wrap_classifier(model).data_facts(pretrained=True)
    assert facts["cifar_stem"] and facts["pretrained_config"] is not None  # the branch under test
    _, _, info = data_lib.resolve_transforms(image_data, data_lib.DataTrainingArguments(), facts)
    assert info.size == 32 and info.recipe == "cifar"
    assert info.mean == (0.1, 0.2, 0.3) and info.std == (0.4, 0.5, 0.6)
