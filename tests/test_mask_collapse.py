"""Issue 17, item 16: a learned mixer whose masks collapse (each mixed image one source image while the target says λ)
gets one warning; crisp masks of the right area and soft masks do not."""

import logging

import numpy as np
import pytest
import torch
from conftest import make_model
from datasets import Dataset
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_adautomix import AdAutoMixTrainer, MixupArguments
from hf_adautomix.callbacks import MaskCollapseWarning

CALLBACK_LOGGER = "hf_adautomix.callbacks"


def feed(callback, logs: list[dict]) -> None:
    state = TrainerState()
    for step, log in enumerate(logs, start=1):
        state.global_step = step * 5
        callback.on_log(None, state, TrainerControl(), logs=log)


COLLAPSED = {"train_mask_entropy": 0.001, "train_mask_lam_gap": 0.4, "loss": 1.0}
CRISP_RIGHT_AREA = {"train_mask_entropy": 0.001, "train_mask_lam_gap": 0.05}  # a CutMix-like mask
SOFT_OFF_AREA = {"train_mask_entropy": 0.3, "train_mask_lam_gap": 0.4}  # the mask loss can still pull it back
HEALTHY = {"train_mask_entropy": 0.6, "train_mask_lam_gap": 0.1}


def test_five_collapsed_logs_in_a_row_warn_once_naming_the_onset(caplog):
    callback = MaskCollapseWarning("automix")
    with caplog.at_level(logging.WARNING, logger=CALLBACK_LOGGER):
        feed(
            callback, [HEALTHY, {"loss": 2.0}, HEALTHY] + [COLLAPSED] * 12
        )  # a log without mask stats: skipped
    warnings = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "automix masks have collapsed since step 20" in warnings[0]  # the 4th log, at step 4 × 5
    assert "entropy 0.0010" in warnings[0] and "0.400" in warnings[0]


@pytest.mark.parametrize(
    "logs",
    [
        [CRISP_RIGHT_AREA] * 20,
        [SOFT_OFF_AREA] * 20,
        [HEALTHY] * 20,
        ([COLLAPSED] * 4 + [HEALTHY]) * 4,  # never 5 in a row
        [{"loss": 1.0}] * 20,  # a mixer without masks
    ],
    ids=["crisp_right_area", "soft_off_area", "healthy", "four_in_a_row", "no_mask_stats"],
)
def test_no_warning_without_a_collapse(logs, caplog):
    with caplog.at_level(logging.WARNING, logger=CALLBACK_LOGGER):
        feed(MaskCollapseWarning("adautomix"), logs)
    assert not [r for r in caplog.records if "collapsed" in r.getMessage()]


def test_the_criterion_separates_the_measured_runs():
    """The thresholds against what the issue's runs logged (docs/benchmarks.md, "Mask collapse"): collapsed AutoMix
    windows had entropy 0.0006-0.0168 and gaps 0.28-0.71; healthy windows of AutoMix and AdAutoMix entropy ≥ 0.064
    or gaps ≤ 0.24 while crisp."""
    for entropy, gap in ((0.0006, 0.2761), (0.0168, 0.7062), (0.0, 0.748)):
        assert MaskCollapseWarning.collapsed({"train_mask_entropy": entropy, "train_mask_lam_gap": gap})
    for entropy, gap in ((0.0642, 0.6445), (0.1657, 0.3995), (0.8883, 0.2306), (0.002, 0.2306)):
        assert not MaskCollapseWarning.collapsed({"train_mask_entropy": entropy, "train_mask_lam_gap": gap})


def tensor_dataset(n=16, size=32, num_labels=4):
    rng = np.random.default_rng(0)
    return Dataset.from_dict(
        {
            "pixel_values": rng.standard_normal((n, 3, size, size)).astype(np.float32),
            "labels": (np.arange(n) % num_labels).astype(np.int64),
        }
    ).with_format("torch")


def train(tmp_path, mixup: str, collapse: bool):
    """A few steps of `mixup` with λ fixed at 0.5; `collapse`: the mix block's value bias at +40, so the sigmoid
    saturates (every pixel from image 2, no gradient back: the collapse the issue saw)."""
    model, _ = make_model("hf_resnet")
    trainer = AdAutoMixTrainer(
        model=model,
        mixup_args=MixupArguments(mixup=mixup, save_mix_every=0),
        train_dataset=tensor_dataset(),
        args=TrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=7, logging_steps=1,
            save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, learning_rate=0.01,
        ),
    )  # fmt: skip
    mixer = trainer.model.mixer
    mixer.beta = lambda shape: torch.full(shape, 0.5)
    if collapse:
        with torch.no_grad():
            mixer.generator.value.bias.fill_(40.0)
    trainer.train()
    return trainer


def test_a_collapsed_automix_run_warns_and_a_healthy_one_does_not(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=CALLBACK_LOGGER):
        trainer = train(tmp_path / "collapsed", "automix", collapse=True)
    logs = [r for r in trainer.state.log_history if "train_mask_entropy" in r]
    assert len(logs) == 7 and all(
        r["train_mask_entropy"] < 1e-3 and r["train_mask_lam_gap"] > 0.45 for r in logs
    )
    warnings = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(warnings) == 1 and "automix masks have collapsed since step 1:" in warnings[0], warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=CALLBACK_LOGGER):
        train(tmp_path / "healthy", "automix", collapse=False)
    assert not [r for r in caplog.records if "collapsed" in r.getMessage()]


def test_every_learned_mixer_is_watched(tmp_path):
    """AutoMix and AdAutoMix runs get the warning; classic mixers, which log no masks, do not carry it."""
    for mixup, watched in (("automix", True), ("adautomix", True), ("mixup", False), ("none", False)):
        trainer = AdAutoMixTrainer(
            model=make_model("hf_resnet")[0],
            mixup_args=MixupArguments(mixup=mixup),
            args=TrainingArguments(output_dir=str(tmp_path / mixup), report_to="none", use_cpu=True),
        )
        found = [c for c in trainer.callback_handler.callbacks if isinstance(c, MaskCollapseWarning)]
        assert bool(found) == watched, mixup
        assert not found or found[0].mixer == mixup
