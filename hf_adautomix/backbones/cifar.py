"""CIFAR variants (3x3 stride-1 stem, no max-pool) of timm ResNet/ResNeXt/ConvNeXt, registered with timm as
`<arch>_cifar` so that their exports reload, and the transformers CIFAR ResNet registered with the Auto classes."""

from __future__ import annotations

import logging
import os

from torch import nn

logger = logging.getLogger(__name__)


def cifar_stem_timm(model: nn.Module) -> nn.Module:
    """3x3 stride-1 stem, no max-pool (ResNet/ResNeXt); 3x3 stride-1 stem conv (ConvNeXt)."""
    if hasattr(model, "conv1") and hasattr(model, "maxpool"):
        old = model.conv1
        if not isinstance(old, nn.Conv2d):
            raise ValueError("--cifar_stem supports timm ResNets with a single-conv stem (stem_type='').")
        model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    elif (
        hasattr(model, "stem")
        and isinstance(model.stem, nn.Sequential)
        and isinstance(model.stem[0], nn.Conv2d)
    ):
        old = model.stem[0]
        model.stem[0] = nn.Conv2d(
            old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=old.bias is not None
        )
    else:
        raise ValueError(
            f"--cifar_stem supports timm ResNet/ResNeXt and ConvNeXt, not {type(model).__name__}."
        )
    return model


def _export_state_dict(cfg: dict, cache_dir=None) -> tuple[dict, str]:
    """The weights of the timm export that `cfg` (a `pretrained_cfg` from "local-dir:" / "hf-hub:") comes from."""
    from timm.models import load_state_dict

    if cfg["source"] == "hf-hub":
        from timm.models import load_state_dict_from_hf

        repo = cfg["hf_hub_id"]
        return load_state_dict_from_hf(repo, "model.safetensors", cache_dir=cache_dir), repo
    path = cfg["file"]
    path = path if os.path.isfile(path) else os.path.join(path, "model.safetensors")
    return load_state_dict(path), path


def register_timm_cifar(arch: str) -> str:
    """Register `<arch>_cifar` with timm, so exported CIFAR variants reload with
    `timm.create_model('local-dir:' + path, pretrained=True)` (or "hf-hub:", or transformers' TimmWrapper) once
    hf_adautomix is imported: timm's ResNet/ConvNeXt arguments cannot express a 3x3 stride-1 stem, so an export
    cannot name a stock architecture plus `model_args` instead."""
    import timm
    from timm.models import register_model

    name = f"{arch}_cifar"
    if timm.is_model(name):
        return name

    def entry(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        kwargs.pop("pretrained_model_args", None)
        cfg = pretrained_cfg if isinstance(pretrained_cfg, dict) else getattr(pretrained_cfg, "__dict__", {})
        # An export (timm.create_model("local-dir:..." or "hf-hub:...")) brings its own weights; otherwise
        # pretrained=True means the plain architecture's weights (all but the new stem).
        source = cfg.get("source") if cfg.get("source") in ("local-dir", "hf-hub") else None
        if cfg.get("num_classes") is not None:  # an export's classes (its model_args leave them out)
            kwargs.setdefault("num_classes", cfg["num_classes"])
        model = timm.create_model(arch, pretrained=pretrained and not source, cache_dir=cache_dir, **kwargs)
        cifar_stem_timm(model)
        if pretrained and source:
            state, where = _export_state_dict(cfg, cache_dir)
            own = model.state_dict()
            head = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
            if head:  # another number of classes: a new head, as timm's own loader does
                logger.warning("Not loading %s from %s (shape mismatch: new number of classes).", head, where)
            model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=not head)
        # An export's own pretrained_cfg (input size, mean/std, crop, labels), as timm keeps for its own
        # architectures, so that resolve_data_config(model=...) gives the export's preprocessing, not arch's.
        model.pretrained_cfg = {**(cfg if source else model.pretrained_cfg), "architecture": name}
        if source and model.num_classes != cfg.get("num_classes"):  # a new head: not the export's labels
            for key in ("label_names", "label_descriptions"):
                model.pretrained_cfg.pop(key, None)
            model.pretrained_cfg["num_classes"] = model.num_classes
        model.default_cfg = model.pretrained_cfg  # timm's alias
        return model

    entry.__name__ = name
    entry.__module__ = __name__
    register_model(entry)
    return name


# The timm architectures whose CIFAR variants `import hf_adautomix` registers (so that their exports reload).
TIMM_CIFAR_ARCHS = ("resnet18", "resnet34", "resnet50", "resnext50_32x4d", "convnext_tiny", "convnext_atto")


def register_cifar_variants() -> None:
    """Register every CIFAR variant: timm's `<arch>_cifar` for `TIMM_CIFAR_ARCHS`, and the transformers CIFAR
    ResNet (`cifar_resnet`) with the Auto classes. Idempotent; `import hf_adautomix` calls it."""
    from transformers import AutoConfig, AutoModelForImageClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from ..cifar_models import CifarResNetConfig, CifarResNetForImageClassification

    for arch in TIMM_CIFAR_ARCHS:
        register_timm_cifar(arch)
    if CifarResNetConfig.model_type not in CONFIG_MAPPING:
        AutoConfig.register(CifarResNetConfig.model_type, CifarResNetConfig)
        AutoModelForImageClassification.register(CifarResNetConfig, CifarResNetForImageClassification)
