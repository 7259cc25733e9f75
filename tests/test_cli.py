"""examples/run_image_classification.py end to end: embedded default, accelerate launch, config files, every
model family with the learned mixers, bad input."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAMILIES, TINY_RESNET

from hf_adautomix.mixers import CLASSIC_MIXERS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "run_image_classification.py"
TINY_RESNET_ARGS = ["--model_type", "resnet", "--cifar_stem", "--config_overrides", TINY_RESNET]
FAST = [
    "--max_train_samples",
    "64",
    "--max_eval_samples",
    "32",
    "--per_device_train_batch_size",
    "16",
    "--max_steps",
    "2",
    "--logging_steps",
    "1",
    "--disable_tqdm",
    "True",
    "--use_cpu",
    "True",
    "--eval_strategy",
    "no",
    "--save_mix_every",
    "0",
]


def load_script():
    spec = importlib.util.spec_from_file_location("run_image_classification", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_subprocess(args, tmp_path, launcher=(sys.executable,), timeout=300):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.run(
        [*launcher, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    return proc


def test_embedded_default_end_to_end_and_pipeline_loads(tmp_path):
    out = tmp_path / "out"
    proc = run_subprocess(
        [
            "--output_dir",
            str(out),
            "--num_train_epochs",
            "1",
            "--max_train_samples",
            "256",
            "--disable_tqdm",
            "True",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "embedded default" in proc.stdout + proc.stderr
    results = json.loads((out / "all_results.json").read_text())
    assert {"eval_accuracy", "eval_top5_accuracy", "eval_nll", "eval_ece", "train_loss"} <= set(results)
    assert (out / "README.md").exists() and (out / "trainer_state.json").exists()

    from transformers import pipeline

    from hf_adautomix.data import load_digits_dataset

    _, val = load_digits_dataset()
    classifier = pipeline("image-classification", model=str(out))
    preds = classifier([val[i]["image"] for i in range(4)])
    assert all(p[0]["label"] in [str(i) for i in range(10)] for p in preds)


def test_accelerate_launch_mixup_none(tmp_path):
    proc = run_subprocess(
        ["--mixup", "none", "--output_dir", str(tmp_path / "out"), *FAST],
        tmp_path,
        launcher=("accelerate", "launch", "--num_processes", "1", "--cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "config.json").exists()


def test_yaml_config_file(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"output_dir: {tmp_path / 'out'}\nmixup: automix\nmax_steps: 2\nmax_train_samples: 32\n"
        "max_eval_samples: 16\nper_device_train_batch_size: 8\nuse_cpu: true\neval_strategy: 'no'\n"
        f"model_type: resnet\ncifar_stem: true\nconfig_overrides: '{TINY_RESNET}'\nsave_mix_every: 0\n"
    )
    metrics = load_script().main([str(cfg)])
    assert "eval_ema_accuracy" in metrics
    assert (tmp_path / "out" / "mixed_samples").is_dir()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_adautomix_every_family(family, tmp_path):
    kwargs, size = FAMILIES[family]
    args = ["--mixup", "adautomix", "--output_dir", str(tmp_path / "out"), *FAST]
    for key, value in kwargs.items():
        if key == "image_size":
            args += ["--image_size", str(value)]
        elif value is True:
            args.append(f"--{key}")
        else:
            args += [f"--{key}", str(value)]
    metrics = load_script().main(args)
    assert metrics["train_loss"] == metrics["train_loss"]  # not NaN
    assert "eval_ema_accuracy" in metrics and "eval_accuracy" in metrics
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "generator" not in (tmp_path / "out" / "config.json").read_text()
    assert config.get("num_labels", config.get("num_classes")) == 10 or len(config.get("id2label", {})) == 10


@pytest.mark.parametrize("variant", ["released", "paper"])
def test_adautomix_variants_and_random_n(variant, tmp_path):
    metrics = load_script().main(
        [
            "--mixup",
            "adautomix",
            "--adautomix_variant",
            variant,
            "--mix_num",
            "4",
            "--mix_num_random",
            "--lam_concat",
            *TINY_RESNET_ARGS,
            "--output_dir",
            str(tmp_path / "o"),
            *FAST,
        ]
    )
    assert "eval_ema_accuracy" in metrics


class TestBadInput:
    def test_unknown_mixup_exits_2(self, tmp_path):
        proc = run_subprocess(["--mixup", "bogus", "--output_dir", str(tmp_path)], tmp_path)
        assert (
            proc.returncode == 2
            and "--mixup 'bogus' is not a known method" in proc.stderr
            and len(proc.stderr) < 400
        )

    def test_missing_train_dir_is_one_paragraph(self, tmp_path):
        with pytest.raises((ValueError, FileNotFoundError), match="does-not-exist"):
            load_script().main(
                ["--train_dir", str(tmp_path / "does-not-exist"), "--output_dir", str(tmp_path)]
            )

    def test_learned_mixer_needs_ema(self, tmp_path):
        with pytest.raises(ValueError, match="needs its EMA teacher"):
            load_script().main(["--mixup", "adautomix", "--ema", "False", "--output_dir", str(tmp_path)])

    def test_bad_mix_layer_names_the_flag(self, tmp_path):
        with pytest.raises(ValueError, match="--mix_layer"):
            load_script().main(
                ["--mixup", "adautomix", "--mix_layer", "9", "--output_dir", str(tmp_path), *FAST]
            )


@pytest.mark.parametrize(
    "config", sorted((ROOT / "examples" / "configs").glob("*.yaml")), ids=lambda p: p.stem
)
def test_recipe_configs_parse(config):
    import yaml
    from transformers import HfArgumentParser, TrainingArguments

    from hf_adautomix import DataTrainingArguments, MixupArguments, ModelArguments

    values = yaml.safe_load(config.read_text())
    values.update(bf16=False, use_cpu=True)  # GPU recipes; parsing is what is checked here
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, MixupArguments, TrainingArguments))
    _, _, mix, train = parser.parse_dict(values)
    assert mix.mixup == "adautomix" and mix.ema and not mix.ema_warmup


@pytest.mark.parametrize("mixup", sorted(CLASSIC_MIXERS))
def test_every_classic_mixer_trains(mixup, tmp_path):
    metrics = load_script().main(
        [
            "--mixup",
            mixup,
            *TINY_RESNET_ARGS,
            "--output_dir",
            str(tmp_path / "o"),
            *FAST,
        ]
    )
    assert metrics["train_loss"] == metrics["train_loss"] and "eval_accuracy" in metrics


def test_bad_input_from_the_command_line_is_one_paragraph(tmp_path):
    proc = run_subprocess(
        ["--train_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")], tmp_path
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "nowhere" in last


@pytest.mark.parametrize("family", ["hf_resnet", "timm_convnext"])
def test_model_name_or_path_local_folder(family, tmp_path):
    """A transformers folder or a timm-format folder (e.g. a previous run's export) is fine-tuned offline; a
    different number of labels gets a new head."""
    from conftest import make_model

    from hf_adautomix.backbones import wrap_classifier

    model, _ = make_model(family, num_labels=3)
    wrap_classifier(model).save_native(str(tmp_path / "pretrained"), label_names=["a", "b", "c"])
    metrics = load_script().main(
        [
            "--model_name_or_path",
            str(tmp_path / "pretrained"),
            "--mixup",
            "cutmix",
            "--output_dir",
            str(tmp_path / "o"),
            *FAST,
        ]
    )
    assert "eval_accuracy" in metrics
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert len(config.get("id2label") or config.get("label_names")) == 10


def test_timm_pretrained_offline_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Could not load model 'resnet18'.*HF_HUB_OFFLINE"):
        load_script().main(["--timm_model", "resnet18", "--pretrained", "--output_dir", str(tmp_path), *FAST])
