"""AdAutoMixTrainer: GA loss scaling, EMA evaluation and export, raw datasets, generator param group, resume."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAMILIES, make_model
from datasets import Dataset
from transformers import TrainingArguments

from hf_adautomix import AdAutoMixTrainer, MixupArguments, MixupModel
from hf_adautomix.backbones import wrap_classifier


def tensor_dataset(n=16, size=32, num_labels=4, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset.from_dict(
        {
            "pixel_values": rng.standard_normal((n, 3, size, size)).astype(np.float32),
            "labels": (np.arange(n) % num_labels).astype(np.int64),
        }
    ).with_format("torch")


def targs(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=0.05,
        optim="sgd",
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ga_loss_is_divided_for_every_family(family, tmp_path):
    """hf-ecosystem §1.3: stock Trainer would not divide a ResNet's loss by the accumulation steps."""
    model, size = make_model(family)
    trainer = AdAutoMixTrainer(
        model=model,
        args=targs(tmp_path, gradient_accumulation_steps=2),
        train_dataset=tensor_dataset(8, size),
    )
    batch = {"pixel_values": torch.randn(4, 3, size, size), "labels": torch.tensor([0, 1, 2, 3])}
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2  # set by Trainer's loop at each update step
    torch.manual_seed(1)
    full = trainer.model(**batch)["loss"].detach()
    torch.manual_seed(1)
    step_loss = trainer.training_step(trainer.model, batch)
    torch.testing.assert_close(step_loss, full / 2)


@pytest.mark.parametrize("family", ["hf_convnext", "timm_convnext"])
def test_ga_equals_large_batch_without_batchnorm(family, tmp_path):
    ds = tensor_dataset(16)
    finals = []
    for bs, ga in ((8, 1), (4, 2)):
        model, _ = make_model(family)
        trainer = AdAutoMixTrainer(
            model=model,
            args=targs(
                tmp_path / f"{bs}",
                per_device_train_batch_size=bs,
                gradient_accumulation_steps=ga,
                max_steps=2,
            ),
            train_dataset=ds,
        )
        trainer.train()
        finals.append({k: v.clone() for k, v in trainer.model.classifier.state_dict().items()})
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], atol=1e-6, rtol=1e-5, msg=k)


def test_remove_unused_columns_is_handled(tmp_path):
    model, _ = make_model("hf_resnet")
    trainer = AdAutoMixTrainer(model=model, args=targs(tmp_path, remove_unused_columns=True))
    assert trainer.args.remove_unused_columns is False
    assert trainer.args.label_names == ["labels"]


def test_raw_image_dataset_gets_default_transforms(tmp_path):
    from hf_adautomix.data import load_digits_dataset

    train, val = load_digits_dataset()
    model, _ = make_model("hf_resnet", num_labels=10)
    trainer = AdAutoMixTrainer(
        model=model,
        args=targs(tmp_path),
        train_dataset=train.select(range(16)),
        eval_dataset=val.select(range(8)),
    )
    assert trainer.transform_info.recipe == "cifar" and trainer.transform_info.size == 32
    assert trainer.train_dataset[0]["pixel_values"].shape == (3, 32, 32)
    trainer.train()
    assert "eval_accuracy" in trainer.evaluate()


def test_evaluate_reports_online_and_ema_and_exports_teacher(tmp_path):
    model, _ = make_model("hf_resnet")
    trainer = AdAutoMixTrainer(
        model=model,
        args=targs(tmp_path),
        mixup_args=MixupArguments(mixup="none", ema=True),
        train_dataset=tensor_dataset(),
        eval_dataset=tensor_dataset(8),
    )
    trainer.train()
    metrics = trainer.evaluate()
    for key in ("eval_accuracy", "eval_ema_accuracy", "eval_top5_accuracy", "eval_ema_nll", "eval_ema_ece"):
        assert key in metrics
    assert int(trainer.model.step) == 2
    out = trainer.export_model(str(tmp_path / "export"))
    from transformers import AutoModelForImageClassification

    loaded = wrap_classifier(AutoModelForImageClassification.from_pretrained(out)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trainer.model.teacher.eval()(x))
        assert not torch.allclose(loaded(x), trainer.model.classifier.eval()(x))


