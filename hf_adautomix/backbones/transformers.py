"""The transformers family: `TransformersAdapter` over `*ForImageClassification` (stages from `hidden_states`,
export with `save_pretrained`, preprocessing from the saved image processor)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

from .base import ClassifierAdapter, Features, check_stop, interpolation_name, run_until

logger = logging.getLogger(__name__)


class TransformersAdapter(ClassifierAdapter):
    """Any `*ForImageClassification` whose base model returns per-stage `hidden_states` and whose head is
    `model.classifier` (ResNet, ConvNeXt, ConvNeXtV2, Swin, Swinv2, RegNet, MobileNet, EfficientNet, ...)."""

    family = "transformers"
    library_name = "transformers"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        if not isinstance(getattr(model, "classifier", None), nn.Module):
            raise ValueError(
                f"{type(model).__name__} has no `classifier` head module; hf_adautomix supports "
                "*ForImageClassification models whose head is `model.classifier`."
            )
        self._num_stages: int | None = None
        self._stage_modules: list[nn.Module] | None = None

    @property
    def num_classes(self) -> int:
        return self.model.config.num_labels

    @property
    def arch_name(self) -> str:
        return str(self.model.config.model_type)

    @property
    def input_size(self) -> tuple[int, int]:
        size = getattr(self.model.config, "image_size", None) or 64
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def head(self) -> nn.Module:
        return self.model.classifier

    @property
    def num_stages(self) -> int:
        if self._num_stages is None:
            depths = getattr(self.model.config, "depths", None)
            if depths:
                self._num_stages = len(depths)
            else:  # count the stage hidden states of one tiny eval-mode forward (index 0 is the stem)
                was_training = self.model.training
                self.model.eval()
                try:
                    with torch.no_grad():
                        p = next(self.model.parameters())
                        x = torch.zeros(1, 3, *self.input_size, device=p.device, dtype=p.dtype)
                        hidden = self.model(
                            pixel_values=x, output_hidden_states=True, return_dict=True
                        ).hidden_states
                finally:
                    self.model.train(was_training)
                if not hidden:
                    raise ValueError(
                        f"{type(self.model).__name__} returns no hidden_states, so stage features "
                        "cannot be tapped."
                    )
                self._num_stages = len(hidden) - 1
        return self._num_stages

    def _stage_list(self) -> list[nn.Module]:
        if self._stage_modules is None:
            encoder = getattr(self.model.base_model, "encoder", None)
            for name in ("stages", "layers", "layer", "blocks"):
                mods = getattr(encoder, name, None)
                if isinstance(mods, nn.ModuleList) and len(mods) > 0:
                    self._stage_modules = list(mods)
                    break
            else:
                raise ValueError(
                    f"{type(self.model).__name__} does not return stage hidden states through an encoder with "
                    "`stages`/`layers`, so stage features cannot be tapped."
                )
        return self._stage_modules

    def stage_module(self, stage: int) -> nn.Module:
        self.check_stage(stage)
        return self._stage_list()[stage - 1]

    def _stage_output_is_map(self, stage: int) -> bool:
        """Whether stage `stage`'s module returns its `hidden_states[stage]` map as a plain 4-D tensor (ResNet,
        ConvNeXt, ...), so that a forward can stop there; read once from a tiny eval-mode forward."""
        cache = self.__dict__.setdefault("_stage_is_map", {})
        if stage not in cache:
            seen = []
            handle = self.stage_module(stage).register_forward_hook(lambda _m, _i, out: seen.append(out))
            was_training = self.training
            self.eval()
            try:
                with torch.no_grad():
                    p = next(self.parameters())
                    x = torch.zeros(1, 3, *self.input_size, device=p.device, dtype=p.dtype)
                    full = self.forward_features(x, stage=stage).stage_map
            finally:
                handle.remove()
                self.train(was_training)
            out = seen[-1] if seen else None
            cache[stage] = (
                isinstance(out, torch.Tensor) and out.shape == full.shape and torch.equal(out, full)
            )
        return cache[stage]

    def forward_features(
        self, x: torch.Tensor, stage: int | None = None, *, stop_at_stage: bool = False
    ) -> Features:
        if stop_at_stage:
            check_stop(stage)
            self.check_stage(stage)
            if self._stage_output_is_map(stage):
                run = lambda t: self.model(pixel_values=t, return_dict=True)  # noqa: E731
                return Features(None, None, run_until(run, x, self.stage_module(stage)))
            # The stage's output is not the NCHW map itself (Swin: a tuple, reshaped by the model): run it all.
            return Features(None, None, self.forward_features(x, stage=stage).stage_map)
        captured = {}

        def grab(_module, inputs):
            captured["pooled"] = inputs[0]

        handle = self.model.classifier.register_forward_pre_hook(grab)
        try:
            # Soft labels are never passed to an HF model (hf-ecosystem §5.3): logits only, our own loss.
            out = self.model(pixel_values=x, output_hidden_states=stage is not None, return_dict=True)
        finally:
            handle.remove()
        stage_map = None
        if stage is not None:
            self.check_stage(stage)
            hs = getattr(out, "reshaped_hidden_states", None) or out.hidden_states
            if hs is None or len(hs) < stage + 1:
                raise ValueError(f"{type(self.model).__name__} returned no hidden state for stage {stage}.")
            stage_map = hs[stage]
            if stage_map.ndim != 4:
                raise ValueError(
                    f"{type(self.model).__name__}'s stage {stage} hidden state has shape {tuple(stage_map.shape)}; "
                    "a spatial (B, C, H, W) map is needed for mask generation."
                )
        return Features(captured["pooled"], out.logits, stage_map)

    # -- family facts ----------------------------------------------------------------------------------------
    @property
    def is_pretrained(self) -> bool:
        return bool(getattr(self.model, "name_or_path", ""))  # empty for `from_config`

    @property
    def needs_fixed_size(self) -> bool:
        # ViT, DeiT, BEiT, Swin, ...: their forward takes `interpolate_pos_encoding`; a ConvNeXt's
        # `config.image_size` is unused.
        return "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters

    @property
    def has_cifar_stem(self) -> bool:
        return self.arch_name == "cifar_resnet"

    def pretrained_data_config(self) -> dict[str, Any] | None:
        """From the image processor saved with the checkpoint (`AutoImageProcessor.from_pretrained(name_or_path)`);
        None when there is none or it is not one hf_adautomix can reproduce."""
        path = getattr(self.model, "name_or_path", "")
        if not path:
            return None
        name = type(self.model).__name__
        try:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.info(
                "No image processor with %s (%s); the transform recipe decides the preprocessing.", path, err
            )
            return None
        if isinstance(
            getattr(processor, "data_config", None), dict
        ):  # TimmWrapperImageProcessor: a timm config
            from .timm import timm_data_config

            return timm_data_config(processor.data_config, name)
        return _processor_data_config(processor, name)

    def own_label_names(self) -> list[str] | None:
        n = self.num_classes
        id2label = self.model.config.id2label or {}
        own = [str(id2label.get(i, f"LABEL_{i}")) for i in range(n)]
        return None if own == [f"LABEL_{i}" for i in range(n)] else own

    def export(
        self,
        save_directory: str,
        *,
        label_names: list[str] | None = None,
        preprocessing: dict[str, Any] | None = None,
        processor=None,
    ) -> None:
        """`save_native` plus `processor` (`preprocessor_config.json`), where transformers keeps the preprocessing;
        `preprocessing` is carried by the processor."""
        self.save_native(save_directory, label_names=label_names)
        if processor is not None and hasattr(processor, "save_pretrained"):
            processor.save_pretrained(save_directory)

    def load_snippets(self, name: str) -> str:
        custom = self.has_cifar_stem
        remote = ", trust_remote_code=True" if custom else ""
        note = (
            "Needs `pip install transformers torch` only: the CIFAR ResNet's code travels with the checkpoint "
            "(`trust_remote_code=True`; with `import hf_adautomix` it is not needed).\n\n"
            if custom
            else "Needs `pip install transformers torch`; nothing else.\n\n"
        )
        return (
            f"{note}```python\nfrom transformers import pipeline\n\n"
            f'classifier = pipeline("image-classification", model="{name}"{remote})\n```\n\n'
            "```python\nfrom transformers import AutoImageProcessor, AutoModelForImageClassification\n\n"
            f'processor = AutoImageProcessor.from_pretrained("{name}")\n'
            f'model = AutoModelForImageClassification.from_pretrained("{name}"{remote})\n```'
        )

    def save_native(
        self, save_directory: str, label_names: list[str] | None = None, data_config: dict | None = None
    ) -> None:
        """`save_pretrained` (`config.json` + `model.safetensors`; the CIFAR ResNet's code file too).

        Args:
            save_directory: the folder.
            label_names: class names by index, written as the saved config's `id2label` / `label2id` (the model's
                own config is left as it was).
            data_config: unused (transformers models carry their preprocessing in `preprocessor_config.json`).
        """
        from ..cifar_models import CifarResNetForImageClassification

        if isinstance(self.model, CifarResNetForImageClassification):
            # Ship the architecture's code with the checkpoint (auto_map), so that it also loads without
            # hf_adautomix, with trust_remote_code=True.
            self.model.config.register_for_auto_class()
            self.model.register_for_auto_class("AutoModelForImageClassification")
        config = self.model.config
        if label_names is not None and len(label_names) != self.num_classes:
            raise ValueError(
                f"label_names has {len(label_names)} names, but the model has {self.num_classes} classes."
            )
        saved = (config.id2label, config.label2id)
        if label_names:
            config.id2label = dict(enumerate(label_names))
            config.label2id = {name: i for i, name in enumerate(label_names)}
        try:
            self.model.save_pretrained(save_directory)
        finally:
            config.id2label, config.label2id = saved


def _processor_data_config(processor, name: str) -> dict[str, Any] | None:
    """`TransformInfo` terms of a transformers image processor: ConvNeXt's `crop_pct`, a short-side resize plus
    centre crop (ResNet, BiT, CLIP, ...), or a resize to height x width (ViT, Swin, ...); None for anything else."""
    size, crop = processor.size or {}, getattr(processor, "crop_size", None) or {}
    short = size["shortest_edge"] if "shortest_edge" in size else None
    square = size["height"] if "height" in size and size["height"] == size["width"] else None
    do_crop = (
        getattr(processor, "do_center_crop", False) and "height" in crop and crop["height"] == crop["width"]
    )
    if getattr(processor, "crop_pct", None) is not None and short is not None:
        # ConvNextImageProcessor: below 384 resize to short / crop_pct and crop short; from 384 on, warp.
        out = {"size": short, "crop_pct": processor.crop_pct if short < 384 else None}
    elif do_crop and (short is not None or square is not None):
        out = {"size": crop["height"], "crop_pct": crop["height"] / (short or square)}
        if short is None:
            logger.warning(
                "%s's image processor warps to %dx%d before its crop; using a short-side resize.",
                name,
                square,
                square,
            )
    elif square is not None and not getattr(processor, "do_center_crop", False):
        out = {"size": square, "crop_pct": None}
    else:
        logger.warning(
            "%s's image processor (%s, size %s) is not one hf_adautomix can reproduce; the transform "
            "recipe decides the preprocessing.",
            name,
            type(processor).__name__,
            dict(size),
        )
        return None
    resample = getattr(processor, "resample", None)
    if getattr(processor, "do_normalize", True):
        mean = (
            processor.image_mean
            if isinstance(processor.image_mean, (list, tuple))
            else [processor.image_mean] * 3
        )
        std = (
            processor.image_std
            if isinstance(processor.image_std, (list, tuple))
            else [processor.image_std] * 3
        )
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return {
        **out,
        "size": int(out["size"]),
        "interpolation": interpolation_name(_resample_name(resample), name),
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(v) for v in std),
    }


def _resample_name(resample) -> str:
    """ "bicubic" for `PILImageResampling.BICUBIC`, its int 3 (as a saved processor reloads it) or
    `InterpolationMode.BICUBIC`."""
    from transformers.image_utils import PILImageResampling

    if resample is None:
        return "bilinear"
    if isinstance(resample, int):  # PILImageResampling is an IntEnum
        return PILImageResampling(resample).name
    return str(getattr(resample, "value", resample))
