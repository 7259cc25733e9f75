"""Classifier adapters: one small interface over timm models and transformers `*ForImageClassification`.

Everything above this layer (mixers, the `MixupModel` wrapper, the trainer) sees only `ClassifierAdapter`:

* `adapter(x)` -> logits of the model's own head;
* `adapter.forward_features(x, stage=k)` -> `Features(pooled, logits, stage_map)`, where `pooled` is the input
  of the model's own head (so a second head of the same shape can be put on it) and `stage_map` is stage k's
  output in NCHW;
* `adapter.head` -> the model's own classifier module (applied to `pooled`);
* `adapter.stage_module(k)` -> the module whose output is stage k (for hooks, e.g. ManifoldMix);
* `adapter.save_native(dir)` -> the model in its library's own format.

Stages are numbered from 1 as in the papers (ResNet "layer3" is stage 3) and are found through each library's own
metadata: timm's `feature_info`, transformers' `hidden_states` (index 0 is the stem, index k is stage k). Swin's
stage k ends with its patch merging (the original layout, the released AdAutoMix's and transformers'), in timm too,
where the merging opens stage k + 1 (`TimmSwinAdapter`).
"""

from __future__ import annotations

import abc
import contextlib
import copy
import importlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import nn

logger = logging.getLogger(__name__)


class Features(NamedTuple):
    pooled: torch.Tensor  # input of the classification head
    logits: torch.Tensor  # output of the model's own head
    stage_map: torch.Tensor | None  # requested stage's feature map, NCHW


class ClassifierAdapter(nn.Module, metaclass=abc.ABCMeta):
    """Base class. `self.model` is the user's model, the thing that is exported."""

    family: str = ""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    # -- interface -------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def num_classes(self) -> int: ...

    @property
    @abc.abstractmethod
    def num_stages(self) -> int: ...

    @property
    @abc.abstractmethod
    def arch_name(self) -> str:
        """Architecture name (timm architecture or transformers model_type), e.g. for per-family defaults."""
        ...

    @property
    def is_transformer_like(self) -> bool:
        """ViT/Swin/ConvNeXt-style models, whose mixup defaults differ from CNNs' (OpenMixup tables)."""
        return any(k in self.arch_name.lower() for k in ("vit", "deit", "swin", "convnext", "beit", "eva"))

    @property
    @abc.abstractmethod
    def head(self) -> nn.Module: ...

    @abc.abstractmethod
    def stage_module(self, stage: int) -> nn.Module: ...

    @abc.abstractmethod
    def forward_features(
        self, x: torch.Tensor, stage: int | None = None, *, stop_at_stage: bool = False
    ) -> Features:
        """Pooled features, logits and (with `stage`) stage `stage`'s map. `stop_at_stage=True` (needs `stage`)
        returns only the map, `Features(None, None, stage_map)`, and may skip what comes after the stage (later
        stages, pooling, head) where the family allows it; the map is the same tensor either way."""

    @abc.abstractmethod
    def save_native(self, save_directory: str, **kwargs) -> None: ...

    # -- shared helpers --------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).logits

    def stage_channels(self, stage: int) -> int:
        """Channels of stage `stage`'s map, read from one tiny eval-mode forward (no parameter changes)."""
        self.check_stage(stage)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                p = next(self.parameters())
                x = torch.zeros(1, 3, *self.input_size, device=p.device, dtype=p.dtype)
                return int(self.forward_features(x, stage=stage).stage_map.shape[1])
        finally:
            self.train(was_training)

    @property
    @abc.abstractmethod
    def input_size(self) -> tuple[int, int]: ...

    def check_stage(self, stage: int) -> None:
        if not 1 <= stage <= self.num_stages:
            raise ValueError(
                f"Stage {stage} does not exist: {type(self.model).__name__} has stages 1..{self.num_stages} "
                f"(stage 3 is ResNet's 'layer3'); set --mix_layer to one of them."
            )

    def new_head(self) -> nn.Module:
        """A freshly initialised copy of the model's own head (the AdAutoMix/AutoMix 'mix head')."""
        head = copy.deepcopy(self.head)
        for m in head.modules():
            if isinstance(m, nn.Linear):  # N(0, 0.01) weights, zero bias, as the released heads
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        return head

    @contextlib.contextmanager
    def mix_at_stage(self, stage: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Within the context, replace stage `stage`'s output h by fn(h) (tuple outputs: the first element)."""
        self.check_stage(stage)

        def hook(_module, _inputs, output):
            if isinstance(output, tuple):
                return (fn(output[0]), *output[1:])
            if hasattr(output, "last_hidden_state"):  # transformers ModelOutput
                output.last_hidden_state = fn(output.last_hidden_state)
                return output
            return fn(output)

        handle = self.stage_module(stage).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


class _StageReached(Exception):
    """Raised by the tap hook of `_run_until` to end a forward at the tapped stage."""


def _check_stop(stage: int | None) -> None:
    if stage is None:
        raise ValueError("stop_at_stage=True needs a stage to stop at; got stage=None.")


def _run_until(run: Callable[[torch.Tensor], object], x: torch.Tensor, module: nn.Module):
    """`module`'s output in `run(x)`, ending the forward there: nothing after it runs (no compute, no BN buffer
    update, no random draw). The families without a native early exit (transformers, timm Swin's merging tap)
    get one from a forward hook that raises once it has the output."""
    captured = []

    def hook(_module, _inputs, output):
        captured.append(output)
        raise _StageReached

    handle = module.register_forward_hook(hook)
    try:
        run(x)
    except _StageReached:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"{type(module).__name__} did not run in the forward; cannot stop there.")
    return captured[-1]