def test_generator_param_group_and_own_schedule(tmp_path):
    model, _ = make_model("hf_resnet")
    mix = MixupArguments(
        mixup="adautomix",
        generator_lr=0.2,
        generator_weight_decay=0.0,
        generator_min_lr=0.02,
        save_mix_every=0,
    )
    trainer = AdAutoMixTrainer(
        model=model,
        args=targs(tmp_path, max_steps=4, lr_scheduler_type="linear"),
        mixup_args=mix,
        train_dataset=tensor_dataset(),
    )
    trainer.train()
    group = trainer.optimizer.param_groups[trainer._generator_group]
    gen_ids = {id(p) for p in trainer.model.mixer.generator.parameters()}
    assert {id(p) for p in group["params"]} == gen_ids
    other = [p for g in trainer.optimizer.param_groups[:-1] for p in g["params"]]
    assert not gen_ids & {id(p) for p in other}
    assert group["weight_decay"] == 0.0
    assert group["lr"] == pytest.approx(0.02)  # cosine reaches its floor at the last step
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # the main linear schedule ends at 0
    logged = [h for h in trainer.state.log_history if "train_loss_teacher" in h]
    assert logged and {"ema_momentum", "generator_lr", "train_n_mix", "train_mask_entropy"} <= set(logged[0])
    assert list((tmp_path / "mixed_samples").glob("*.png"))  # grid at the end


