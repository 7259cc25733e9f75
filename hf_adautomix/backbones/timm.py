"""The timm family: `TimmAdapter` (stages from `feature_info`, export with `save_for_hf`) and `TimmSwinAdapter`."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
from typing import Any

import torch
from torch import nn

from .base import ClassifierAdapter, Features, check_stop, interpolation_name, run_until, to_nchw

logger = logging.getLogger(__name__)


class TimmAdapter(ClassifierAdapter):
    family = "timm"
    library_name = "timm"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        info = getattr(model, "feature_info", None)
        if not info or not hasattr(model, "forward_intermediates"):
            raise ValueError(
                f"timm model {type(model).__name__} exposes no `feature_info` / `forward_intermediates`, so its "
                "stage features cannot be tapped; use a timm architecture that has them (ResNet, ResNeXt, "
                "ConvNeXt, Swin, EfficientNet, ...)."
            )
        # A stride-2 stem entry (ResNet's 'act1') is not a stage: stages are the entries of stride >= 4.
        self._info_index = [i for i, d in enumerate(info) if d["reduction"] >= 4]
        self._info = [info[i] for i in self._info_index]

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def arch_name(self) -> str:
        return str(self.model.pretrained_cfg.get("architecture") or type(self.model).__name__)

    @property
    def input_size(self) -> tuple[int, int]:
        fixed = getattr(getattr(self.model, "patch_embed", None), "img_size", None)  # ViT/Swin: a fixed size
        size = fixed or self.model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:]
        return int(size[0]), int(size[1])

    @property
    def num_stages(self) -> int:
        return len(self._info)

    @property
    def head(self) -> nn.Module:
        return self.model.get_classifier()

    def stage_module(self, stage: int) -> nn.Module:
        self.check_stage(stage)
        return self.model.get_submodule(self._info[stage - 1]["module"])

    def forward_features(
        self, x: torch.Tensor, stage: int | None = None, *, stop_at_stage: bool = False
    ) -> Features:
        if stop_at_stage:
            check_stop(stage)
            self.check_stage(stage)
            return Features(None, None, self._forward_to_stage(x, stage))
        if stage is None:
            final, stage_map = self.model.forward_features(x), None
        else:
            self.check_stage(stage)
            final, stage_map = self._forward_tapped(x, stage)
        pooled = self.model.forward_head(final, pre_logits=True)
        return Features(pooled, self.head(pooled), stage_map)

    def _forward_tapped(self, x: torch.Tensor, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(final features, stage `stage`'s map in NCHW) from one forward."""
        final, inter = self.model.forward_intermediates(
            x, indices=[self._info_index[stage - 1]], norm=False, output_fmt="NCHW"
        )
        return final, to_nchw(inter[0], self._info[stage - 1]["num_chs"])

    def _forward_to_stage(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Stage `stage`'s map in NCHW, running nothing after it (timm's own `stop_early`)."""
        inter = self.model.forward_intermediates(
            x,
            indices=[self._info_index[stage - 1]],
            norm=False,
            stop_early=True,
            output_fmt="NCHW",
            intermediates_only=True,
        )
        return to_nchw(inter[0], self._info[stage - 1]["num_chs"])

    # -- family facts ----------------------------------------------------------------------------------------
    @property
    def is_pretrained(self) -> bool:
        # Models loaded from the Hub or a local folder (`hf-hub:` / `local-dir:`) say so in their pretrained_cfg;
        # `create_model(name, pretrained=True)` is not recorded (callers pass `pretrained=True` to `data_facts`).
        return self.model.pretrained_cfg.get("source") in ("hf-hub", "local-dir")

    @property
    def needs_fixed_size(self) -> bool:
        dynamic = getattr(self.model, "dynamic_img_size", False)
        return bool(self.model.pretrained_cfg.get("fixed_input_size", False)) and not dynamic

    @property
    def has_cifar_stem(self) -> bool:
        return self.arch_name.endswith("_cifar")

    @property
    def pretrained_hub_id(self) -> str | None:
        # build_model drops hf_hub_id from a model created without weights; a local folder is no Hub id.
        cfg = self.model.pretrained_cfg
        return None if cfg.get("source") == "local-dir" else cfg.get("hf_hub_id") or None

    def pretrained_data_config(self) -> dict[str, Any] | None:
        from timm.data import resolve_data_config

        return timm_data_config(resolve_data_config(model=self.model), type(self.model).__name__)

    def own_label_names(self) -> list[str] | None:
        own = self.model.pretrained_cfg.get("label_names")
        return list(own) if own is not None and len(own) == self.num_classes else None

    def export(
        self,
        save_directory: str,
        *,
        label_names: list[str] | None = None,
        preprocessing: dict[str, Any] | None = None,
        processor=None,
    ) -> None:
        """`save_native` with the preprocessing in timm's terms in `pretrained_cfg` ("squash" with crop_pct 1
        resizes to size x size, "center" resizes the short side to size / crop_pct and crops), which timm and
        transformers' `TimmWrapperImageProcessor` read. No `preprocessor_config.json`: on the Hub it would win
        over config.json (AutoImageProcessor reads config.json only for local timm folders) and could disagree
        with timm; `processor` is therefore not saved."""
        data_config = None
        if preprocessing is not None:
            crop, size = preprocessing["crop_pct"], preprocessing["size"]
            data_config = {
                "input_size": (3, size, size),
                "mean": tuple(preprocessing["mean"]),
                "std": tuple(preprocessing["std"]),
                "crop_pct": 1.0 if crop is None else float(crop),
                "crop_mode": "squash" if crop is None else "center",
                "interpolation": preprocessing["interpolation"],
            }
        self.save_native(save_directory, label_names=label_names, data_config=data_config)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(save_directory, "preprocessor_config.json"))

    def load_snippets(self, name: str) -> str:
        prefix = "hf-hub:" if "/" in name and not os.path.isdir(name) else "local-dir:"
        cifar = self.has_cifar_stem
        imports = f"import hf_adautomix  # registers the CIFAR variant ({self.arch_name})\n" if cifar else ""
        note = (
            "**First install and import hf_adautomix** (`pip install hf_adautomix`, then `import hf_adautomix` "
            f"before loading): it registers the CIFAR variant `{self.arch_name}` (its 3x3 stride-1 stem) with "
            "timm. Every loader (timm, `pipeline`, `AutoModelForImageClassification`) needs it, as timm's own "
            'model arguments cannot express that stem; without it they fail with "not supported in your version '
            'of timm", and upgrading timm does not help.\n\n'
            if cifar
            else "Needs `pip install timm transformers`; nothing else.\n\n"
        )
        return (
            f"{note}```python\n{imports}import timm\n\n"
            f'model = timm.create_model("{prefix}{name}", pretrained=True).eval()\n'
            "config = timm.data.resolve_data_config(model=model)\n"
            "transform = timm.data.create_transform(**config)\n```\n\n"
            "In transformers (`TimmWrapper`; the preprocessing is the timm config's):\n\n"
            f"```python\n{imports}from transformers import pipeline\n\n"
            f'classifier = pipeline("image-classification", model="{name}")\n```\n\n'
            f"```python\n{imports}from transformers import AutoImageProcessor, AutoModelForImageClassification\n\n"
            f'processor = AutoImageProcessor.from_pretrained("{name}")\n'
            f'model = AutoModelForImageClassification.from_pretrained("{name}")\n```'
        )

    def save_native(
        self, save_directory: str, label_names: list[str] | None = None, data_config: dict | None = None
    ) -> None:
        """timm's own format (`save_for_hf`: `model.safetensors` + `config.json`), which loads in
        `timm.create_model("local-dir:" + dir, pretrained=True)` and in transformers' `TimmWrapper`
        (`AutoModelForImageClassification`, `pipeline`).

        Args:
            save_directory: the folder.
            label_names: class names by index: `config.json`'s `label_names`, which timm reads and TimmWrapper turns
                into `id2label`.
            data_config: the eval preprocessing (`input_size`, `mean`, `std`, `crop_pct`, `crop_mode`,
                `interpolation`), written to `pretrained_cfg`, which both `timm.data.resolve_data_config` and
                transformers' `TimmWrapperImageProcessor` read.
        """
        from timm.models import save_for_hf

        if label_names is not None and len(label_names) != self.num_classes:
            raise ValueError(
                f"label_names has {len(label_names)} names, but the model has {self.num_classes} classes."
            )
        model_config = {"label_names": list(label_names)} if label_names else None
        save_for_hf(
            self.model,
            save_directory,
            model_config=model_config,
            data_config=data_config,
            safe_serialization=True,
        )
        # timm 1.0.31 records num_classes in model_args too, and transformers' TimmWrapper passes model_args *and*
        # num_classes=num_labels to timm.create_model ("got multiple values for keyword argument 'num_classes'").
        # The top-level num_classes (pretrained_cfg's for timm, num_labels for TimmWrapper) already carries it.
        path = os.path.join(save_directory, "config.json")
        with open(path) as f:
            config = json.load(f)
        if config.get("model_args", {}).pop("num_classes", None) is not None:
            if not config["model_args"]:
                del config["model_args"]
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(config, f, indent=2)
            os.replace(tmp, path)


def _timm_swin_classes() -> tuple[type, ...]:
    """timm's Swin families, whose stages *start* with the previous stage's patch merging."""
    classes = []
    for module, name in (
        ("timm.models.swin_transformer", "SwinTransformer"),
        ("timm.models.swin_transformer_v2", "SwinTransformerV2"),
        ("timm.models.swin_transformer_v2_cr", "SwinTransformerV2Cr"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            classes.append(getattr(importlib.import_module(module), name))
    return tuple(classes)


class TimmSwinAdapter(TimmAdapter):
    """timm Swin (v1, v2, v2-cr). Stage k's map is taken *after* its patch merging, as in the original Swin
    layout that the released AdAutoMix (mmcls Swin, `out_indices=(2, 3)`: stage 3 is 768 x 7 x 7 at 224 px) and
    transformers' Swin use. timm moved each merging to the start of the next stage, so its `feature_info` entry
    k is the map *before* merging; here stage k < last is the output of stage k + 1's `downsample` layer (channels
    and stride of `feature_info[k]`), and the last stage is the last `feature_info` entry, as before."""

    def _tap_name(self, stage: int) -> str:
        if stage == self.num_stages:
            return self._info[stage - 1]["module"]
        return self._info[stage]["module"] + ".downsample"  # the next stage's patch merging

    def stage_module(self, stage: int) -> nn.Module:
        self.check_stage(stage)
        return self.model.get_submodule(self._tap_name(stage))

    def _forward_tapped(self, x: torch.Tensor, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        if stage == self.num_stages:
            return super()._forward_tapped(x, stage)
        # forward_intermediates only returns feature_info's (pre-merging) maps: read the merging layer's output
        # with a hook on the same forward instead of running the merging twice.
        captured = []
        handle = self.stage_module(stage).register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            final = self.model.forward_features(x)
        finally:
            handle.remove()
        return final, captured[-1].permute(0, 3, 1, 2)  # timm's PatchMerging is NHWC in and out

    def _forward_to_stage(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        if stage == self.num_stages:
            return super()._forward_to_stage(x, stage)
        return run_until(self.model.forward_features, x, self.stage_module(stage)).permute(0, 3, 1, 2)


def timm_adapter(model: nn.Module) -> TimmAdapter:
    """The adapter for a timm classifier (Swin families get the post-merging taps)."""
    return TimmSwinAdapter(model) if isinstance(model, _timm_swin_classes()) else TimmAdapter(model)


def timm_data_config(cfg: dict, name: str) -> dict[str, Any]:
    """`TransformInfo` terms of a timm data config (`input_size`, `crop_pct`, `crop_mode`, `interpolation`, ...)."""
    height, width = cfg["input_size"][-2:]
    if height != width:
        logger.warning(
            "%s was trained on %dx%d images; hf_adautomix's transforms are square: using %d.",
            name,
            height,
            width,
            height,
        )
    crop_pct, mode = cfg.get("crop_pct") or 1.0, cfg.get("crop_mode", "center")
    if mode == "squash" and crop_pct == 1.0:
        crop_pct = None  # timm resizes to size x size
    elif mode != "center":
        logger.warning(
            "%s's crop_mode %r is approximated by a centre crop (crop_pct %s).", name, mode, crop_pct
        )
    return {
        "size": int(height),
        "crop_pct": crop_pct,
        "interpolation": interpolation_name(cfg.get("interpolation", "bilinear"), name),
        "mean": tuple(float(m) for m in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
    }
