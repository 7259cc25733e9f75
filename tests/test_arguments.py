"""Argument handling of examples/run_image_classification.py and the argument dataclasses: config files with
command-line overrides, one-line errors for bad choices, flags the chosen method ignores, generator LR checks,
reporter packages, recipe defaults."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
import yaml

from hf_adautomix import MixupArguments, ModelArguments

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "run_image_classification.py"
RECIPES = sorted((ROOT / "examples" / "configs").glob("*.yaml"))
CPU = ["--use_cpu", "True", "--bf16", "False"]  # the GPU recipes, parsed on a CPU machine


@pytest.fixture(scope="module")
def parse_args():
    spec = importlib.util.spec_from_file_location("run_image_classification", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args


def write_config(tmp_path, values: dict, suffix: str = ".yaml") -> str:
    path = tmp_path / f"cfg{suffix}"
    path.write_text(json.dumps(values) if suffix == ".json" else yaml.safe_dump(values, sort_keys=False))
    return str(path)


def as_dict(parsed) -> dict:
    return {k: v for obj in parsed for k, v in vars(obj).items()}


class TestConfigFile:
    @pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
    def test_recipe_with_overrides(self, parse_args, recipe):
        values = yaml.safe_load(recipe.read_text())
        parsed = as_dict(parse_args([str(recipe), "--max_steps", "1", *CPU]))
        assert parsed["max_steps"] == 1 and parsed["bf16"] is False
        for key, value in values.items():
            if key != "bf16":
                assert parsed[key] == value, key
        assert values.get("report_to", "none") != "tensorboard" and parsed["report_to"] == []
        # Only the Swin recipe clips gradients, as the released AdAutoMix.
        assert parsed["max_grad_norm"] == (10.0 if "swin" in recipe.stem else 0)

    @pytest.mark.parametrize("suffix", [".yaml", ".json"])
    def test_command_line_wins_over_file_and_file_over_script_defaults(self, parse_args, tmp_path, suffix):
        cfg = write_config(tmp_path, {"mixup": "cutmix", "learning_rate": 0.5, "num_train_epochs": 3}, suffix)
        parsed = as_dict(parse_args([cfg, "--learning_rate", "0.2"]))
        assert parsed["learning_rate"] == 0.2  # command line
        assert parsed["mixup"] == "cutmix" and parsed["num_train_epochs"] == 3  # file
        assert parsed["weight_decay"] == 5e-4 and parsed["max_grad_norm"] == 0  # script defaults

    def test_single_file_form(self, parse_args, tmp_path):
        cfg = write_config(tmp_path, {"mixup": "automix", "max_steps": 2})
        _, _, mix, train = parse_args([cfg])
        assert mix.mixup == "automix" and train.max_steps == 2

    def test_unknown_keys_are_named(self, parse_args, tmp_path):
        cfg = write_config(tmp_path, {"mixup": "mixup", "mix_alhpa": 0.2, "bogus_key": 1})
        with pytest.raises(
            ValueError, match=r"unknown argument names mix_alhpa \(did you mean mix_alpha\?\), bogus_key"
        ):
            parse_args([cfg])

    def test_not_a_mapping(self, parse_args, tmp_path):
        path = tmp_path / "cfg.yaml"
        path.write_text("- mixup\n- cutmix\n")
        with pytest.raises(ValueError, match="must map argument names to values"):
            parse_args([str(path)])

    def test_bad_choice_in_file_is_one_line(self, parse_args, tmp_path):
        cfg = write_config(tmp_path, {"mixup": "mixupp"})
        with pytest.raises(
            ValueError, match=r"--mixup 'mixupp' is not a known method; did you mean 'mixup'\?"
        ):
            parse_args([cfg])


class TestBadChoice:
    def test_argparse_choice_error_is_one_line(self, parse_args, capsys):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(["--mixup", "mixupp"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(
            "error: --mixup 'mixupp' is not a known method; did you mean 'mixup'? (choices: none,"
        )
        assert err.count("\n") == 1 and "usage" not in err

    def test_long_choice_lists_are_not_printed(self, parse_args, capsys):
        with pytest.raises(SystemExit):
            parse_args(["--optim", "adamw"])
        err = capsys.readouterr().err
        assert "did you mean 'adamw_torch'?" in err and "choices, see --help" in err and len(err) < 200

    def test_model_type_typo(self, parse_args):
        with pytest.raises(ValueError, match=r"--model_type 'resnett' .* did you mean 'resnet'") as info:
            parse_args(["--model_type", "resnett"])
        assert len(str(info.value)) < 300

    def test_model_type_without_image_classification_model(self):
        with pytest.raises(
            ValueError, match=r"'bert' is not a transformers architecture with an image-classif"
        ):
            ModelArguments(model_type="bert")

    @pytest.mark.parametrize("model_type", ["resnet", "convnext", "swin", "cifar_resnet"])
    def test_model_type_ok(self, model_type):
        assert ModelArguments(model_type=model_type).model_type == model_type

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"mixup": "cutmx"}, r"--mixup 'cutmx' is not a known method; did you mean 'cutmix'\?"),
            ({"timm_mode": "bach"}, r"--timm_mode 'bach' is not a known choice; did you mean 'batch'\?"),
            (
                {"export_model": "best"},
                r"--export_model 'best' is not a known choice \(choices: auto, ema, online\)",
            ),
        ],
    )
    def test_literal_fields_checked_in_python_api(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            MixupArguments(**kwargs)


def run_script(args, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    cmd = [sys.executable, str(SCRIPT), *args, "--output_dir", str(tmp_path / "out")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize(
    "args, code",
    [
        (["--mixup", "mixupp"], 2),
        (["--model_type", "resnett"], 1),
        (["--timm_mode", "pari", "--mixup", "timm"], 2),
    ],
    ids=["mixup", "model_type", "timm_mode"],
)
def test_script_bad_choice_is_one_short_line(tmp_path, args, code):
    proc = run_script(args, tmp_path)
    assert proc.returncode == code
    assert len(proc.stderr) < 400 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: {args[0]} '{args[1]}'") and "did you mean" in proc.stderr


class TestIgnoredFlags:
    @pytest.mark.parametrize("mixup", ["adautomix", "automix", "none"])
    def test_mix_prob_without_effect(self, mixup):
        with pytest.raises(ValueError, match=f"--mix_prob 0.5 has no effect with --mixup {mixup}"):
            MixupArguments(mixup=mixup, mix_prob=0.5)

    @pytest.mark.parametrize("mixup", ["cutmix", "timm"])
    def test_mix_prob_with_effect(self, mixup):
        assert MixupArguments(mixup=mixup, mix_prob=0.5).mix_prob == 0.5

    def test_timm_flags_only_with_timm(self):
        with pytest.raises(
            ValueError, match="--timm_mixup_alpha, --timm_mode only apply to --mixup timm, not --mixup mixup"
        ):
            MixupArguments(mixup="mixup", timm_mixup_alpha=0.2, timm_mode="pair")
        assert MixupArguments(mixup="timm", timm_mixup_alpha=0.2).timm_mixup_alpha == 0.2

    @pytest.mark.parametrize(
        "kwargs, ignored",
        [
            ({"mixup": "cutmix", "generator_lr": 0.1, "lam_concat": True}, "--generator_lr, --lam_concat"),
            ({"mixup": "automix", "mix_num": 4, "adv_weight": 0.1}, "--adv_weight, --mix_num"),
            ({"mixup": "adautomix", "mask_loss_weight": 0.2}, "--mask_loss_weight"),
            ({"mixup": "none", "mix_alpha": 0.4, "save_mix_every": 0}, "--mix_alpha, --save_mix_every"),
            ({"mixup": "timm", "teacher_ref_passes": "separate"}, "--teacher_ref_passes"),
        ],
    )
    def test_ignored_flags_warn(self, caplog, kwargs, ignored):
        with caplog.at_level(logging.WARNING, logger="hf_adautomix.arguments"):
            MixupArguments(**kwargs)
        assert f"--mixup {kwargs['mixup']} ignores {ignored}." in caplog.text

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"mixup": "adautomix", "mix_num": 4, "generator_lr": 0.1, "adautomix_variant": "paper"},
            {"mixup": "automix", "mask_loss_weight": 0.2, "lam_concat": True},
            {"mixup": "cutmix", "mix_alpha": 0.5, "mix_prob": 0.5},
        ],
    )
    def test_used_flags_do_not_warn(self, caplog, kwargs):
        with caplog.at_level(logging.WARNING, logger="hf_adautomix.arguments"):
            MixupArguments(**kwargs)
        assert "ignores" not in caplog.text

    def test_recipe_switched_to_a_baseline_warns(self, parse_args, caplog):
        recipe = ROOT / "examples" / "configs" / "cifar100_r18_adautomix.yaml"
        with caplog.at_level(logging.WARNING, logger="hf_adautomix.arguments"):
            _, _, mix, _ = parse_args([str(recipe), "--mixup", "cutmix", *CPU])
        assert mix.mixup == "cutmix"
        assert "--mixup cutmix ignores --lam_margin, --mask_upsample." in caplog.text

    def test_save_steps_without_saving(self, parse_args):
        with pytest.raises(ValueError, match="--save_steps 10 has no effect with --save_strategy no"):
            parse_args(["--save_steps", "10"])
        assert parse_args(["--save_steps", "10", "--save_strategy", "steps"])[3].save_steps == 10


class TestGeneratorLR:
    @pytest.mark.parametrize("name", ["generator_lr", "generator_weight_decay", "generator_min_lr"])
    def test_negative(self, name):
        with pytest.raises(ValueError, match=f"--{name} must be >= 0, got -0.1"):
            MixupArguments(mixup="adautomix", **{name: -0.1})

    def test_floor_above_lr(self):
        with pytest.raises(ValueError, match="--generator_min_lr 0.2 is above --generator_lr 0.1"):
            MixupArguments(mixup="adautomix", generator_lr=0.1, generator_min_lr=0.2)

    def test_floor_above_main_lr_when_generator_lr_not_given(self, parse_args):
        with pytest.raises(
            ValueError, match=r"--generator_min_lr 0.5 is above the generator's LR \(--learning_rate 0.1"
        ):
            parse_args(["--mixup", "adautomix", "--generator_min_lr", "0.5"])

    def test_zero_freezes_and_is_legal(self, parse_args):
        _, _, mix, _ = parse_args(["--mixup", "adautomix", "--generator_lr", "0", "--generator_min_lr", "0"])
        assert mix.generator_lr == 0 and mix.generator_min_lr == 0


class TestReportTo:
    def test_missing_package_is_one_line(self, parse_args, monkeypatch):
        monkeypatch.setattr(transformers.integrations, "is_tensorboard_available", lambda: False)
        with pytest.raises(
            ValueError,
            match=r"^--report_to tensorboard needs a package that is not installed: pip install tensorboard$",
        ):
            parse_args(["--report_to", "tensorboard"])

    def test_installed_package_passes(self, parse_args, monkeypatch):
        monkeypatch.setattr(transformers.integrations, "is_wandb_available", lambda: True)
        assert parse_args(["--report_to", "wandb"])[3].report_to == ["wandb"]

    def test_default_reports_nowhere_and_does_not_clip(self, parse_args):
        train = parse_args([])[3]
        assert train.report_to == [] and train.max_grad_norm == 0


class TestIssue17FlagErrors:
    """Issue 17 (7, 11, 12, 24): flags that crashed mid-run or trained nothing fail at once in one line."""

    @pytest.mark.parametrize(
        "args, named",
        [
            (
                ["--gradient_accumulation_steps", "0"],
                "--gradient_accumulation_steps 0",
            ),  # was ZeroDivisionError
            (
                ["--per_device_train_batch_size", "1"],
                "--per_device_train_batch_size 1",
            ),  # was PyTorch's BN error
            (
                ["--lr_scheduler_kwargs", "{min_lr: 0.1"],
                "--lr_scheduler_kwargs '{min_lr: 0.1'",
            ),  # bare JSON error
            (["--num_train_epochs", "0"], "--num_train_epochs 0 with --max_steps -1"),  # exited 0, untrained
            (["--num_train_epochs", "0", "--max_steps", "0"], "--max_steps 0"),
        ],
        ids=["grad-accum-0", "batch-1", "scheduler-kwargs", "epochs-0", "epochs-0-steps-0"],
    )
    def test_one_line_naming_the_flag(self, tmp_path, args, named):
        proc = run_script([*args, "--use_cpu", "True"], tmp_path)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr[-2000:]
        assert named in proc.stderr
        assert not (tmp_path / "out").exists()

    def test_yaml_syntax_error_names_file_and_line(self, tmp_path):
        config = tmp_path / "recipe.yaml"
        config.write_text("mixup: cutmix\nlearning_rate: [0.1\n")  # was a 48-line yaml.scanner traceback
        proc = run_script([str(config), "--use_cpu", "True"], tmp_path)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
        assert proc.stderr.startswith(f"error: {config}: not valid YAML at line ")

    def test_bf16_without_a_gpu_trains_on_the_cpu(self, tmp_path):
        # Was: "error: Your setup doesn't support bf16/gpu. You need to assign use_cpu ...".
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
        args = ["--bf16", "True", "--model_type", "resnet", "--cifar_stem", "--config_overrides", TINY]
        args += ["--max_steps", "1", "--max_train_samples", "32", "--max_eval_samples", "16"]
        cmd = [sys.executable, str(SCRIPT), *args, "--output_dir", str(tmp_path / "out")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "training on the CPU in bf16 (--use_cpu True)" in proc.stderr
        assert (tmp_path / "out" / "model.safetensors").exists()


TINY = "embedding_size=8,hidden_sizes=[8,8,16,16],depths=[1,1,1,1],layer_type=basic"


class TestIssue17API:
    def test_mixup_arguments_as_a_string_is_a_type_error(self, tmp_path):
        from transformers import ResNetConfig, ResNetForImageClassification, TrainingArguments

        from hf_adautomix import AdAutoMixTrainer

        model = ResNetForImageClassification(
            ResNetConfig(num_labels=2, embedding_size=8, hidden_sizes=[8, 8])
        )
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
        with pytest.raises(
            TypeError, match=r'must be a MixupArguments \(MixupArguments\(mixup="adautomix"\)\)'
        ):
            AdAutoMixTrainer(model=model, args=args, mixup_args="adautomix")

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"num_train_epochs": 0}, "--num_train_epochs 0 with --max_steps -1 makes no optimizer step"),
            ({"num_train_epochs": 0, "max_steps": 0}, "--max_steps 0 makes no optimizer step"),
            ({"gradient_accumulation_steps": 0}, "--gradient_accumulation_steps 0 must be 1 or more"),
        ],
    )
    def test_train_with_no_optimizer_step_is_refused(self, tmp_path, kwargs, match):
        # The Python API too (was: exit 0 and an untrained export, or a ZeroDivisionError), before any training.
        import torch
        from torch.utils.data import TensorDataset
        from transformers import ResNetConfig, ResNetForImageClassification, TrainingArguments

        from hf_adautomix import AdAutoMixTrainer

        model = ResNetForImageClassification(
            ResNetConfig(num_labels=2, embedding_size=8, hidden_sizes=[8, 8])
        )
        data = TensorDataset(torch.randn(8, 3, 8, 8), torch.tensor([0, 1] * 4))
        values = {"num_train_epochs": 3, "max_steps": -1, **kwargs}
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **values)
        trainer = AdAutoMixTrainer(model=model, args=args, train_dataset=data)
        with pytest.raises(ValueError, match=match):
            trainer.train()
        assert trainer.state.global_step == 0 and not any(tmp_path.iterdir())
