"""Classifier adapters: the only place that knows model families (timm, transformers, our CIFAR variants).

`base.py` is the interface every layer above uses; `timm.py` and `transformers.py` are the families; `cifar.py`
registers the CIFAR variants; `build.py` builds, wraps and loads models. A new family is one adapter module.
"""

from .base import INTERPOLATIONS, ClassifierAdapter, Features, interpolation_name
from .build import build_model, load_export, parse_config_overrides, wrap_classifier
from .cifar import TIMM_CIFAR_ARCHS, cifar_stem_timm, register_cifar_variants, register_timm_cifar
from .timm import TimmAdapter, TimmSwinAdapter
from .transformers import TransformersAdapter

__all__ = [
    "INTERPOLATIONS",
    "TIMM_CIFAR_ARCHS",
    "ClassifierAdapter",
    "Features",
    "TimmAdapter",
    "TimmSwinAdapter",
    "TransformersAdapter",
    "build_model",
    "cifar_stem_timm",
    "interpolation_name",
    "load_export",
    "parse_config_overrides",
    "register_cifar_variants",
    "register_timm_cifar",
    "wrap_classifier",
]
