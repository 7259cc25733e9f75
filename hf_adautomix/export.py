"""Export of the trained classifier: the chosen weights in the model's own format, with the data's class names and
the eval preprocessing, and never with a non-finite weight.

`AdAutoMixTrainer.export_model` delegates here; what is written is the adapter's business (`adapter.export`), so
this module knows no model family.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch
from safetensors import SafetensorError

from .checkpoints import NonFiniteError, save_failed, umask_modes

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def hub_token_hidden(args):
    """`training_args.bin` is a pickle of the arguments: keep the Hub token out of it (it is uploaded)."""
    token = args.hub_token
    args.hub_token = None
    try:
        yield
    finally:
        args.hub_token = token


def refuse_nonfinite(adapter, what: str) -> None:
    """Raise `NonFiniteError` when a floating-point tensor of `adapter` holds NaN or inf.

    Args:
        adapter: the classifier about to be exported.
        what: its name in the message ("EMA", "online").
    """
    bad = [
        n for n, t in adapter.state_dict().items() if t.is_floating_point() and not bool(t.isfinite().all())
    ]
    if bad:
        raise NonFiniteError(
            f"Refusing to export the {what} model: {len(bad)} tensor(s) hold NaN or inf (e.g. {', '.join(bad[:3])})."
        )


def label_names(adapter, datasets=()) -> list[str] | None:
    """The class names an export carries: those of the data the model was trained on (a `ClassLabel` column with
    one name per class), else the model's own (`adapter.own_label_names()`); None when neither has them."""
    from .data import dataset_label_names

    own = adapter.own_label_names()
    data = dataset_label_names(datasets, adapter.num_classes)
    if data is not None and own is not None and data != own:
        logger.warning(
            "The model's class names %s differ from the training data's %s; the export uses the data's.",
            own[:5],
            data[:5],
        )
    return data or own


def preprocessing(info) -> dict | None:
    """The eval preprocessing of `info` (a `data.TransformInfo`, or None) in the terms of `adapter.export`."""
    if info is None:
        return None
    return {
        "size": info.size,
        "mean": info.mean,
        "std": info.std,
        "crop_pct": info.eval_crop_pct,
        "interpolation": info.interpolation,
    }


def export_trained(trainer, output_dir: str | None = None, which: str | None = None) -> str:
    """Write the chosen weights of `trainer`'s model (EMA teacher by default when there is one) in the model's
    native format, with the data's class names, the eval preprocessing (or image processor) and
    `training_args.bin` (without the Hub token); no generator, no mix head. Only the main process writes.

    Args:
        trainer: the `AdAutoMixTrainer`.
        output_dir: the folder (default: `args.output_dir`).
        which: "auto", "ema" or "online" (default: `--export_model`).

    Returns:
        The folder.
    """
    from .data import make_image_processor

    args, model = trainer.args, trainer.model
    output_dir = output_dir or args.output_dir
    if not trainer.is_world_process_zero():
        return output_dir
    os.makedirs(output_dir, exist_ok=True)
    adapter = model.export_adapter(which or trainer.mixup_args.export_model)
    what = "EMA" if adapter is model.teacher else "online"
    refuse_nonfinite(adapter, what)
    info = trainer.transform_info
    evals = (
        trainer.eval_dataset.values() if isinstance(trainer.eval_dataset, dict) else [trainer.eval_dataset]
    )
    processor = trainer.processing_class
    if processor is None and info is not None:
        processor = make_image_processor(info)
    try:
        adapter.export(
            output_dir,
            label_names=label_names(adapter, [trainer.train_dataset, *evals]),
            preprocessing=preprocessing(info),
            processor=processor,
        )
        with hub_token_hidden(args):
            torch.save(args, os.path.join(output_dir, "training_args.bin"))
    except (OSError, SafetensorError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "write" not in str(err).lower():  # torch.save's full disk only
            raise
        raise save_failed(err, f"the exported model to {output_dir}", args.output_dir) from err
    umask_modes(output_dir)
    logger.info("Exported the %s model (%s) to %s", what, adapter.family, output_dir)
    return output_dir
