"""Model cards for exported models (template in `hf_adautomix/templates/model_card.md`)."""

from __future__ import annotations

import os
from importlib import resources

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


def write_model_card(
    trainer, metrics: dict, *, dataset: str, finetuned_from: str | None = None, tags: list[str] | None = None
) -> str:
    """Write `output_dir/README.md` describing the method, EMA schedule, exported weights and results."""
    args, mix = trainer.args, trainer.mixup_args
    model = trainer.model
    adapter = model.export_adapter(mix.export_model)
    is_ema = adapter is model.teacher
    name = os.path.basename(os.path.abspath(args.output_dir))
    acc_key = "eval_ema_accuracy" if is_ema else "eval_accuracy"
    eval_results = []
    if acc_key in metrics:
        eval_results.append(
            EvalResult(
                task_type="image-classification",
                dataset_type=dataset,
                dataset_name=dataset,
                metric_type="accuracy",
                metric_value=float(metrics[acc_key]),
                dataset_split="validation",
            )
        )
    card_data = ModelCardData(
        library_name="transformers" if adapter.family == "transformers" else "timm",
        pipeline_tag="image-classification",
        tags=sorted(set(tags or []) | {"hf_adautomix"}),
        base_model=finetuned_from,
        model_name=name,
        eval_results=eval_results or None,
        metrics=["accuracy"],
    )
    rows = []
    for label, prefix in (("online", "eval"), ("EMA teacher", "eval_ema")):
        if f"{prefix}_accuracy" in metrics:
            vals = [metrics.get(f"{prefix}_{k}") for k in ("accuracy", "top5_accuracy", "nll", "ece")]
            rows.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in vals) + " |")
    training = [
        f"- steps: {trainer.state.global_step}, epochs: {round(trainer.state.epoch or 0, 2)}, "
        f"batch size per device: {args.per_device_train_batch_size}, learning rate: {args.learning_rate} "
        f"({getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}), "
        f"optimizer: {getattr(args.optim, 'value', args.optim)}, weight decay: {args.weight_decay}"
    ]
    if model.teacher is not None:
        training.append(f"- EMA teacher: {model.ema_schedule.describe()}")
    if mix.mixup == "adautomix":
        training.append(
            f"- AdAutoMix: variant {mix.adautomix_variant}, N = {mix.mix_num}"
            f"{' (random in 2..N)' if mix.mix_num_random else ''}, α = {mix.mce_weight}, "
            f"β = {mix.adv_weight}, feature stage {mix.mix_layer}"
        )
    if adapter.family == "transformers":
        load = f'from transformers import pipeline\nclassifier = pipeline("image-classification", model="{name}")'
    else:
        load = f'import timm\nmodel = timm.create_model("local-dir:{name}", pretrained=True)'
    template = resources.files("hf_adautomix").joinpath("templates/model_card.md").read_text()
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=name,
        architecture=adapter.arch_name,
        family=adapter.family,
        method=mix.mixup,
        dataset=dataset,
        method_description=METHOD_TEXT.get(mix.mixup, f"Classic mixup-family method `{mix.mixup}`."),
        exported="The EMA teacher's weights (backbone and the model's own head)."
        if is_ema
        else "The online model's weights.",
        results_rows="\n".join(rows) or "| - | - | - | - | - |",
        training="\n".join(training),
        load_snippet=load,
    )
    path = os.path.join(args.output_dir, "README.md")
    card.save(path)
    return path
