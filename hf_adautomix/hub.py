"""Model cards for exported models: `huggingface_hub`'s `ModelCard` / `ModelCardData` / `EvalResult`, rendered from
the template `hf_adautomix/templates/model_card.md` (shipped in the package; examples in `model_cards/`)."""

from __future__ import annotations

import dataclasses
import glob
import os
from importlib import metadata, resources

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

METHOD_TEXT = {
    "adautomix": "AdAutoMix (Qin et al., ICLR 2024): an attention-based generator mixes N images with learned "
    "masks; it is trained against an EMA teacher (released objective: alternating adversarial and "
    "cooperative steps), while the classifier learns from the generated mixes, vanilla N-way mixup and "
    "clean images.",
    "automix": "AutoMix (Liu et al., ECCV 2022): a learned mix block generates pairwise masks, trained "
    "cooperatively with an EMA teacher and a mask-area loss.",
    "none": "No mixing (plain cross-entropy).",
}
# (metric key suffix, EvalResult metric_type, column title)
METRICS = (
    ("accuracy", "accuracy", "top-1"),
    ("top5_accuracy", "top_5_accuracy", "top-5"),
    ("nll", "nll", "NLL"),
)
METRICS += (("ece", "ece", "ECE"),)
HEADS = (("online", "eval"), ("EMA teacher", "eval_ema"))


def write_model_card(
    trainer,
    metrics: dict,
    *,
    dataset: str,
    dataset_id: str | None = None,
    finetuned_from: str | None = None,
    tags: list[str] | None = None,
    license: str | None = None,
    validation_dataset: str | None = None,
) -> str:
    """Write `output_dir/README.md`: Hub metadata (library, pipeline, tags, datasets, base model, a model-index with
    top-1, top-5, NLL and ECE of the online and EMA models), the method, the whole recipe, the environment, the
    mixed-sample gallery and how to load the model. Returns the path.

    Args:
        trainer: the `AdAutoMixTrainer` that trained the model.
        metrics: `eval_*` / `eval_ema_*` metrics.
        dataset: a description of the data.
        dataset_id: its Hub id, if it has one (goes to `datasets:` and the model-index).
        finetuned_from: the pretrained checkpoint, if any (`base_model:`).
        tags: extra tags.
        license: an SPDX-like license id for the card's metadata (`--license`).
        validation_dataset: where the validation data came from, when not from `dataset` (e.g. --validation_dir):
            the model-index names it as the dataset of the reported metrics.
    """
    args, mix = trainer.args, trainer.mixup_args
    model = trainer.model
    adapter = model.export_adapter(mix.export_model)
    is_ema = adapter is model.teacher
    name = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
    # The snippets load the Hub id when pushed, else the folder as the user gave it (not its base name, which only
    # resolves from its parent).
    load_name = args.hub_model_id or args.output_dir
    dataset_name = dataset_id or dataset
    # The metrics are the validation data's: name its source, not the training source, when it has its own.
    eval_name = validation_dataset or dataset_name
    base_model = _base_model(finetuned_from, adapter)
    eval_results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=dataset_id if dataset_id and not validation_dataset else "custom",
            dataset_name=eval_name,
            dataset_split="validation",
            metric_type=metric_type,
            metric_name=f"{title} ({head})",
            metric_value=float(metrics[f"{prefix}_{key}"]),
        )
        for head, prefix in HEADS
        for key, metric_type, title in METRICS
        if f"{prefix}_{key}" in metrics
    ]
    card_data = ModelCardData(
        library_name=adapter.library_name,
        pipeline_tag="image-classification",
        tags=sorted(set(tags or []) | {"hf_adautomix", "image-classification", mix.mixup, adapter.arch_name}),
        datasets=[dataset_id] if dataset_id else None,
        license=license,
        base_model=base_model,
        model_name=name,
        eval_results=eval_results or None,
    )
    rows = []
    mix_heads = (("online mix head", "eval_mix_head"), ("EMA mix head", "eval_ema_mix_head"))  # not exported
    exported_head = "EMA teacher" if is_ema else "online"
    for head, prefix in HEADS + mix_heads:
        if f"{prefix}_accuracy" in metrics:
            vals = [metrics.get(f"{prefix}_{key}") for key, _, _ in METRICS]
            label = f"**{head} (the exported weights)**" if head == exported_head else head
            rows.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in vals) + " |")
    template = resources.files("hf_adautomix").joinpath("templates/model_card.md").read_text()
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=name,
        architecture=adapter.arch_name,
        family=adapter.family,
        method=mix.mixup,
        dataset=dataset_name,
        split="validation",
        validation=eval_name,
        exported_head=exported_head,
        base_model=base_model,
        finetuned_from=finetuned_from,
        num_classes=adapter.num_classes,
        method_description=METHOD_TEXT.get(mix.mixup, f"Classic mixup-family method `{mix.mixup}`."),
        exported="The EMA teacher's weights (backbone and the model's own head)."
        if is_ema
        else "The online model's weights.",
        results_rows="\n".join(rows) or "| - | - | - | - | - |",
        training=_training_lines(trainer),
        recipe_rows="\n".join(
            f"| `--{f.name}` | {getattr(mix, f.name)} |" for f in dataclasses.fields(mix) if f.init
        ),
        environment=_environment(trainer),
        gallery=_gallery(args.output_dir),
        load_snippets=adapter.load_snippets(load_name),
    )
    path = os.path.join(args.output_dir, "README.md")
    card.save(path)
    return path


