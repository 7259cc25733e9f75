#!/usr/bin/env python
"""Train an image classifier with AdAutoMix, AutoMix or a classic mixup method, on the Hugging Face stack.

Follows transformers' `examples/pytorch/image-classification/run_image_classification.py` (same argument names,
same end sequence), plus a `MixupArguments` group. Runs on one device, with `accelerate launch` / `torchrun` on
several, or on a laptop CPU. With no data argument it trains on the embedded default (scikit-learn's digits):

    python examples/run_image_classification.py --output_dir out
    accelerate launch examples/run_image_classification.py --mixup adautomix --output_dir out
    python examples/run_image_classification.py examples/configs/cifar100_r18_adautomix.yaml

It trains, exports and evaluates; `--do_train False` evaluates `--model_name_or_path` only (no training, no export).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import sys

import datasets
import torch
import transformers
import yaml
from transformers import HfArgumentParser, TrainingArguments, set_seed

from hf_adautomix import AdAutoMixTrainer, DataTrainingArguments, MixupArguments, ModelArguments
from hf_adautomix.arguments import bad_choice_message
from hf_adautomix.backbones import build_model, wrap_classifier
from hf_adautomix.data import (
    apply_transforms,
    check_images,
    error_summary,
    load_image_datasets,
    resolve_transforms,
)
from hf_adautomix.optim import check_step_counts
from hf_adautomix.run_folder import (
    check_output_dir,
    finished_results,
    lock_output_dir,
    resolve_resume,
    run_record,
)
from hf_adautomix.smoke import smoke_argv
from hf_adautomix.trainer import NonFiniteError

logger = logging.getLogger(__name__)

# Defaults of this script that differ from TrainingArguments' own (a user's flag or config file still wins).
SCRIPT_DEFAULTS = {
    "output_dir": "outputs/run_image_classification",
    "learning_rate": 0.1,
    "weight_decay": 5e-4,
    "optim": "sgd",
    "optim_args": "momentum=0.9,nesterov=True",
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "num_train_epochs": 15,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": 20,
    "report_to": "none",
    # No gradient clipping (Trainer's default clips at 1.0): the released AdAutoMix clips only its ViT/Swin runs
    # (global norm 10), never the CNNs (reference/adautomix-algorithm.md §2.4 and §6).
    "max_grad_norm": 0.0,
}


# HF_ADAUTOMIX_SMOKE=1 (tests/test_docs.py runs the docs' commands): two steps of 8 images (one epoch, so the epoch's
# evaluation runs too), 16 evaluation images; with fewer GPUs than this machine's processes (none on a CPU machine)
# also --use_cpu, so that the docs' GPU launch lines (`accelerate launch --multi_gpu`, `torchrun`) run as CPU
# processes over gloo.
SMOKE_CAPS = [
    "--max_steps", "2", "--max_train_samples", "16", "--per_device_train_batch_size", "8",
    "--max_eval_samples", "16", "--per_device_eval_batch_size", "16", "--dataloader_num_workers", "0",
    *(["--use_cpu", "True"] if torch.cuda.device_count() < int(os.environ.get("LOCAL_WORLD_SIZE", "1")) else []),
]  # fmt: skip

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")

# --report_to integrations that need a package hf_adautomix does not install: transformers' check, what to install.
REPORTER_PACKAGES = {
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "wandb": ("is_wandb_available", "wandb"),
    "mlflow": ("is_mlflow_available", "mlflow"),
    "trackio": ("is_trackio_available", "trackio"),
    "comet_ml": ("is_comet_available", "comet-ml (and set COMET_API_KEY)"),
    "neptune": ("is_neptune_available", "neptune"),
    "clearml": ("is_clearml_available", "clearml"),
    "codecarbon": ("is_codecarbon_available", "codecarbon"),
    "dagshub": ("is_dagshub_available", "dagshub mlflow"),
    "dvclive": ("is_dvclive_available", "dvclive"),
    "swanlab": ("is_swanlab_available", "swanlab"),
    "azure_ml": ("is_azureml_available", "azureml-core"),
    "flyte": ("is_flyte_deck_standard_available", "flytekit flytekitplugins-deck-standard"),
}


def parse_args(argv: list[str]):
    """`[CONFIG.yaml|json] [--flag value ...]`, like timm's `train.py -c`: the config file's values replace
    SCRIPT_DEFAULTS and the dataclass defaults, then command-line flags win over the file."""
    parser = _OneLineErrorParser((ModelArguments, DataTrainingArguments, MixupArguments, TrainingArguments))
    parser.set_defaults(**SCRIPT_DEFAULTS)
    if argv and argv[0].endswith(CONFIG_SUFFIXES):
        parser.set_defaults(**_read_config(argv[0], parser))
        argv = argv[1:]
    _bf16_on_cpu(parser, argv)
    try:
        model_args, data_args, mixup_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    except json.JSONDecodeError as err:  # TrainingArguments parses --lr_scheduler_kwargs' JSON
        i = next((i for i, a in enumerate(argv) if a.startswith("--") and "_kwargs" in a.split("=")[0]), None)
        flag, _, value = (argv[i] if i is not None else "a dict flag").partition("=")
        value = value or (argv[i + 1] if i is not None and i + 1 < len(argv) else "?")
        raise ValueError(
            f"{flag} {value!r} is not valid JSON ({err}); e.g. {flag} '{{\"min_lr\": 0.1}}'."
        ) from err
    _check_training_args(mixup_args, training_args)
    return model_args, data_args, mixup_args, training_args


def _bf16_on_cpu(parser: HfArgumentParser, argv: list[str]) -> None:
    """`--bf16` without a GPU: Trainer refuses it unless `--use_cpu` is set; bf16 works on CPU, so set it."""
    namespace, _ = parser.parse_known_args(args=argv)
    if not (namespace.bf16 or namespace.bf16_full_eval) or namespace.use_cpu:
        return
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    if not (is_torch_bf16_gpu_available() or is_torch_xla_available()):
        logger.warning("--bf16 without a bf16-capable GPU: training on the CPU in bf16 (--use_cpu True).")
        parser.set_defaults(use_cpu=True)


class _OneLineErrorParser(HfArgumentParser):
    """Argument errors in one line: argparse prints the ~170-line usage first, and every choice on a bad one."""

    def _check_value(self, action, value):  # argparse's `choices` check, with difflib's "did you mean"
        if action.choices is not None and value not in action.choices:
            what = "method" if action.dest == "mixup" else "choice"
            flag = action.option_strings[0] if action.option_strings else action.dest
            raise argparse.ArgumentError(None, bad_choice_message(flag, value, action.choices, what))

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def _read_config(path: str, parser: HfArgumentParser) -> dict:
    """The argument values in a .yaml/.json file; unknown keys are an error that names them."""
    with open(path) as f:
        try:
            values = (json.load(f) if path.endswith(".json") else yaml.safe_load(f)) or {}
        except (yaml.YAMLError, json.JSONDecodeError) as err:
            where = getattr(err, "problem_mark", None)
            line = f"line {where.line + 1}" if where is not None else f"line {getattr(err, 'lineno', '?')}"
            problem = getattr(err, "problem", None) or getattr(err, "msg", None) or type(err).__name__
            raise ValueError(
                f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} at {line}: {problem}."
            ) from err
    if not isinstance(values, dict):
        raise ValueError(f"{path} must map argument names to values, not hold a {type(values).__name__}.")
    known = [f.name for cls in parser.dataclass_types for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in values if k not in known]
    if unknown:
        close = [difflib.get_close_matches(k, known, n=1) for k in unknown]
        named = [f"{k} (did you mean {m[0]}?)" if m else k for k, m in zip(unknown, close)]
        raise ValueError(f"{path}: unknown argument names {', '.join(named)}.")
    return values


def _check_training_args(mixup_args: MixupArguments, training_args: TrainingArguments) -> None:
    """Fail before training on TrainingArguments this script would otherwise ignore or crash on later."""
    for name in training_args.report_to:
        check, package = REPORTER_PACKAGES.get(name, (None, None))
        if check and not getattr(transformers.integrations, check)():
            raise ValueError(
                f"--report_to {name} needs a package that is not installed: pip install {package}"
            )
    _check_step_counts(training_args)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    if training_args.save_strategy == "no" and training_args.save_steps != defaults["save_steps"]:
        raise ValueError(
            f"--save_steps {training_args.save_steps:g} has no effect with --save_strategy no (this script's "
            "default); add --save_strategy steps."
        )
    floor, lr = mixup_args.generator_min_lr, training_args.learning_rate
    if mixup_args.learned and mixup_args.generator_lr is None and floor is not None and floor > lr:
        raise ValueError(
            f"--generator_min_lr {floor} is above the generator's LR (--learning_rate {lr}, as --generator_lr "
            "is not given)."
        )


def _check_step_counts(training_args: TrainingArguments) -> None:
    """Batch sizes and step counts that would crash in training or train nothing."""
    check_step_counts(training_args)  # also at the start of AdAutoMixTrainer.train (the Python API)
    if training_args.per_device_train_batch_size < 2:
        raise ValueError(
            f"--per_device_train_batch_size {training_args.per_device_train_batch_size} is below 2: mixup mixes "
            "pairs of images and batch normalization needs more than one value per channel; use 2 or more."
        )


def main(argv: list[str] | None = None) -> dict:
    # ----- Arguments ------------------------------------------------------------------------------------------
    argv = smoke_argv(sys.argv[1:] if argv is None else argv, SMOKE_CAPS, "run_image_classification.py")
    model_args, data_args, mixup_args, training_args = parse_args(argv)

    # ----- Logging --------------------------------------------------------------------------------------------
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    for lib_logger in (logger, logging.getLogger("hf_adautomix")):
        lib_logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.info(
        "Training %s with --mixup %s on %s",
        model_args.model_name_or_path or model_args.timm_model or model_args.model_type,
        mixup_args.mixup,
        training_args.device,
    )
    set_seed(training_args.seed)

    # ----- Data -----------------------------------------------------------------------------------------------
    image_data = load_image_datasets(
        data_args, cache_dir=model_args.cache_dir, token=model_args.token, seed=training_args.seed
    )

    # ----- Model ----------------------------------------------------------------------------------------------
    model = build_model(
        num_labels=image_data.num_labels,
        id2label=image_data.id2label,
        model_name_or_path=model_args.model_name_or_path,
        model_type=model_args.model_type,
        config_overrides=model_args.config_overrides,
        timm_model=model_args.timm_model,
        pretrained=model_args.pretrained,
        cifar_stem=model_args.cifar_stem,
        image_size=data_args.image_size,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        cache_dir=model_args.cache_dir,
        token=model_args.token,
        revision=model_args.model_revision,
    )

    # ----- Before training, everything that could fail after it: an output folder that cannot take the model,
    # checkpoints of an earlier run of this command (resume them, or refuse); a corrupt image, below -------------
    model_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    checkpointing = training_args.save_strategy != "no"
    check_output_dir(training_args.output_dir, int(model_bytes * (1.2 + 4 * checkpointing)) + 2**20)
    if training_args.process_index == 0:
        lock_output_dir(training_args.output_dir)  # a second run into it refuses, naming this one's PID
    record = run_record(model_args, data_args, mixup_args, training_args)
    explicit = training_args.resume_from_checkpoint is not None
    resume = resolve_resume(
        training_args.output_dir,
        record,
        training_args.resume_from_checkpoint,
        main_process=training_args.process_index == 0,
    )
    trains = _trains(training_args, argv)
    done = finished_results(
        training_args.output_dir,
        resume,
        training_args.max_steps,
        training_args.num_train_epochs,
        None if explicit else record,  # without checkpoints: this command's record, unless told otherwise
    )
    if trains and done is not None and not training_args.push_to_hub:  # (with it: push what is there again)
        logger.warning(
            "%s holds this command's finished run (export, model card, metrics): nothing to do, nothing changed.",
            training_args.output_dir,
        )
        return done

    # ----- Transforms: the CIFAR recipe for small images, the ImageNet recipe otherwise; the data's size unless
    # the model needs its own (ViT, Swin); a pretrained model's mean/std. The same decision as the Python API's ----
    model_data = wrap_classifier(model).data_facts(
        pretrained=bool(model_args.pretrained or model_args.model_name_or_path)
    )
    train_tf, eval_tf, info = resolve_transforms(image_data, data_args, model_data, seed=training_args.seed)
    image_data = apply_transforms(image_data, train_tf, eval_tf)
    # Small images are decoded once into memory, which names every undecodable one; other validation images are
    # decoded here, so that a corrupt one stops the run now rather than after training.
    check_images(image_data.validation, image_data.image_column, "validation")

    # ----- Trainer ----------------------------------------------------------------------------------------------
    trainer = AdAutoMixTrainer(
        model=model,
        args=training_args,
        mixup_args=mixup_args,
        train_dataset=image_data.train,
        eval_dataset=image_data.validation,
        transform_info=info,
    )

    hub_dataset = data_args.dataset_name and not os.path.isdir(os.path.expanduser(data_args.dataset_name))
    trainer.card_info = {
        "dataset": image_data.source,
        "dataset_id": data_args.dataset_name if hub_dataset else None,
        "finetuned_from": model_args.model_name_or_path,
        "license": model_args.license,
        "validation_dataset": image_data.validation_source,
    }
    wrapper = trainer.model
    logger.warning(
        "Process rank %s, device %s, world size %s, bf16 %s, fp16 %s | --mixup %s%s",
        training_args.process_index,
        training_args.device,
        training_args.world_size,
        training_args.bf16,
        training_args.fp16,
        mixup_args.mixup,
        f" | EMA teacher: {wrapper.ema_schedule.describe()}" if wrapper.teacher is not None else "",
    )

    # ----- Training (skipped by an explicit --do_train False: an evaluation-only run, no export) ---------------
    if not trains:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        return metrics
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    # ----- Export (native format, EMA weights when there is a teacher), before anything else can fail ---------
    # (not save_model(): with --push_to_hub it would push now, before the evaluation the card reports)
    trainer.export_model()
    trainer.save_generator()

    # ----- Evaluation (online eval_*, EMA eval_ema_*, mix heads eval[_ema]_mix_head_*) and model card ------------------------------
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message=f"hf_adautomix: --mixup {mixup_args.mixup}")
    elif trainer.is_world_process_zero():
        trainer.create_model_card()
    trainer.end()
    return {**train_result.metrics, **metrics}


def _trains(training_args: TrainingArguments, argv: list[str]) -> bool:
    """Train unless `--do_train False` is given: with neither flag the script trains and evaluates (Trainer turns
    do_eval on with any eval_strategy, so do_eval alone cannot mean "evaluate only"). `--do_predict` has no test
    split to run on here: refused in one line."""
    if training_args.do_predict:
        raise ValueError(
            "--do_predict True is not supported: this script has no test split; use --do_eval True."
        )
    given = any(a == "--do_train" or a.startswith("--do_train=") for a in argv)
    return training_args.do_train or not given


def _close_progress_bars() -> None:
    """Close Trainer's tqdm bars, so that their last frame is not printed after the error line at exit."""
    import tqdm

    for bar in list(getattr(tqdm.tqdm, "_instances", ())):  # a WeakSet of the open bars
        bar.close()


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, TypeError, ImportError, NonFiniteError) as err:
        # Bad input, bad data, a full or read-only disk and divergence end with one paragraph, not a traceback
        # (HF_ADAUTOMIX_TRACEBACK=1 shows it). Errors raised in DataLoader workers arrive wrapped in the worker's
        # traceback; `error_summary` keeps the original message.
        if os.environ.get("HF_ADAUTOMIX_TRACEBACK"):
            raise
        _close_progress_bars()
        sys.stdout.flush()
        sys.exit(f"error: {error_summary(err)}")