@pytest.mark.parametrize("mixup", ["adautomix", "automix"])
def test_resume_is_exact(mixup, tmp_path):
    """k steps + resume + k steps == 2k uninterrupted steps, bitwise, on CPU."""
    ds = tensor_dataset(24)
    mix = MixupArguments(mixup=mixup, save_mix_every=0)

    def run(out, max_steps, resume=None):
        model, _ = make_model("hf_resnet")
        trainer = AdAutoMixTrainer(
            model=model,
            mixup_args=mix,
            train_dataset=ds,
            args=targs(
                out,
                max_steps=max_steps,
                save_strategy="steps",
                save_steps=2,
                optim="adamw_torch",
                lr_scheduler_type="cosine",
            ),
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model.state_dict()

    full = run(tmp_path / "full", 4)  # saves checkpoint-2 on the way
    resumed = run(tmp_path / "resumed", 4, resume=str(tmp_path / "full" / "checkpoint-2"))
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    assert int(resumed["_extra_state"]) == 4  # MixupModel.step, checkpointed as extra state


# checkpoint-2/model.safetensors of `test_resume_is_exact[adautomix]`'s full run, written by the code before the step
# counter became extra state (commit f97ed37): the counter is a `step` buffer there.
PRE_EXTRA_STATE = Path(__file__).parent / "data" / "pre_refactor_adautomix_checkpoint-2.safetensors"


def test_checkpoint_with_a_step_buffer_resumes(tmp_path):
    """A checkpoint written before `MixupModel.step` became a host int (extra state) resumes exactly: its `step`
    buffer is read as the step count (AdAutoMix's alternation and the EMA momentum depend on it)."""
    from safetensors.torch import load_file, save_file

    from hf_adautomix.checkpoints import mark_complete

    old = load_file(str(PRE_EXTRA_STATE))
    assert "step" in old and "_extra_state" not in old and int(old["step"]) == 2

    def run(out, resume=None):
        model, _ = make_model("hf_resnet")
        trainer = AdAutoMixTrainer(
            model=model,
            mixup_args=MixupArguments(mixup="adautomix", save_mix_every=0),
            train_dataset=tensor_dataset(24),
            args=targs(
                out,
                max_steps=4,
                save_strategy="steps",
                save_steps=2,
                optim="adamw_torch",
                lr_scheduler_type="cosine",
            ),
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model

    full = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoint-2"
    # This run's checkpoint-2 rewritten in the old format: the keys of the file written before the change exactly
    # (no `_extra_state`, a `step` buffer), the weights of this run.
    weights = load_file(str(checkpoint / "model.safetensors"))
    weights = {k: v for k, v in weights.items() if not k.endswith("_extra_state")}
    weights["step"] = torch.tensor(2, dtype=old["step"].dtype)
    assert set(weights) == set(old)
    save_file(weights, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    mark_complete(str(checkpoint))  # the completion marker lists the file sizes and hashes
    resumed = run(tmp_path / "resumed", resume=str(checkpoint))
    assert resumed.step == 4
    expected = full.state_dict()
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, expected[k]), k
    # strict loading of the old key alone, outside Trainer
    fresh = AdAutoMixTrainer(
        model=make_model("hf_resnet")[0],
        args=targs(tmp_path / "fresh"),
        mixup_args=MixupArguments(mixup="adautomix"),
    ).model
    fresh.load_state_dict(old, strict=True)
    assert fresh.step == 2


def test_mixup_model_rejects_training_without_labels():
    model, _ = make_model("hf_resnet")
    with pytest.raises(ValueError, match="labels"):
        MixupModel(model).train()(torch.randn(2, 3, 32, 32))


def test_torch_compile_and_channels_last(tmp_path):
    """`--torch_compile` (Trainer compiles the whole wrapper) and `--channels_last` train AdAutoMix; channels-last
    gives the same first-step loss as contiguous memory. The compile uses the `aot_eager` backend: dynamo's tracing
    (graph breaks, guards) and AOT autograd of our wrapper are what is tested; inductor's C++ code generation would
    add about a minute on 2 cores and tests torch, not us."""
    losses = {}
    for name, kw, mix_kw in (
        ("plain", {}, {}),
        ("channels_last", {}, {"channels_last": True}),
        ("compiled", {"torch_compile": True, "torch_compile_backend": "aot_eager"}, {}),
    ):
        model, _ = make_model("hf_resnet")
        trainer = AdAutoMixTrainer(
            model=model,
            args=targs(tmp_path / name, max_steps=2, **kw),
            mixup_args=MixupArguments(mixup="adautomix", save_mix_every=0, **mix_kw),
            train_dataset=tensor_dataset(),
            eval_dataset=tensor_dataset(8),
        )
        trainer.train()
        losses[name] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert "eval_ema_loss" in trainer.evaluate()
    assert losses["channels_last"][0] == pytest.approx(losses["plain"][0], rel=1e-4)
    assert losses["compiled"][0] == pytest.approx(losses["plain"][0], rel=1e-3)


def test_push_to_hub_uploads_the_native_model_and_our_card(tmp_path):
    """Offline push (hf-ecosystem §8.4): the uploaded folder is the exported native model + processor + our card."""
    from unittest import mock

    from conftest import fake_hub_api

    hub = tmp_path / "hub"

    model, _ = make_model("hf_resnet")
    with mock.patch("transformers.trainer.hf_api", return_value=fake_hub_api(hub)):
        trainer = AdAutoMixTrainer(
            model=model,
            args=targs(tmp_path / "out", push_to_hub=True, hub_model_id="me/tiny-ada"),
            mixup_args=MixupArguments(mixup="adautomix", save_mix_every=0),
            train_dataset=tensor_dataset(),
            eval_dataset=tensor_dataset(8),
        )
        trainer.train()
        trainer.evaluate()
        trainer.push_to_hub(dataset="tiny", finetuned_from=None)
    pushed = hub / "me/tiny-ada"
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in pushed.iterdir()}
    card = (pushed / "README.md").read_text()
    assert "EMA teacher" in card and "adautomix" in card and "eval_ema" not in card
    from safetensors.torch import load_file

    keys = load_file(str(pushed / "model.safetensors")).keys()
    assert not any(k.startswith(("generator", "mixer", "teacher")) for k in keys)


def test_resume_from_another_mixers_checkpoint_is_one_line_in_the_api(tmp_path):
    # Issue 17, 10 (the Python API; the CLI names the mixer from the run record): was Trainer's
    # `AttributeError: 'MixupModel' object has no attribute '_keys_to_ignore_on_save'`.
    model, size = make_model("hf_resnet")
    data = tensor_dataset(size=size)
    save = dict(save_strategy="steps", save_steps=2)
    AdAutoMixTrainer(
        model=model,
        args=targs(tmp_path, **save),
        mixup_args=MixupArguments(mixup="cutmix"),
        train_dataset=data,
    ).train()
    model, _ = make_model("hf_resnet")
    trainer = AdAutoMixTrainer(
        model=model,
        args=targs(tmp_path / "ada"),
        train_dataset=data,
        mixup_args=MixupArguments(mixup="adautomix"),
    )
    with pytest.raises(
        ValueError, match=r"checkpoint-2: its weights are not this model's .*only here: \[.*mixer"
    ):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert trainer.state.global_step == 0


def test_no_pin_memory_warning_on_cpu(tmp_path):
    # Issue 17, 27: every CPU run printed torch's "'pin_memory' argument is set as true but no accelerator".
    import warnings

    model, size = make_model("hf_resnet")
    args = targs(tmp_path, use_cpu=False)  # use_cpu=True turns pinning off itself; a CPU-only machine does not
    trainer = AdAutoMixTrainer(model=model, args=args, train_dataset=tensor_dataset(size=size))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
        trainer.evaluate(tensor_dataset(n=8, size=size))
    assert not [w for w in caught if "pin_memory" in str(w.message)]
    assert trainer.args.dataloader_pin_memory is (trainer.args.device.type not in ("cpu", "mps"))
