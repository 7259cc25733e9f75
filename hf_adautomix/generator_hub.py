"""The trained mask generator of a learned mixer (AdAutoMix's `AdaptiveMask`, AutoMix's `PixelMixBlock`) as an
artefact of its own: `config.json` (the generator's constructor arguments, the tapped backbone stage, N, the
backbone architecture) and `model.safetensors`, through `huggingface_hub.PyTorchModelHubMixin`, so it also has
`push_to_hub` and loads from a Hub id:

    save_generator(trainer, "out/generator")
    generator = load_generator("out/generator")     # a GeneratorArtifact (nn.Module), in eval mode
    masks = generator(feats, lam, (32, 32))         # feats (N, B, C, h, w) of `generator.config["mix_layer"]`
"""

from __future__ import annotations

import os

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .checkpoints import umask_modes

GENERATOR_DIR = "generator"

# The generator classes an artefact may name (looked up in `hf_adautomix.mixers`; nothing else is instantiated).
GENERATOR_CLASSES = ("AdaptiveMask", "PixelMixBlock")

_CARD = """
---
{{ card_data }}
---

# Mask generator trained with hf_adautomix

A learned mixer's mask generator (AdAutoMix's `AdaptiveMask` or AutoMix's `PixelMixBlock`), saved on its own to
be reused: it turns the stage-`mix_layer` feature maps of N images and their ratios λ into N masks that sum to 1 at
every pixel. `config.json` names the backbone and stage it was trained on.

```python
from hf_adautomix.generator_hub import load_generator

generator = load_generator("this/folder-or-repo")
masks = generator(feats, lam, (height, width))  # feats: (N, B, C, h, w), lam: (N,) -> masks (B, N, H, W)
```
"""


def _generator_class(name: str) -> type[nn.Module]:
    from . import mixers

    if name not in GENERATOR_CLASSES:
        raise ValueError(f"Unknown generator class {name!r}; expected one of {', '.join(GENERATOR_CLASSES)}.")
    return getattr(mixers, name)


class GeneratorArtifact(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="hf_adautomix",
    tags=["hf_adautomix", "mixup", "mask-generator"],
    model_card_template=_CARD,
):
    """A learned mixer's generator with what is needed to reuse it. `forward` is the generator's.

    Args:
        generator_class: "AdaptiveMask" (AdAutoMix) or "PixelMixBlock" (AutoMix).
        in_channels: C of the tapped feature map.
        lam_concat / upsample / reduction: the generator's constructor options.
        method: the `--mixup` method that trained it.
        mix_layer: the backbone stage whose feature maps it takes (1-based, as `--mix_layer`).
        mix_num: N, the number of images mixed (the largest N with `mix_num_random`).
        mix_num_random: whether N was drawn from {2..mix_num} each step.
        alpha: α of the Beta(α, α) the ratios were drawn from.
        backbone: the classifier it was trained with (family, arch, num_classes, input_size, stage channels).
    """

    def __init__(
        self,
        *,
        generator_class: str,
        in_channels: int,
        lam_concat: bool = False,
        upsample: str = "bilinear",
        reduction: int = 2,
        method: str = "adautomix",
        mix_layer: int = 3,
        mix_num: int = 2,
        mix_num_random: bool = False,
        alpha: float = 1.0,
        backbone: dict | None = None,
    ):
        super().__init__()
        self.config = {
            "generator_class": generator_class,
            "in_channels": in_channels,
            "lam_concat": lam_concat,
            "upsample": upsample,
            "reduction": reduction,
            "method": method,
            "mix_layer": mix_layer,
            "mix_num": mix_num,
            "mix_num_random": mix_num_random,
            "alpha": alpha,
            "backbone": backbone or {},
        }
        cls = _generator_class(generator_class)
        self.generator = cls(in_channels, lam_concat=lam_concat, upsample=upsample, reduction=reduction)

    def forward(self, feats: torch.Tensor, lam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Masks (B, N, H, W) for feats (N, B, C, h, w) and lam (N,)."""
        return self.generator(feats, lam, size)


def generator_config(source) -> dict:
    """The `GeneratorArtifact` arguments that rebuild the generator of `source` (an `AdAutoMixTrainer`, a
    `MixupModel` or a learned mixer)."""
    model = getattr(source, "model", source)  # trainer -> MixupModel
    mixer = getattr(model, "mixer", model)  # MixupModel -> mixer
    generator = getattr(mixer, "generator", None)
    if generator is None or type(generator).__name__ not in GENERATOR_CLASSES:
        raise ValueError(
            f"{type(mixer).__name__} has no learned generator to save (only --mixup adautomix / automix have one)."
        )
    lam_concat = bool(generator.lam_concat)
    in_channels = generator.value.in_channels - int(lam_concat)
    reduction = max(in_channels // generator.dim, 1)
    if (
        max(in_channels // reduction, 1) != generator.dim
    ):  # the constructor's rule: dim = max(C // reduction, 1)
        raise ValueError(
            f"Cannot recover the generator's reduction from C={in_channels} and dim={generator.dim}."
        )
    classifier = getattr(model, "classifier", None)
    backbone = {}
    if classifier is not None:
        backbone = {
            "family": classifier.family,
            "arch": classifier.arch_name,
            "num_classes": classifier.num_classes,
            "input_size": list(classifier.input_size),
            "stage": mixer.mix_layer,
            "stage_channels": in_channels,
        }
    return {
        "generator_class": type(generator).__name__,
        "in_channels": in_channels,
        "lam_concat": lam_concat,
        "upsample": generator.upsample,
        "reduction": reduction,
        "method": "adautomix" if type(generator).__name__ == "AdaptiveMask" else "automix",
        "mix_layer": int(mixer.mix_layer),
        "mix_num": int(getattr(mixer, "mix_num", 2)),
        "mix_num_random": bool(getattr(mixer, "mix_num_random", False)),
        "alpha": float(mixer.alpha),
        "backbone": backbone,
    }


def save_generator(source, save_directory: str) -> str:
    """Save the generator of `source` (an `AdAutoMixTrainer`, a `MixupModel` or a learned mixer) to
    `save_directory` (`config.json`, `model.safetensors`, `README.md`). Returns the folder.

    Touches neither the RNG nor the model: the artefact is built under `fork_rng` (module init draws from the RNG),
    so saving during training keeps a resumed run exact.
    """
    config = generator_config(source)
    model = getattr(source, "model", source)
    generator = getattr(model, "mixer", model).generator
    with torch.random.fork_rng(devices=[]):
        artifact = GeneratorArtifact(**config)
    with torch.no_grad():
        state = {k: v.detach().to("cpu", copy=True) for k, v in generator.state_dict().items()}
    artifact.generator.load_state_dict(state)
    os.makedirs(save_directory, exist_ok=True)
    artifact.save_pretrained(save_directory)
    umask_modes(save_directory)  # safetensors writes 0600; the user's umask, as for the export
    return save_directory


def load_generator(path: str, *, map_location: str = "cpu", **hub_kwargs) -> GeneratorArtifact:
    """Load a generator saved by `save_generator` (a folder, or a Hub id: `hub_kwargs` go to `from_pretrained`),
    in eval mode. Every weight must be there (strict)."""
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path} holds no generator: config.json is missing (save it with save_generator).")
    with torch.random.fork_rng(devices=[]):  # the throw-away init draws from the RNG
        return GeneratorArtifact.from_pretrained(path, map_location=map_location, strict=True, **hub_kwargs)
