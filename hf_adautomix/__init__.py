"""hf_adautomix: AdAutoMix, AutoMix and the classic mixup family for the Hugging Face training stack.

`import hf_adautomix` registers the CIFAR variants (so that their exports reload in timm and transformers) and
exposes the public names below; each is imported on first use, so that e.g. `import hf_adautomix.mixers` does not
pull in `transformers.Trainer` or `datasets`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {
    "AdAutoMixTrainer": "trainer",
    "DataTrainingArguments": "data",
    "EMASchedule": "modeling",
    "MixupArguments": "arguments",
    "MixupModel": "modeling",
    "ModelArguments": "arguments",
    "build_model": "backbones",
    "wrap_classifier": "backbones",
}

__all__ = [
    "AdAutoMixTrainer",
    "DataTrainingArguments",
    "EMASchedule",
    "MixupArguments",
    "MixupModel",
    "ModelArguments",
    "build_model",
    "wrap_classifier",
]
assert sorted(__all__) == sorted(_LAZY)

if TYPE_CHECKING:
    from .arguments import MixupArguments, ModelArguments
    from .backbones import build_model, wrap_classifier
    from .data import DataTrainingArguments
    from .modeling import EMASchedule, MixupModel
    from .trainer import AdAutoMixTrainer


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def _register() -> None:
    from .backbones.cifar import register_cifar_variants

    register_cifar_variants()


_register()
