"""Evaluation of the four heads of a learned mixer: online/EMA x clean head/mix head (reference §8, §12.6)."""

import numpy as np
import pytest
import torch
from conftest import make_model
from datasets import Dataset
from test_trainer import targs
from torch.nn import functional as F

from hf_adautomix import AdAutoMixTrainer, MixupArguments, MixupModel
from hf_adautomix.backbones import wrap_classifier

NUM_LABELS = 4
STATS = ("loss", "accuracy", "top5_accuracy", "nll", "ece")
CLEAN = ("eval", "eval_ema")
MIX_HEADS = ("eval_mix_head", "eval_ema_mix_head")


def tensor_dataset(n, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset.from_dict(
        {
            "pixel_values": rng.standard_normal((n, 3, 32, 32)).astype(np.float32),
            "labels": (np.arange(n) % NUM_LABELS).astype(np.int64),
        }
    ).with_format("torch")


def make_trainer(tmp_path, **mixup):
    model, _ = make_model("hf_resnet", NUM_LABELS)
    # one eval batch: the eval loss is that batch's mean
    args = targs(tmp_path, per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=0.05)
    return AdAutoMixTrainer(
        model=model,
        args=args,
        mixup_args=MixupArguments(**mixup),
        train_dataset=tensor_dataset(16),
        eval_dataset=tensor_dataset(8, seed=1),
    )


def pooled_by_hand(adapter, x):
    """The transformers ResNet's pooled features, the input of its `classifier` (Flatten, Linear)."""
    return adapter.model.resnet(pixel_values=x).pooler_output


@pytest.fixture(scope="module")
def adautomix_trainer(tmp_path_factory):
    trainer = make_trainer(tmp_path_factory.mktemp("adautomix"), mixup="adautomix")
    trainer.train()
    return trainer, trainer.evaluate()


class TestLearnedMixerHeads:
    def test_reports_four_sets_of_metrics(self, adautomix_trainer):
        trainer, metrics = adautomix_trainer
        for prefix in CLEAN + MIX_HEADS:
            for stat in STATS:
                assert f"{prefix}_{stat}" in metrics, f"{prefix}_{stat}"
        model = trainer.model
        assert model.has_mix_head and not model.eval_ema and not model.eval_mix_head  # switches reset

    def test_mix_head_logits_are_the_pooled_features_through_the_mix_head(self, adautomix_trainer):
        trainer, metrics = adautomix_trainer
        model = trainer.model.eval()
        batch = tensor_dataset(8, seed=1)[:]
        x, y = batch["pixel_values"], batch["labels"]
        mixer = model.mixer
        with torch.no_grad():
            by_hand = {
                "eval": model.classifier.head(pooled_by_hand(model.classifier, x)),
                "eval_ema": model.teacher.head(pooled_by_hand(model.teacher, x)),
                "eval_mix_head": mixer.mix_head(pooled_by_hand(model.classifier, x)),
                "eval_ema_mix_head": mixer.mix_head_teacher(pooled_by_hand(model.teacher, x)),
            }
            for prefix, logits in by_hand.items():
                model.eval_ema, model.eval_mix_head = "ema" in prefix, "mix_head" in prefix
                try:
                    out = model(x, y)
                finally:
                    model.eval_ema = model.eval_mix_head = False
                torch.testing.assert_close(out["logits"], logits, msg=prefix)
                # evaluate()'s numbers are those of these logits
                assert metrics[f"{prefix}_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-4)
                acc = float((logits.argmax(-1) == y).float().mean())
                assert metrics[f"{prefix}_accuracy"] == pytest.approx(acc), prefix
        # four different heads, not one head reported four times
        assert not torch.allclose(by_hand["eval_mix_head"], by_hand["eval"])
        assert not torch.allclose(by_hand["eval_ema_mix_head"], by_hand["eval_mix_head"])

    def test_export_is_the_clean_head(self, adautomix_trainer, tmp_path):
        from transformers import AutoModelForImageClassification

        trainer, _ = adautomix_trainer
        out = trainer.export_model(str(tmp_path / "export"))
        loaded = wrap_classifier(AutoModelForImageClassification.from_pretrained(out)).eval()
        teacher = trainer.model.eval().teacher
        x = tensor_dataset(8, seed=1)[:]["pixel_values"]
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), teacher(x))
            mix = trainer.model.mixer.mix_head_teacher(teacher.forward_features(x).pooled)
            assert not torch.allclose(loaded(x), mix)


def test_one_pass_over_the_data_gives_each_head_alone(tmp_path):
    """All four heads from one pass over the eval set (one batch read per batch of data, not four), with the numbers
    of Trainer's evaluation of each head alone (the `eval_ema` / `eval_mix_head` switches) to 1e-6; a ragged last
    batch (20 rows, batches of 8) checks that each head's loss weighs every row once. The RNG is left as found."""
    from transformers import Trainer

    trainer = make_trainer(tmp_path, mixup="adautomix")
    trainer.eval_dataset = tensor_dataset(20, seed=2)
    trainer.train()
    batches = []
    collate = trainer.data_collator
    trainer.data_collator = lambda rows: batches.append(len(rows)) or collate(rows)
    rng = torch.get_rng_state()
    metrics = trainer.evaluate()
    assert torch.equal(rng, torch.get_rng_state())
    assert batches == [8, 8, 4]
    trainer.data_collator = collate
    model = trainer.model
    for prefix in CLEAN + MIX_HEADS:
        model.eval_ema, model.eval_mix_head = "ema" in prefix, "mix_head" in prefix
        try:
            alone = Trainer.evaluate(trainer, metric_key_prefix=prefix)  # stock: one head, one pass
        finally:
            model.eval_ema = model.eval_mix_head = False
        for stat in STATS:
            key = f"{prefix}_{stat}"
            assert metrics[key] == pytest.approx(alone[key], rel=1e-6, abs=1e-6), key


@pytest.mark.parametrize(
    "mixup",
    [dict(mixup="adautomix", share_mix_head=True), dict(mixup="mixup", ema=True)],
    ids=["adautomix-share_mix_head", "mixup-ema"],
)
def test_no_own_mix_head_reports_the_two_clean_sets(mixup, tmp_path):
    trainer = make_trainer(tmp_path, **mixup)
    trainer.train()
    metrics = trainer.evaluate()
    assert not trainer.model.has_mix_head
    for prefix in CLEAN:
        assert f"{prefix}_accuracy" in metrics
    assert not [k for k in metrics if "mix_head" in k]


def test_eval_mix_head_without_a_mix_head_is_an_error():
    model, _ = make_model("hf_resnet", NUM_LABELS)
    wrapper = MixupModel(model).eval()
    wrapper.eval_mix_head = True
    with pytest.raises(ValueError, match="eval_mix_head needs a learned mixer with its own mix head.*NoMix"):
        wrapper(torch.randn(2, 3, 32, 32))
