"""Running an exported classifier over a `datasets` image dataset: loading it with its own eval preprocessing
(`load_exported`, over `backbones.load_export`) and the one prediction loop (`predict`; clean, with per-row
corruption / occlusion hooks, or under FGSM), which the robustness evaluations and the in-training probe share.

Every pass runs through `accelerate`: the dataloader is `Accelerator.prepare`d and the outputs gathered with
`gather_for_metrics`, so `accelerate launch` splits the data over processes; a plain `python` run is one process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import datasets
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..data import (
    IMAGE_COLUMN_CANDIDATES,
    LABEL_COLUMN_CANDIDATES,
    build_transforms,
    collate_fn,
    decode_image,
)

__all__ = ["FGSM_EPSILON", "LoadedModel", "fgsm", "get_accelerator", "load_exported", "logits_of", "predict"]

FGSM_EPSILON = 8 / 255  # the paper's L-inf radius (Table 4), in [0, 1] pixel units

# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """An exported classifier ready to evaluate.

    Attributes:
        model: `pixel_values (N, 3, size, size) -> logits (N, K)`, in eval mode (the export's classifier adapter).
        transform: the export's eval preprocessing, RGB PIL image -> normalised float tensor (3, size, size).
        mean: per-channel normalisation mean, [0, 1] units.
        std: per-channel normalisation std, [0, 1] units.
        size: input side.
        id2label: the model's own class names by id (empty when it has none).
        source: what was loaded, e.g. "transformers:out/".
    """

    model: torch.nn.Module
    transform: Callable
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    id2label: dict[int, str] = field(default_factory=dict)
    source: str = ""


def load_exported(path: str, device: str | torch.device | None = None) -> LoadedModel:
    """Loads an exported classifier (`backbones.load_export`) and its eval preprocessing, as its own library
    records them (timm's `pretrained_cfg`, a transformers image processor).

    The transform is `data.build_transforms`' eval transform with that size, crop, interpolation and mean/std: the
    same pixels as the export's processor.

    Args:
        path: a transformers folder or Hub id, a timm export folder, or "local-dir:DIR" / "hf-hub:ID".
        device: where to put the model; None leaves it on the CPU.

    Raises:
        ValueError: when the export records no preprocessing (a transformers folder without an image processor).
    """
    from ..backbones import load_export

    adapter = load_export(path, device)
    config = adapter.data_facts(pretrained=True)["pretrained_config"]
    if config is None:
        raise ValueError(
            f"The export at {path!r} records no eval preprocessing (no image processor / pretrained_cfg); "
            "save one with the model (AdAutoMixTrainer.save_model does)."
        )
    _, transform = build_transforms(
        "imagenet",
        config["size"],
        tuple(config["mean"]),
        tuple(config["std"]),
        crop_pct=config["crop_pct"],
        interpolation=config["interpolation"],
    )
    return LoadedModel(
        model=adapter,
        transform=transform,
        mean=tuple(float(m) for m in config["mean"]),
        std=tuple(float(s) for s in config["std"]),
        size=int(config["size"]),
        id2label=dict(enumerate(adapter.own_label_names() or [])),
        source=f"{adapter.library_name}:{path}",
    )


# ----------------------------------------------------------------------------------------------------------
# The prediction loop
# ----------------------------------------------------------------------------------------------------------

_INDEX = "__robustness_index__"


def _column(ds: datasets.Dataset, given: str | None, candidates: tuple[str, ...], kind: str) -> str:
    if given is not None:
        if given not in ds.column_names:
            raise ValueError(f"No {kind} column {given!r} in the dataset; its columns are {ds.column_names}.")
        return given
    for name in candidates:
        if name in ds.column_names:
            return name
    raise ValueError(
        f"Found no {kind} column (tried {list(candidates)}) in the dataset; its columns are {ds.column_names}."
    )


class _Prepare:
    """The `with_transform` function: decode, RGB, optional uint8 corruption, eval transform, optional occlusion.
    (`data`'s own per-image transform has no hooks before and after the transform, which these evaluations need.)"""

    def __init__(self, transform, image_column: str, label_column: str, pre=None, post=None):
        self.transform, self.image_column, self.label_column = transform, image_column, label_column
        self.pre, self.post = pre, post

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pixels = []
        for value, index in zip(batch[self.image_column], batch[_INDEX]):
            image = decode_image(value, index)
            if self.pre is not None:
                image = PIL.Image.fromarray(self.pre(np.asarray(image, dtype=np.uint8), index))
            x = self.transform(image)
            pixels.append(self.post(x, index) if self.post is not None else x)
        return {"pixel_values": pixels, "labels": batch[self.label_column]}


def get_accelerator(accelerator=None):
    """`accelerator`, or a new `accelerate.Accelerator` when it is None."""
    if accelerator is not None:
        return accelerator
    from accelerate import Accelerator

    return Accelerator()


def fgsm(
    net: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """FGSM (Goodfellow et al., 2015) on a normalised batch: `x + epsilon / std * sign(grad_x CE)`, clipped to the
    normalised image of [0, 1]; `epsilon` in [0, 1] pixel units. The gradient is of the batch's mean cross-entropy
    with the true labels; `net` (`pixel_values -> logits`) should be in eval mode."""
    mean_, std_ = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, -1, 1, 1) for v in (mean, std))
    lo, hi = (0 - mean_) / std_, (1 - mean_) / std_  # pixel values 0 and 1, normalised
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(F.cross_entropy(net(x), labels), x)
    return torch.maximum(torch.minimum(x.detach() + epsilon / std_ * grad.sign(), hi), lo)


def logits_of(
    net: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    epsilon: float | None = None,
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
) -> torch.Tensor:
    """Float logits of one normalised batch, without gradients; with `epsilon`, of its FGSM attack (`fgsm`, which
    needs the `labels` and the normalisation `mean`/`std`). The one prediction step of `predict` and the probe."""
    if epsilon is not None:
        x = fgsm(net, x, labels, epsilon, mean, std)
    with torch.no_grad():
        return net(x).float()


def predict(
    model: LoadedModel,
    dataset: datasets.Dataset,
    *,
    batch_size: int = 128,
    image_column: str | None = None,
    label_column: str | None = None,
    pre: Callable[[np.ndarray, int], np.ndarray] | None = None,
    post: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    fgsm_epsilon: float | None = None,
    num_workers: int = 0,
    accelerator=None,
    desc: str | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of `model` on `dataset` (all processes' rows, in order, after `gather_for_metrics`).

    Args:
        model: from `load_exported`.
        dataset: rows with an image and an integer label column (found as `load_image_datasets` finds them).
        pre: `(uint8 HxWx3 image, row) -> uint8 image`, before the eval transform (corruptions).
        post: `(normalised (3, H, W) tensor, row) -> tensor`, after it (occlusion).
        fgsm_epsilon: attack each batch with FGSM of this L-inf radius in [0, 1] pixel units (see `evaluate_fgsm`).
        num_workers: dataloader workers (corruptions run in them).
        accelerator: an `accelerate.Accelerator`; None makes one.
        desc: the progress bar's label.
        progress: False hides the progress bar.
    """
    from tqdm.auto import tqdm

    accelerator = get_accelerator(accelerator)
    image_column = _column(dataset, image_column, IMAGE_COLUMN_CANDIDATES, "image")
    label_column = _column(dataset, label_column, LABEL_COLUMN_CANDIDATES, "label")
    ds = dataset.select_columns([image_column, label_column])
    ds = ds.add_column(_INDEX, np.arange(len(ds)))
    ds = ds.with_transform(_Prepare(model.transform, image_column, label_column, pre, post))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers
    )
    loader = accelerator.prepare(loader)
    net = model.model.to(accelerator.device).eval()
    logits_all, labels_all = [], []
    for batch in tqdm(loader, desc=desc, disable=not (progress and accelerator.is_local_main_process)):
        x, y = batch["pixel_values"], batch["labels"]
        logits = logits_of(net, x, y, epsilon=fgsm_epsilon, mean=model.mean, std=model.std)
        logits, y = accelerator.gather_for_metrics((logits, y))
        logits_all.append(logits.cpu().numpy())
        labels_all.append(y.cpu().numpy())
    return np.concatenate(logits_all), np.concatenate(labels_all)
