"""Robustness evaluation: corruptions (both parameter sets), occlusion, FGSM, ECE / reliability bins, exported model
loading and the `examples/evaluate_robustness.py` script, on a tiny model trained for 2 steps."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from conftest import make_model
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from test_trainer import targs

pytest.importorskip("imagecorruptions")

from hf_adautomix import AdAutoMixTrainer, MixupArguments  # noqa: E402
from hf_adautomix.backbones import ClassifierAdapter  # noqa: E402
from hf_adautomix.evaluation import metrics  # noqa: E402
from hf_adautomix.evaluation.cifar_c import CIFAR_C, CIFAR_C_PARAMS  # noqa: E402
from hf_adautomix.evaluation.corruptions import require_imagecorruptions  # noqa: E402
from hf_adautomix.evaluation.robustness import (  # noqa: E402
    CORRUPTIONS,
    clean_metrics,
    corrupt_image,
    evaluate_corruptions,
    evaluate_fgsm,
    evaluate_occlusion,
    load_exported,
    occlude,
    predict,
)
from hf_adautomix.plots import reliability_bins, save_reliability_diagram  # noqa: E402

NAMES = ["cat", "dog", "frog", "ship"]
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def smooth_image(size=32, seed=0):
    """Gradients plus a few blocks: structure that blur, noise and contrast change measurably."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    img = np.stack([xx, yy, 0.5 * (xx + yy)], axis=-1) * 0.6 + 0.2
    for _ in range(4):
        r, c = rng.integers(0, size - 8, 2)
        img[r : r + 8, c : c + 8] = rng.uniform(0, 1, 3)
    return np.uint8(np.round(img * 255))


