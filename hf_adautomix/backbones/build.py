"""Building and loading classifiers (offline-first): `wrap_classifier`, `build_model` from the CLI's model
arguments, `load_export` of an exported folder or Hub id, and `parse_config_overrides`."""

from __future__ import annotations

import json
import logging
import os

import torch
from torch import nn

from .base import ClassifierAdapter
from .cifar import register_timm_cifar
from .timm import timm_adapter
from .transformers import TransformersAdapter

logger = logging.getLogger(__name__)


def wrap_classifier(model: nn.Module) -> ClassifierAdapter:
    """The adapter for a user's model (an adapter is returned unchanged)."""
    if isinstance(model, ClassifierAdapter):
        return model
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        if model.config.model_type == "timm_wrapper":
            return timm_adapter(model.timm_model)
        return TransformersAdapter(model)
    if hasattr(model, "pretrained_cfg") and hasattr(model, "forward_head"):
        return timm_adapter(model)
    raise TypeError(
        f"Unsupported model type {type(model).__name__}: pass a transformers *ForImageClassification model or a "
        "timm classifier (timm.create_model(...))."
    )


def parse_config_overrides(text: str | None) -> dict:
    """'a=1,b=[1,2],c=basic' -> {'a': 1, 'b': [1, 2], 'c': 'basic'} (JSON values, bare strings allowed).

    Raises:
        ValueError: naming the fragment, when brackets do not balance, a fragment is not key=value, a key or
            value is empty, or a value in brackets/braces/quotes (JSON-looking) does not parse as JSON.
    """
    if not text:
        return {}
    out, depth, start = {}, 0, 0
    parts = []
    for i, ch in enumerate(text + ","):
        depth += ch in "[{("
        depth -= ch in "]})"
        if depth < 0:
            raise ValueError(
                f"--config_overrides: unbalanced {ch!r} in '{text[start : i + 1]}' (in '{text}')."
            )
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth > 0:  # an unclosed bracket swallowed the rest of the string
        raise ValueError(
            f"--config_overrides: unclosed bracket in '{text[start:]}' (in '{text}'); close every '[', '{{' "
            "and '('."
        )
    for part in filter(None, (p.strip() for p in parts)):
        if "=" not in part:
            raise ValueError(f"--config_overrides: '{part}' is not of the form key=value (in '{text}').")
        key, value = (s.strip() for s in part.split("=", 1))
        if not key or not value:
            raise ValueError(
                f"--config_overrides: '{part}' has an empty {'key' if not key else 'value'}; expected "
                f"key=value (in '{text}')."
            )
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as err:
            if value[0] in '[{"':
                raise ValueError(
                    f"--config_overrides: the value of {key!r}, '{value}', looks like JSON but does not parse "
                    f"({err.msg}); write lists as [1,2] and dicts as {{\"k\": 1}} (in '{text}')."
                ) from err
            low = value.lower()
            out[key] = {"true": True, "false": False, "none": None, "null": None}.get(low, value)
    return out


def build_model(
    *,
    num_labels: int,
    id2label: dict[int, str],
    model_name_or_path: str | None = None,
    model_type: str | None = None,
    config_overrides: str | None = None,
    timm_model: str | None = None,
    pretrained: bool = False,
    cifar_stem: bool = False,
    image_size: int | None = None,
    ignore_mismatched_sizes: bool = True,
    cache_dir: str | None = None,
    token: str | None = None,
    revision: str = "main",
) -> nn.Module:
    """Build the user's classifier from exactly one of model_name_or_path / model_type / timm_model."""
    given = [
        n
        for n, v in (
            ("--model_name_or_path", model_name_or_path),
            ("--model_type", model_type),
            ("--timm_model", timm_model),
        )
        if v
    ]
    if len(given) != 1:
        raise ValueError(
            f"Give exactly one of --model_name_or_path, --model_type or --timm_model (got {given or 'none'})."
        )
    overrides = parse_config_overrides(config_overrides)
    if timm_model or (model_name_or_path and _is_timm_id(model_name_or_path)):
        return _build_timm(
            timm_model or model_name_or_path,
            # A Hub/local id means its weights, except under --cifar_stem (a new stem: `pretrained` decides).
            pretrained=pretrained or (bool(model_name_or_path) and not cifar_stem),
            cifar_stem=cifar_stem,
            num_labels=num_labels,
            id2label=id2label,
            kwargs=overrides,
            image_size=image_size,
        )
    from transformers import AutoConfig, AutoModelForImageClassification

    common = dict(
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        problem_type="single_label_classification",
    )
    if model_type:
        return _build_transformers_config(model_type, cifar_stem, image_size, {**overrides, **common})
    try:
        config = AutoConfig.from_pretrained(
            model_name_or_path, cache_dir=cache_dir, token=token, revision=revision, **overrides, **common
        )
        if cifar_stem:
            raise ValueError(
                "--cifar_stem changes the architecture; use it with --model_type or --timm_model."
            )
        return AutoModelForImageClassification.from_pretrained(
            model_name_or_path,
            config=config,
            cache_dir=cache_dir,
            token=token,
            revision=revision,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
        )
    except OSError as e:
        raise _offline_error(model_name_or_path, e) from e