def _to_nchw(t: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    if t.ndim == 4 and channels is not None and t.shape[1] != channels and t.shape[-1] == channels:
        return t.permute(0, 3, 1, 2).contiguous()  # NHWC
    return t


# ---------------------------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------------------------
class TimmAdapter(ClassifierAdapter):
    family = "timm"

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
            _check_stop(stage)
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
        return final, _to_nchw(inter[0], self._info[stage - 1]["num_chs"])

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
        return _to_nchw(inter[0], self._info[stage - 1]["num_chs"])

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
        return _run_until(self.model.forward_features, x, self.stage_module(stage)).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------------------------
class TransformersAdapter(ClassifierAdapter):
    """Any `*ForImageClassification` whose base model returns per-stage `hidden_states` and whose head is
    `model.classifier` (ResNet, ConvNeXt, ConvNeXtV2, Swin, Swinv2, RegNet, MobileNet, EfficientNet, ...)."""

    family = "transformers"

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
            _check_stop(stage)
            self.check_stage(stage)
            if self._stage_output_is_map(stage):
                run = lambda t: self.model(pixel_values=t, return_dict=True)  # noqa: E731
                return Features(None, None, _run_until(run, x, self.stage_module(stage)))
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
        from .cifar_models import CifarResNetForImageClassification

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


def _timm_adapter(model: nn.Module) -> TimmAdapter:
    return TimmSwinAdapter(model) if isinstance(model, _timm_swin_classes()) else TimmAdapter(model)


def wrap_classifier(model: nn.Module) -> ClassifierAdapter:
    """The adapter for a user's model (an adapter is returned unchanged)."""
    if isinstance(model, ClassifierAdapter):
        return model
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        if model.config.model_type == "timm_wrapper":
            return _timm_adapter(model.timm_model)
        return TransformersAdapter(model)
    if hasattr(model, "pretrained_cfg") and hasattr(model, "forward_head"):
        return _timm_adapter(model)
    raise TypeError(
        f"Unsupported model type {type(model).__name__}: pass a transformers *ForImageClassification model or a "
        "timm classifier (timm.create_model(...))."
    )


# ---------------------------------------------------------------------------------------------------------------
# Building models (offline-first)
# ---------------------------------------------------------------------------------------------------------------
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
        from timm.models._hub import load_state_dict_from_hf

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


for _arch in ("resnet18", "resnet34", "resnet50", "resnext50_32x4d", "convnext_tiny", "convnext_atto"):
    with contextlib.suppress(Exception):
        register_timm_cifar(_arch)


def _register_hf_cifar() -> None:
    from transformers import AutoConfig, AutoModelForImageClassification

    from .cifar_models import CifarResNetConfig, CifarResNetForImageClassification

    with contextlib.suppress(ValueError):
        AutoConfig.register(CifarResNetConfig.model_type, CifarResNetConfig)
        AutoModelForImageClassification.register(CifarResNetConfig, CifarResNetForImageClassification)


_register_hf_cifar()


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
    label2id = {v: k for k, v in id2label.items()}
    overrides = parse_config_overrides(config_overrides)

    if timm_model or (model_name_or_path and _is_timm_id(model_name_or_path)):
        import timm

        name = timm_model or model_name_or_path
        if os.path.isdir(name):
            name = "local-dir:" + name
        kwargs = dict(overrides)
        if image_size and _timm_takes_img_size(name):
            kwargs.setdefault("img_size", image_size)
        try:
            if cifar_stem:
                model = timm.create_model(
                    register_timm_cifar(name), pretrained=pretrained, num_classes=num_labels, **kwargs
                )
            else:
                model = timm.create_model(
                    name, pretrained=pretrained or bool(model_name_or_path), num_classes=num_labels, **kwargs
                )
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ValueError(f"timm has no architecture '{name}' (see timm.list_models()).") from e
            raise _offline_error(name, e) from e
        except (OSError, ValueError) as e:
            raise _offline_error(name, e) from e
        model.pretrained_cfg = {
            **model.pretrained_cfg,
            "label_names": [id2label[i] for i in range(num_labels)],
        }
        return model

    from transformers import AutoConfig, AutoModelForImageClassification

    common = dict(
        num_labels=num_labels,
        id2label=id2label,
        label2id=label2id,
        problem_type="single_label_classification",
    )
    if model_type:
        if model_type == "resnet" and cifar_stem:
            model_type = "cifar_resnet"
        try:
            config = AutoConfig.for_model(model_type, **overrides, **common)
        except ValueError as e:
            raise ValueError(f"--model_type '{model_type}' is not a transformers architecture: {e}") from e
        if cifar_stem and model_type in ("convnext", "convnextv2"):
            config.patch_size = 1  # stride-1 stem: stage 3 is 8x8 on 32x32 images, as in the paper's variant
        if image_size and hasattr(config, "image_size"):
            config.image_size = image_size
        return AutoModelForImageClassification.from_config(config)
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
