"""Mixers: a plain dict registry from `--mixup` name to class."""

from __future__ import annotations

from .automix import AdaptiveMask, AdAutoMix, AutoMix, PixelMixBlock
from .base import InputMixer, Mixer, NoMix, cross_entropy, mix_target, one_hot, soft_cross_entropy
from .classic import CLASSIC_MIXERS

MIXERS: dict[str, type[Mixer]] = {"none": NoMix, "adautomix": AdAutoMix, "automix": AutoMix, **CLASSIC_MIXERS}


def build_mixer(args, *, num_classes: int, label_smoothing: float, classifier) -> Mixer:
    """The mixer named by `args.mixup` (a `MixupArguments`), with its per-method/per-architecture defaults."""
    if args.mixup not in MIXERS:
        raise ValueError(f"Unknown --mixup '{args.mixup}'; choose one of {', '.join(MIXERS)}.")
    return MIXERS[args.mixup].from_args(
        args, num_classes=num_classes, label_smoothing=label_smoothing, classifier=classifier
    )


__all__ = [
    "MIXERS",
    "AdAutoMix",
    "AdaptiveMask",
    "AutoMix",
    "PixelMixBlock",
    "build_mixer",
    "InputMixer",
    "Mixer",
    "NoMix",
    "cross_entropy",
    "mix_target",
    "one_hot",
    "soft_cross_entropy",
]