def raw_dataset(n=8, seed=0):
    images = [PILImage.fromarray(smooth_image(32, seed + i)) for i in range(n)]
    features = Features({"image": Image(), "label": ClassLabel(names=NAMES)})
    return Dataset.from_dict({"image": images, "label": [i % 4 for i in range(n)]}, features=features)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny transformers ResNet trained 2 steps on raw 32 px images and exported with `save_model()`."""
    out = tmp_path_factory.mktemp("robust") / "out"
    trainer = AdAutoMixTrainer(
        model=make_model("hf_resnet")[0],
        args=targs(out, max_steps=2),
        mixup_args=MixupArguments(mixup="mixup", ema=False),
        train_dataset=raw_dataset(8),
    )
    trainer.train()
    trainer.save_model()
    return str(out)


@pytest.fixture(scope="module")
def loaded(export):
    return load_exported(export)


def mad(a, b):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


class TestCorruptions:
    @pytest.mark.parametrize("params", ["imagenet", "cifar"])
    def test_every_type_keeps_shape_dtype_range_and_changes_the_image(self, params):
        img = smooth_image()
        for name in CORRUPTIONS:
            out = corrupt_image(img, name, 3, params, seed=1)
            assert out.shape == img.shape and out.dtype == np.uint8, name
            assert not np.array_equal(out, img), name

    @pytest.mark.parametrize("params", ["imagenet", "cifar"])
    @pytest.mark.parametrize(
        "name", ["gaussian_noise", "impulse_noise", "gaussian_blur", "contrast", "brightness", "fog"]
    )
    def test_change_grows_with_severity(self, name, params):
        img = smooth_image()
        change = [mad(corrupt_image(img, name, s, params, seed=3), img) for s in (1, 3, 5)]
        assert change[0] < change[1] < change[2], change

    def test_deterministic_given_seed_and_leaves_numpy_state(self):
        img = smooth_image()
        state = np.random.get_state()[1].copy()
        a = corrupt_image(img, "shot_noise", 2, "cifar", seed=5)
        assert np.array_equal(a, corrupt_image(img, "shot_noise", 2, "cifar", seed=5))
        assert not np.array_equal(a, corrupt_image(img, "shot_noise", 2, "cifar", seed=6))
        assert np.array_equal(state, np.random.get_state()[1])

    def test_the_cifar_table_has_every_type_in_order(self):
        assert tuple(CIFAR_C) == CORRUPTIONS and set(CIFAR_C_PARAMS) == set(CORRUPTIONS)
        assert all(len(CIFAR_C_PARAMS[name]) == 5 for name in CORRUPTIONS)

    def test_missing_package_says_what_to_install(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "imagecorruptions", None)
        with pytest.raises(ImportError, match=r"pip install 'hf_adautomix\[robustness\]'"):
            require_imagecorruptions()
        with pytest.raises(ImportError, match="imagecorruptions"):
            corrupt_image(smooth_image(), "contrast", 1, "cifar")

    def test_bad_input(self):
        img = smooth_image()
        with pytest.raises(ValueError, match="Expected a corruption"):
            corrupt_image(img, "rain", 1)
        with pytest.raises(ValueError, match="severity in 1..5"):
            corrupt_image(img, "fog", 6)
        with pytest.raises(ValueError, match="at least 32 x 32"):
            corrupt_image(smooth_image(16), "fog", 1, "imagenet")
        with pytest.raises(ValueError, match="uint8"):
            corrupt_image(img.astype(np.float32), "fog", 1)


class TestOcclusion:
    def test_drops_the_asked_share_of_patches_with_the_fill(self):
        x = torch.ones(3, 32, 32)
        fill = torch.tensor([-1.0, -2.0, -3.0])
        out = occlude(x, 0.5, 8, fill, np.random.default_rng(0))
        dropped = (out[0] == -1.0).float().mean()
        assert dropped == pytest.approx(0.5) and torch.all(out[1][out[0] == -1.0] == -2.0)
        assert torch.equal(occlude(x, 0.0, 8, fill, np.random.default_rng(0)), x)
        assert torch.all(occlude(x, 1.0, 8, fill, np.random.default_rng(0))[2] == -3.0)


class TestCalibration:
    def test_ece_and_bins_by_hand(self):
        # Confidences 0.9 (right), 0.61 (wrong), 0.65 (right), 0.95 (wrong); 15 bins of width 1/15. 0.61 and 0.65
        # share bin 9 [0.6, 0.667): acc 0.5, conf 0.63; 0.9 is alone in bin 13, 0.95 in bin 14. ECE =
        # 2/4 * |0.5 - 0.63| + 1/4 * |1 - 0.9| + 1/4 * |0 - 0.95|.
        probs = np.array([[0.9, 0.1], [0.61, 0.39], [0.35, 0.65], [0.05, 0.95]])
        labels = np.array([0, 1, 1, 0])
        expected = 0.5 * 0.13 + 0.1 / 4 + 0.95 / 4
        assert metrics.ece(probs, labels, n_bins=15, from_logits=False) == pytest.approx(expected)
        bins = reliability_bins(np.log(probs), labels, n_bins=15)
        assert bins["count"][9] == 2 and bins["accuracy"][9] == pytest.approx(0.5)
        assert bins["confidence"][9] == pytest.approx(0.63)
        assert bins["count"][13] == 1 and bins["count"][14] == 1 and sum(bins["count"]) == 4
        assert metrics.ece(np.log(probs), labels, n_bins=15, from_logits=True) == pytest.approx(expected)

    def test_reliability_diagram_png(self, tmp_path):
        rng = np.random.default_rng(0)
        path = save_reliability_diagram(
            rng.normal(size=(50, 4)), rng.integers(0, 4, 50), str(tmp_path / "r.png")
        )
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


class TestOnExportedModel:
    def test_load_exported_matches_the_trained_preprocessing(self, loaded):
        assert loaded.size == 32 and loaded.source.startswith("transformers:")
        assert loaded.transform(PILImage.fromarray(smooth_image())).shape == (3, 32, 32)

    def test_the_model_is_the_exports_classifier_adapter(self, loaded):
        # One model adapter in the package: evaluation loads through `backbones.load_export`.
        assert isinstance(loaded.model, ClassifierAdapter) and not loaded.model.training
        assert loaded.id2label == dict(enumerate(NAMES))
        x = loaded.transform(PILImage.fromarray(smooth_image()))[None]
        with torch.no_grad():
            assert loaded.model(x).shape == (1, len(NAMES))

    def test_fgsm_zero_is_clean_and_positive_raises_the_loss(self, loaded):
        ds = raw_dataset(8)
        clean, logits, labels = clean_metrics(loaded, ds, batch_size=4, progress=False)
        zero = evaluate_fgsm(loaded, ds, epsilon=0.0, batch_size=4, progress=False)
        assert zero["accuracy"] == clean["accuracy"] and zero["nll"] == pytest.approx(clean["nll"], abs=1e-6)
        attacked = evaluate_fgsm(loaded, ds, epsilon=8 / 255, batch_size=4, progress=False)
        assert attacked["nll"] > clean["nll"]
        assert attacked["error"] == pytest.approx(1 - attacked["accuracy"])

    def test_fgsm_stays_in_the_valid_range(self, loaded):
        # A huge epsilon saturates every pixel at 0 or 1: predictions equal those on that clipped image.
        logits, _ = predict(loaded, raw_dataset(4), batch_size=4, fgsm_epsilon=2.0, progress=False)
        assert np.all(np.isfinite(logits))

    def test_occlusion_zero_is_clean(self, loaded):
        ds = raw_dataset(8)
        clean, _, _ = clean_metrics(loaded, ds, batch_size=8, progress=False)
        occ = evaluate_occlusion(loaded, ds, ratios=[0.0, 0.5], patch_size=8, batch_size=8, progress=False)
        assert occ["accuracy"]["0"] == clean["accuracy"] and set(occ["accuracy"]) == {"0", "0.5"}

    def test_corruption_table(self, loaded):
        res = evaluate_corruptions(
            loaded,
            raw_dataset(4),
            corruptions=["gaussian_noise", "pixelate"],
            severities=[1, 5],
            params="cifar",
            batch_size=4,
            progress=False,
        )
        assert set(res["error"]) == {"gaussian_noise", "pixelate"} and set(res["error"]["pixelate"]) == {
            "1",
            "5",
        }
        assert res["mean_error"] == pytest.approx(
            np.mean([v for e in res["error"].values() for v in e.values()])
        )
        assert res["mean_accuracy"] == pytest.approx(1 - res["mean_error"])


def test_script_end_to_end(export, tmp_path):
    data = tmp_path / "data"
    DatasetDict({"train": raw_dataset(8), "validation": raw_dataset(8, seed=100)}).save_to_disk(str(data))
    sys.path.insert(0, EXAMPLES)
    try:
        import evaluate_robustness as script
    finally:
        sys.path.remove(EXAMPLES)
    out = tmp_path / "rob"
    results = script.main(
        [
            "--model_name_or_path", export,
            "--dataset_name", str(data),
            "--output_dir", str(out),
            "--corruptions", "gaussian_noise,contrast",
            "--severities", "1,5",
            "--corruption_params", "cifar",
            "--occlusion_ratios", "0,0.5",
            "--occlusion_patch_size", "8",
            "--max_eval_samples", "6",
            "--batch_size", "4",
        ]
    )  # fmt: skip
    assert results["num_samples"] == 6
    for name in (
        "robustness.json",
        "robustness.md",
        "reliability_diagram.png",
        "occlusion.png",
        "corruptions.png",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "robustness.json").read_text())
    assert set(saved) >= {"clean", "corruptions", "fgsm", "occlusion"}
    assert saved["fgsm"]["epsilon"] == pytest.approx(8 / 255)
    markdown = (out / "robustness.md").read_text()
    assert "| gaussian_noise |" in markdown and "FGSM" in markdown and "50%" in markdown


def test_load_exported_timm_export(tmp_path):
    """A timm export (config.json with "architecture") loads through timm with its pretrained_cfg preprocessing."""
    trainer = AdAutoMixTrainer(
        model=make_model("timm_resnet")[0],
        args=targs(tmp_path, max_steps=1),
        mixup_args=MixupArguments(mixup="cutmix", ema=False),
        train_dataset=raw_dataset(8),
    )
    trainer.train()
    trainer.save_model()
    loaded = load_exported(str(tmp_path))
    assert loaded.source.startswith("timm:") and loaded.size == 32
    assert loaded.id2label == dict(enumerate(NAMES))
    assert loaded.mean == pytest.approx(trainer.transform_info.mean)
    clean, logits, _ = clean_metrics(loaded, raw_dataset(4), batch_size=4, progress=False)
    assert logits.shape == (4, 4) and 0 <= clean["accuracy"] <= 1


def test_script_refuses_data_with_another_class_count(export, tmp_path):
    features = Features({"image": Image(), "label": ClassLabel(names=NAMES[:3])})
    images = [PILImage.fromarray(smooth_image(32, i)) for i in range(6)]
    data = tmp_path / "data"
    DatasetDict(
        {"train": Dataset.from_dict({"image": images, "label": [i % 3 for i in range(6)]}, features=features)}
    ).save_to_disk(str(data))
    sys.path.insert(0, EXAMPLES)
    try:
        import evaluate_robustness as script
    finally:
        sys.path.remove(EXAMPLES)
    with pytest.raises(ValueError, match="The model has 4 classes but the data has 3"):
        script.main(
            ["--model_name_or_path", export, "--dataset_name", str(data), "--output_dir", str(tmp_path / "o")]
        )
