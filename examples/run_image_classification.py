#!/usr/bin/env python
"""Train an image classifier with AdAutoMix, AutoMix or a classic mixup method, on the Hugging Face stack.

Follows transformers' `examples/pytorch/image-classification/run_image_classification.py` (same argument names,
same end sequence), plus a `MixupArguments` group. Runs on one device, with `accelerate launch` / `torchrun` on
several, or on a laptop CPU. With no data argument it trains on the embedded default (scikit-learn's digits):

    python examples/run_image_classification.py --output_dir out
    accelerate launch examples/run_image_classification.py --mixup adautomix --output_dir out
    python examples/run_image_classification.py examples/configs/cifar100_r18_adautomix.yaml
"""

from __future__ import annotations

import logging
import os
import sys

import datasets
import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed

from hf_adautomix import AdAutoMixTrainer, DataTrainingArguments, MixupArguments, ModelArguments
from hf_adautomix.backbones import build_model, wrap_classifier
from hf_adautomix.data import apply_transforms, build_transforms, load_image_datasets, resolve_transform_info

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
}


def parse_args(argv: list[str]):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, MixupArguments, TrainingArguments))
    parser.set_defaults(**SCRIPT_DEFAULTS)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> dict:
    # ----- Arguments ------------------------------------------------------------------------------------------
    model_args, data_args, mixup_args, training_args = parse_args(sys.argv[1:] if argv is None else argv)

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

    # ----- Transforms: the CIFAR recipe for small images, the ImageNet recipe otherwise ------------------------
    mean, std = (
        _pretrained_norm(model) if (model_args.pretrained or model_args.model_name_or_path) else (None, None)
    )
    info = resolve_transform_info(
        image_data, data_args, image_size=None, image_mean=mean, image_std=std, seed=training_args.seed
    )
    image_data = apply_transforms(image_data, *build_transforms(info.recipe, info.size, info.mean, info.std))

    # ----- Trainer ----------------------------------------------------------------------------------------------
    trainer = AdAutoMixTrainer(
        model=model,
        args=training_args,
        mixup_args=mixup_args,
        train_dataset=image_data.train,
        eval_dataset=image_data.validation,
        transform_info=info,
    )

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

    # ----- Training ---------------------------------------------------------------------------------------------
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    # ----- Evaluation (online as eval_*, EMA teacher as eval_ema_*) ----------------------------------------------
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)

    # ----- Export (native format, EMA weights when there is a teacher) and model card --------------------------
    trainer.save_model()  # -> trainer.export_model(output_dir)
    card_kwargs = {"finetuned_from": model_args.model_name_or_path, "dataset": image_data.source}
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message=f"hf_adautomix: --mixup {mixup_args.mixup}", **card_kwargs)
    elif trainer.is_world_process_zero():
        trainer.create_model_card(**card_kwargs)
    trainer.end()
    return {**train_result.metrics, **metrics}


def _pretrained_norm(model):
    """Normalisation a pretrained model was trained with (timm pretrained_cfg), else None (dataset stats)."""
    adapter = wrap_classifier(model)
    if adapter.family == "timm":
        cfg = adapter.model.pretrained_cfg
        if cfg.get("mean") and cfg.get("std"):
            return tuple(cfg["mean"]), tuple(cfg["std"])
        return None, None
    try:  # the image processor saved with a transformers checkpoint, if it is there
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(adapter.model.name_or_path)
        return tuple(processor.image_mean), tuple(processor.image_std)
    except (OSError, ValueError, AttributeError, TypeError):
        return None, None


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, TypeError, ImportError) as err:
        # Bad input ends with its one-paragraph message, not a traceback (HF_ADAUTOMIX_TRACEBACK=1 shows it).
        if os.environ.get("HF_ADAUTOMIX_TRACEBACK"):
            raise
        sys.exit(f"error: {err}")
