"""The classifier adapter interface: what every layer above knows of a model, whatever its library.

Everything above this layer (mixers, the `MixupModel` wrapper, the trainer) sees only `ClassifierAdapter`:

* `adapter(x)` -> logits of the model's own head;
* `adapter.forward_features(x, stage=k)` -> `Features(pooled, logits, stage_map)`, where `pooled` is the input
  of the model's own head (so a second head of the same shape can be put on it) and `stage_map` is stage k's
  output in NCHW;
* `adapter.head` -> the model's own classifier module (applied to `pooled`);
* `adapter.stage_module(k)` -> the module whose output is stage k (for hooks, e.g. ManifoldMix);
* `adapter.export(dir, ...)` -> the model in its library's own format, with its preprocessing and class names;
* `adapter.data_facts()`, `adapter.is_pretrained`, `adapter.own_label_names()`, `adapter.load_snippets(name)`:
  the family facts the data pipeline, the export and the model card need, as plain values.

A family is one subclass (`timm.py`, `transformers.py`); nothing outside this package branches on a family.

Stages are numbered from 1 as in the papers (ResNet "layer3" is stage 3) and are found through each library's own
metadata: timm's `feature_info`, transformers' `hidden_states` (index 0 is the stem, index k is stage k). Swin's
stage k ends with its patch merging (the original layout, the released AdAutoMix's and transformers'), in timm too,
where the merging opens stage k + 1 (`TimmSwinAdapter`).
"""

from __future__ import annotations

import abc
import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

logger = logging.getLogger(__name__)


class Features(NamedTuple):
    pooled: torch.Tensor  # input of the classification head
    logits: torch.Tensor  # output of the model's own head
    stage_map: torch.Tensor | None  # requested stage's feature map, NCHW


# The resize interpolations the tensor transforms (and the exported image processor) share.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def interpolation_name(name: str, model: str) -> str:
    """`name` lower-cased if the transforms know it, else "bicubic" with a warning naming `model`."""
    name = str(name).lower()
    if name not in INTERPOLATIONS:
        logger.warning(
            "%s's interpolation %r is not one of %s; using 'bicubic'.", model, name, sorted(INTERPOLATIONS)
        )
        return "bicubic"
    return name


class ClassifierAdapter(nn.Module, metaclass=abc.ABCMeta):
    """Base class. `self.model` is the user's model, the thing that is exported."""

    family: str = ""  # recorded in artefacts (generator config); never branched on outside this package
    library_name: str = ""  # the Hub's `library_name` of an export

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

    @abc.abstractmethod
    def export(
        self,
        save_directory: str,
        *,
        label_names: list[str] | None = None,
        preprocessing: dict[str, Any] | None = None,
        processor=None,
    ) -> None:
        """The model in its library's own format, loadable without hf_adautomix where the family allows it.

        Args:
            save_directory: the folder.
            label_names: class names by index.
            preprocessing: the eval preprocessing in `TransformInfo` terms (`size`, `mean`, `std`, `crop_pct`: None
                resizes to size x size, `interpolation`), for families that record it in their own config.
            processor: an image processor to save beside the model, for families that use one.
        """

    # -- family facts, as plain values -----------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def is_pretrained(self) -> bool:
        """Whether the model was loaded from a checkpoint, as far as the model object tells."""

    @abc.abstractmethod
    def pretrained_data_config(self) -> dict[str, Any] | None:
        """The eval preprocessing the model was trained with, as its library records it:
        `{"size", "crop_pct", "interpolation", "mean", "std"}` in `TransformInfo` terms, or None."""

    @abc.abstractmethod
    def own_label_names(self) -> list[str] | None:
        """The model's own class names (one per class), or None when it has none of its own."""

    @abc.abstractmethod
    def load_snippets(self, name: str) -> str:
        """Markdown: how to load the export `name` (a folder or Hub id) in each loader that takes it."""

    @property
    def has_cifar_stem(self) -> bool:
        """Whether the model is one of our `--cifar_stem` variants (3x3 stride-1 stem)."""
        return False

    @property
    def pretrained_hub_id(self) -> str | None:
        """The Hub id of the released weights the model was created with, when its library records one."""
        return None

    @property
    @abc.abstractmethod
    def needs_fixed_size(self) -> bool:
        """Whether the model takes only one input size (absolute position embeddings, fixed windows)."""

    def fixed_input_size(self) -> int | None:
        """The image side the model needs, or None when it takes any size (convolutional networks, CIFAR-stem
        variants included: a nominal 224 only says what the architecture is usually trained at)."""
        if not self.needs_fixed_size:
            return None
        height, width = self.input_size
        if height != width:
            raise ValueError(
                f"{type(self.model).__name__} needs {height}x{width} inputs; hf_adautomix's transforms make square "
                "images."
            )
        return int(height)

    def data_facts(self, pretrained: bool | None = None) -> dict[str, Any]:
        """What the data pipeline needs to know of the model (`data.resolve_transforms`), as plain values.

        Args:
            pretrained: whether the weights are pretrained; None reads `is_pretrained` (timm does not record
                `create_model(name, pretrained=True)`: pass True for such a model).

        Returns:
            `{"fixed_size": int | None, "pretrained_config": dict | None, "cifar_stem": bool}`.
        """
        pretrained = self.is_pretrained if pretrained is None else pretrained
        return {
            "fixed_size": self.fixed_input_size(),
            "pretrained_config": self.pretrained_data_config() if pretrained else None,
            "cifar_stem": self.has_cifar_stem,
        }

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
    """Raised by the tap hook of `run_until` to end a forward at the tapped stage."""


def check_stop(stage: int | None) -> None:
    if stage is None:
        raise ValueError("stop_at_stage=True needs a stage to stop at; got stage=None.")


def run_until(run: Callable[[torch.Tensor], object], x: torch.Tensor, module: nn.Module):
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


def to_nchw(t: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    if t.ndim == 4 and channels is not None and t.shape[1] != channels and t.shape[-1] == channels:
        return t.permute(0, 3, 1, 2).contiguous()  # NHWC
    return t