def _build_timm(
    name: str,
    *,
    pretrained: bool,
    cifar_stem: bool,
    num_labels: int,
    id2label: dict[int, str],
    kwargs: dict,
    image_size: int | None,
) -> nn.Module:
    """`timm.create_model` of an architecture (`pretrained` as asked) or a Hub/local id (always pretrained)."""
    import timm

    name = timm_model_id(name)
    kwargs = dict(kwargs)
    if image_size and _timm_takes_img_size(name):
        kwargs.setdefault("img_size", image_size)
    try:
        arch = register_timm_cifar(name) if cifar_stem else name
        model = timm.create_model(arch, pretrained=pretrained, num_classes=num_labels, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"timm has no architecture '{name}' (see timm.list_models()).") from e
        raise _offline_error(name, e) from e
    except (OSError, ValueError) as e:
        raise _offline_error(name, e) from e
    cfg = model.pretrained_cfg if pretrained else _without_weights_facts(model.pretrained_cfg)
    model.pretrained_cfg = {**cfg, "label_names": [id2label[i] for i in range(num_labels)]}
    return model


# pretrained_cfg keys that describe a set of released weights, not the architecture: a model trained from scratch
# must not carry them into its export (timm's save_for_hf writes pretrained_cfg to config.json).
WEIGHTS_FACTS = (
    "tag", "hf_hub_id", "hf_hub_filename", "url", "file", "source", "paper_ids", "paper_name", "license",
    "origin_url", "notes", "description", "state_dict", "custom_load",
)  # fmt: skip


def _without_weights_facts(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in WEIGHTS_FACTS}


def timm_model_id(name: str) -> str:
    """The name timm.create_model takes for a model id: `timm/<id>` (how the Hub names timm models) is
    `hf-hub:timm/<id>`, a folder is `local-dir:<folder>`; anything else is returned as it is."""
    if name.startswith("timm/"):
        return "hf-hub:" + name
    if os.path.isdir(name):
        return "local-dir:" + name
    return name


def _build_transformers_config(
    model_type: str, cifar_stem: bool, image_size: int | None, kwargs: dict
) -> nn.Module:
    """A random-init transformers classifier of `model_type` (`cifar_resnet` for `resnet` with a CIFAR stem)."""
    from transformers import AutoConfig, AutoModelForImageClassification

    if model_type == "resnet" and cifar_stem:
        model_type = "cifar_resnet"
    try:
        config = AutoConfig.for_model(model_type, **kwargs)
    except ValueError as e:
        raise ValueError(f"--model_type '{model_type}' is not a transformers architecture: {e}") from e
    if cifar_stem and model_type in ("convnext", "convnextv2"):
        config.patch_size = 1  # stride-1 stem: stage 3 is 8x8 on 32x32 images, as in the paper's variant
    if image_size and hasattr(config, "image_size"):
        config.image_size = image_size
    return AutoModelForImageClassification.from_config(config)


def _is_timm_id(name: str) -> bool:
    if name.startswith(("timm/", "hf-hub:timm/", "local-dir:")):
        return True
    cfg = os.path.join(name, "config.json")
    if os.path.isfile(cfg):
        with open(cfg) as f:
            return "architecture" in json.load(f)
    return False


def _timm_takes_img_size(name: str) -> bool:
    return any(k in name for k in ("swin", "vit", "deit", "beit", "eva", "maxvit", "coatnet"))


def _offline_error(name: str, err: Exception) -> Exception:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    hint = (
        " HF_HUB_OFFLINE is set, so only local folders and the local cache are used."
        if offline
        else " Check the name, your network and your token."
    )
    detail = " ".join(str(err).split())  # one paragraph
    return ValueError(
        f"Could not load model '{name}': {type(err).__name__}: {detail}{hint} To train without "
        "downloading anything, use --model_type (transformers) or --timm_model (timm) instead."
    )


def _is_timm_export(path: str) -> bool:
    if path.startswith(("local-dir:", "hf-hub:", "timm/")):
        return True
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        cfg = json.load(f)
    # timm's `save_for_hf` config: "architecture" + "pretrained_cfg", no transformers "model_type".
    return "architecture" in cfg and "model_type" not in cfg


def load_export(path: str, device: str | torch.device | None = None) -> ClassifierAdapter:
    """An exported classifier, in eval mode, as its own library loads it.

    timm: a folder written by `save_for_hf` (config.json with "architecture"), or "local-dir:DIR" / "hf-hub:ID",
    through `timm.create_model(..., pretrained=True)`. transformers: a folder or Hub id for
    `AutoModelForImageClassification` (TimmWrapper included). `adapter(pixel_values)` gives logits;
    `adapter.data_facts(pretrained=True)["pretrained_config"]` is the export's eval preprocessing.
    """
    if _is_timm_export(path):
        import timm

        name = path if path.startswith(("local-dir:", "hf-hub:")) else timm_model_id(path)
        model = timm.create_model(name, pretrained=True)
    else:
        from transformers import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(path)
    adapter = wrap_classifier(model.eval()).eval()
    return adapter.to(device) if device is not None else adapter
