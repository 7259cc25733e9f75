"""--eval_robustness: corruption / FGSM / occlusion metrics of the online model and the EMA teacher at every
evaluation, on a fixed subset of the eval set, without touching training."""

import json
import random

import numpy as np
import pytest
import torch
from conftest import TINY_RESNET, make_model
from test_cli import FAST, load_script
from test_trainer import targs, tensor_dataset

from hf_adautomix import AdAutoMixTrainer, MixupArguments
from hf_adautomix.data import load_digits_dataset
from hf_adautomix.evaluation.robustness import TRAINING_CORRUPTIONS, robustness_subset
from hf_adautomix.run_folder import run_record

ROBUST = [
    *(f"robust_{name}_top1" for name in TRAINING_CORRUPTIONS),
    "robust_corruption_top1",
    "robust_fgsm_error",
    "robust_occlusion50_top1",
]
SAMPLES = 6


def digits(n_train=16, n_eval=8):
    train, val = load_digits_dataset()
    return train.select(range(n_train)), val.select(range(n_eval))


def make_trainer(tmp_path, mixup="adautomix", **kw):
    train, val = digits()
    model, _ = make_model("hf_resnet", num_labels=10)
    mix = MixupArguments(mixup=mixup, save_mix_every=0, eval_robustness=True, eval_robustness_samples=SAMPLES)
    return AdAutoMixTrainer(
        model=model, args=targs(tmp_path, **kw), mixup_args=mix, train_dataset=train, eval_dataset=val
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """An AdAutoMix trainer (online, EMA and both mix heads) after 2 steps, evaluated twice in a row, with the global
    RNG states and the model's mode around the first evaluation."""
    trainer = make_trainer(tmp_path_factory.mktemp("robust"))
    trainer.train()
    trainer.model.train()
    rng_before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    first = trainer.evaluate()
    rng_after = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    subset = trainer.robustness_probe.subset
    second = trainer.evaluate()
    return trainer, first, second, subset, rng_before, rng_after


class TestDuringEvaluate:
    def test_online_and_ema_keys_only_and_in_unit_range(self, evaluated):
        _, metrics, *_ = evaluated
        expected = {f"{prefix}_{key}" for prefix in ("eval", "eval_ema") for key in ROBUST}
        assert {k for k in metrics if "robust" in k} == expected  # not the mix heads
        assert all(0.0 <= metrics[k] <= 1.0 for k in expected)
        for prefix in ("eval", "eval_ema"):
            by_type = [metrics[f"{prefix}_robust_{name}_top1"] for name in TRAINING_CORRUPTIONS]
            assert metrics[f"{prefix}_robust_corruption_top1"] == pytest.approx(np.mean(by_type))

    def test_logged_in_the_history(self, evaluated):
        trainer, metrics, *_ = evaluated
        logged = [h for h in trainer.state.log_history if "eval_robust_fgsm_error" in h]
        assert (
            len(logged) == 2
            and logged[0]["eval_ema_robust_occlusion50_top1"] == metrics["eval_ema_robust_occlusion50_top1"]
        )

    def test_the_subset_is_built_once_and_gives_the_same_numbers(self, evaluated):
        trainer, first, second, subset, *_ = evaluated
        assert trainer.robustness_probe.subset is subset
        assert {k: v for k, v in first.items() if "robust" in k} == {
            k: v for k, v in second.items() if "robust" in k
        }

    def test_subset_is_the_first_rows_corrupted_and_half_occluded(self, evaluated):
        trainer, *_ = evaluated
        subset = trainer.robustness_probe.subset
        rows = [trainer.eval_dataset[i] for i in range(SAMPLES)]
        std = min(trainer.transform_info.std)
        clean = torch.stack([r["pixel_values"] for r in rows])
        torch.testing.assert_close(subset.normalised(subset.clean), clean, atol=0.5 / 255 / std, rtol=0)
        assert subset.labels.tolist() == [r["labels"] for r in rows]
        for name, images in subset.corrupted.items():
            assert (
                images.shape == subset.clean.shape and (images.int() - subset.clean.int()).abs().max() > 25
            ), name
        assert subset.occluded.shape == subset.clean.shape and not torch.equal(subset.occluded, subset.clean)

    def test_metrics_are_those_of_the_online_model_and_of_the_teacher(self, evaluated):
        trainer, metrics, _, subset, *_ = evaluated
        model = trainer.model.eval()
        with torch.no_grad():
            for prefix, net in (("eval", model.classifier), ("eval_ema", model.teacher)):
                for key, images in (
                    ("occlusion50", subset.occluded),
                    ("contrast", subset.corrupted["contrast"]),
                ):
                    acc = (net(subset.normalised(images)).argmax(-1) == subset.labels).float().mean().item()
                    assert metrics[f"{prefix}_robust_{key}_top1"] == pytest.approx(acc), (prefix, key)

    def test_rng_and_train_mode_are_left_as_they_were(self, evaluated):
        trainer, *_, rng_before, rng_after = evaluated
        assert torch.equal(rng_before[0], rng_after[0])
        assert np.array_equal(rng_before[1], rng_after[1]) and rng_before[2] == rng_after[2]
        # (Trainer's own evaluation loop leaves the model in eval mode; the next training step sets train mode.)
        for mode in (True, False):
            trainer.model.train(mode)
            trainer.robustness_probe.measure(trainer, "eval")
            assert trainer.model.training is mode and not trainer.model.teacher.training


def test_half_of_the_patches_are_black_and_the_rest_untouched():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    grey = (0.5 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    subset = robustness_subset(grey.expand(5, 3, 32, 32), torch.zeros(5, dtype=torch.long), mean, std)
    assert torch.equal(subset.clean, torch.full((5, 3, 32, 32), 128, dtype=torch.uint8))
    # 32 px: a 2x2 grid of 16 px patches
    patches = subset.occluded.unfold(2, 16, 16).unfold(3, 16, 16).flatten(-2)  # (K, 3, 2, 2, 256)
    assert ((patches == 0).all(dim=(1, 4)).sum(dim=(1, 2)) == 2).all()
    assert ((patches == 128).all(dim=(1, 4)).sum(dim=(1, 2)) == 2).all()


def test_training_with_it_gives_bitwise_the_same_weights(tmp_path):
    """Evaluations at every step, with and without --eval_robustness: the same trained weights, bit for bit."""
    states = []
    for flag in (False, True):
        train, val = digits()
        model, _ = make_model("hf_resnet", num_labels=10)
        mix = MixupArguments(
            mixup="adautomix", save_mix_every=0, eval_robustness=flag, eval_robustness_samples=4
        )
        trainer = AdAutoMixTrainer(
            model=model,
            args=targs(tmp_path / str(flag), max_steps=2, eval_strategy="steps", eval_steps=1),
            mixup_args=mix,
            train_dataset=train,
            eval_dataset=val,
        )
        trainer.train()
        logged = [h["step"] for h in trainer.state.log_history if "eval_ema_robust_fgsm_error" in h]
        assert logged == ([1, 2] if flag else [])
        states.append(trainer.model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_cli_flag_lands_in_all_results_and_the_history(tmp_path):
    out = tmp_path / "out"
    args = ["--mixup", "none", "--ema", "True", "--eval_robustness", "--model_type", "resnet", "--cifar_stem"]
    args += ["--config_overrides", TINY_RESNET, "--output_dir", str(out), *FAST]
    metrics = load_script().main([*args, "--eval_strategy", "steps", "--eval_steps", "2"])
    results = json.loads((out / "all_results.json").read_text())
    for prefix in ("eval", "eval_ema"):
        assert {f"{prefix}_{key}" for key in ROBUST} <= set(results)
    assert results["eval_robust_fgsm_error"] == metrics["eval_robust_fgsm_error"]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any(h.get("step") == 2 and "eval_ema_robust_corruption_top1" in h for h in history)


def test_resuming_with_another_value_is_allowed():
    """The flags change no training, so run_folder.run_record leaves them out (a re-run with them resumes)."""
    assert run_record(MixupArguments(eval_robustness=True, eval_robustness_samples=7)) == run_record(
        MixupArguments()
    )


class TestBadInput:
    def test_no_eval_dataset(self, tmp_path):
        model, _ = make_model("hf_resnet", num_labels=10)
        with pytest.raises(ValueError, match=r"^--eval_robustness needs an eval dataset"):
            AdAutoMixTrainer(
                model=model,
                args=targs(tmp_path),
                mixup_args=MixupArguments(eval_robustness=True),
                train_dataset=digits()[0],
            )

    def test_pixel_values_without_transform_info(self, tmp_path):
        model, _ = make_model("hf_resnet")
        with pytest.raises(
            ValueError, match=r"^--eval_robustness needs the eval data's mean/std.*transform_info="
        ):
            AdAutoMixTrainer(
                model=model,
                args=targs(tmp_path),
                mixup_args=MixupArguments(eval_robustness=True),
                train_dataset=tensor_dataset(),
                eval_dataset=tensor_dataset(8),
            )

    def test_subset_size_below_one(self):
        with pytest.raises(ValueError, match="--eval_robustness_samples must be >= 1, got 0"):
            MixupArguments(eval_robustness=True, eval_robustness_samples=0)
