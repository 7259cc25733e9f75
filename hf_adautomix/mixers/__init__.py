"""Mixers: one module per method (or tight family), and `MIXERS`, the registry from `--mixup` name to class.

`MIXERS` below is the one place that lists the mixers (`CLASSIC_MIXERS` is derived from it):

* `base`: `Mixer`, `NoMix`, `InputMixer`, `MaskMixer`, and the label/loss/sampling helpers they share;
* `adautomix`: `AdAutoMix` (learned), its generator `AdaptiveMask` in `generator`;
* `automix`: `AutoMix` (learned) and its mix block `PixelMixBlock`;
* `learned`: what the two learned mixers share (`_LearnedMixer`, the N-way mix and mixed CE);
* `mixup`: `MixUp`, `ManifoldMix`;
* `box`: `CutMix`, `SaliencyMix`, `ResizeMix`;
* `fmix`: `FMix`; `gridmix`: `GridMix`; `smoothmix`: `SmoothMix`;
* `puzzlemix`: `PuzzleMix` (its graph-cut solver in `_graphcut`);
* `timm_mix`: `TimmMixup` (timm's own `Mixup`).

The hand-crafted ("classic") mixers follow OpenMixup's implementation, the one that produced the AdAutoMix paper's
baselines (`reference/adautomix-algorithm.md` §10): **one λ, one permutation and one box/mask per batch**
(PuzzleMix: one mask per sample), x̃ = mask ⊙ x + (1 − mask) ⊙ x[perm], and the label weight of `y` is the fraction
of x's own content in x̃, measured on the mask actually used (after box clipping, grid rounding, FMix's top-k
binarisation), so the soft targets always match the pixels. Each module's docstring says where it differs from
OpenMixup, on purpose.

Sampling (`get_params`) is split from applying (`apply`), torchvision v2 style, so tests can pin the parameters.
All sampling uses the torch RNG (scalars on the CPU generator, permutations and masks on the batch's device), so
`Trainer`'s RNG checkpoint resumes a run exactly. The exceptions are `TimmMixup` (timm's `Mixup` draws from numpy,
which `Trainer` also checkpoints) and nothing else: PuzzleMix's graph cut is deterministic.
"""

from __future__ import annotations

from ._graphcut import alpha_beta_swap, grid_energy
from .adautomix import AdAutoMix
from .automix import AutoMix, PixelMixBlock
from .base import (
    DEFAULT_ALPHA,
    InputMixer,
    MaskMixer,
    Mixer,
    NoMix,
    cross_entropy,
    default_alpha,
    mix_target,
    one_hot,
    sample_beta,
    shuffle_index,
    soft_cross_entropy,
)
from .box import CutMix, ResizeMix, SaliencyMix
from .fmix import FMix
from .generator import AdaptiveMask
from .gridmix import GridMix
from .mixup import ManifoldMix, MixUp
from .puzzlemix import PuzzleMix, mask_transport, transport_image
from .smoothmix import SmoothMix
from .timm_mix import TimmMixup

#: `--mixup` name -> class: the one place listing every mixer (in the order of error messages and benchmarks).
MIXERS: dict[str, type[Mixer]] = {
    "none": NoMix,
    "adautomix": AdAutoMix,
    "automix": AutoMix,
    "mixup": MixUp,
    "cutmix": CutMix,
    "fmix": FMix,
    "resizemix": ResizeMix,
    "saliencymix": SaliencyMix,
    "gridmix": GridMix,
    "smoothmix": SmoothMix,
    "manifoldmix": ManifoldMix,
    "puzzlemix": PuzzleMix,
    "timm": TimmMixup,
}

#: the hand-crafted mixers: every entry of `MIXERS` but `none` and the learned ones
CLASSIC_MIXERS: dict[str, type[Mixer]] = {
    name: cls for name, cls in MIXERS.items() if cls is not NoMix and not cls.learned
}


def build_mixer(args, *, num_classes: int, label_smoothing: float, classifier) -> Mixer:
    """The mixer named by `args.mixup` (a `MixupArguments`), with its per-method/per-architecture defaults."""
    if args.mixup not in MIXERS:
        raise ValueError(f"Unknown --mixup '{args.mixup}'; choose one of {', '.join(MIXERS)}.")
    return MIXERS[args.mixup].from_args(
        args, num_classes=num_classes, label_smoothing=label_smoothing, classifier=classifier
    )


__all__ = [
    "CLASSIC_MIXERS",
    "DEFAULT_ALPHA",
    "MIXERS",
    "AdAutoMix",
    "AdaptiveMask",
    "AutoMix",
    "CutMix",
    "FMix",
    "GridMix",
    "InputMixer",
    "ManifoldMix",
    "MaskMixer",
    "MixUp",
    "Mixer",
    "NoMix",
    "PixelMixBlock",
    "PuzzleMix",
    "ResizeMix",
    "SaliencyMix",
    "SmoothMix",
    "TimmMixup",
    "alpha_beta_swap",
    "build_mixer",
    "cross_entropy",
    "default_alpha",
    "grid_energy",
    "mask_transport",
    "mix_target",
    "one_hot",
    "sample_beta",
    "shuffle_index",
    "soft_cross_entropy",
    "transport_image",
]