def _base_model(finetuned_from: str | None, adapter) -> str | None:
    """The Hub id of the weights training started from: `--model_name_or_path` (`hf-hub:` / `timm/` ids as the Hub
    names them; a local folder is no Hub id), else the pretrained weights a timm architecture was created with."""
    name = finetuned_from or adapter.pretrained_hub_id
    if not name or os.path.isdir(name) or name.startswith("local-dir:"):
        return None
    return name.removeprefix("hf-hub:")


def _training_lines(trainer) -> str:
    args, state, model = trainer.args, trainer.state, trainer.model
    enum = lambda v: getattr(v, "value", v)  # noqa: E731
    total = args.per_device_train_batch_size * max(args.world_size, 1) * args.gradient_accumulation_steps
    lines = [
        f"- steps: {state.global_step}, epochs: {round(state.epoch or 0, 2)}, seed: {args.seed}",
        f"- batch: {args.per_device_train_batch_size} per device × {max(args.world_size, 1)} process(es) × "
        f"{args.gradient_accumulation_steps} accumulation = {total}",
        f"- optimizer: {enum(args.optim)}{f' ({args.optim_args})' if args.optim_args else ''}, learning rate "
        f"{args.learning_rate} ({enum(args.lr_scheduler_type)}, warm-up {args.warmup_steps}), weight decay "
        f"{args.weight_decay}, gradient clipping {args.max_grad_norm or 'none'}, label smoothing "
        f"{args.label_smoothing_factor}",
        f"- precision: {'bf16' if args.bf16 else 'fp16' if args.fp16 else 'fp32'}",
    ]
    if model.teacher is not None:
        lines.append(f"- EMA teacher: {model.ema_schedule.describe()}")
    return "\n".join(lines)


def _environment(trainer) -> str:
    args = trainer.args
    runtime = next(
        (h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h), None
    )
    device = str(args.device)
    if args.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(args.device)})"
    versions = ", ".join(
        f"{p} {_version(p)}" for p in ("hf_adautomix", "torch", "transformers", "timm", "datasets")
    )
    return (
        f"- device: {device}, {max(args.world_size, 1)} process(es)"
        + (f", training wall time {runtime:.0f} s" if runtime is not None else "")
        + f"\n- {versions}"
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def _gallery(output_dir: str) -> str | None:
    grids = sorted(glob.glob(os.path.join(output_dir, "mixed_samples", "*.png")))
    return os.path.relpath(grids[-1], output_dir) if grids else None
