"""The interface every mixer implements, and the label/loss helpers they share.

A mixer is an `nn.Module` that knows nothing about the training loop (timm's `Mixup` is the model): given a
normalised image batch `x` (B, C, H, W), integer labels `y` (B,) and the classifier adapter, it returns a dict of
named loss terms whose `"loss"` entry is what is back-propagated. Other entries are detached scalars that the
trainer logs (λ, mask statistics, ...). Hand-crafted mixers split sampling from applying
(torchvision v2's `_get_params` / `_transform`), so tests can pin the parameters.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def one_hot(y: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Float one-hot targets, label-smoothed as timm does: off = ε/K, on = 1 − ε + ε/K."""
    off = smoothing / num_classes
    target = torch.full((y.shape[0], num_classes), off, device=y.device, dtype=torch.float32)
    return target.scatter_(1, y.long().view(-1, 1), 1.0 - smoothing + off)


def mix_target(
    y: torch.Tensor, perm: torch.Tensor, lam: float | torch.Tensor, num_classes: int, smoothing: float = 0.0
) -> torch.Tensor:
    """λ·t(y) + (1−λ)·t(y[perm]); `lam` is a float or a per-sample (B,) tensor (the weight of `y`)."""
    t = one_hot(y, num_classes, smoothing)
    lam = torch.as_tensor(lam, dtype=torch.float32, device=y.device)
    if lam.ndim == 1:
        lam = lam.view(-1, 1)
    return lam * t + (1 - lam) * t[perm]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch mean of −Σ_k target_k · log softmax(logits)_k, in fp32."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Plain (label-smoothed) CE on integer labels, in fp32."""
    return F.cross_entropy(logits.float(), y, label_smoothing=smoothing)


class Mixer(nn.Module, metaclass=abc.ABCMeta):
    """Base class of all mixers.

    Args:
        num_classes: number of classes K of the soft targets.
        label_smoothing: ε of label smoothing applied to every one-hot target before mixing.
        mix_prob: probability that a batch is mixed; other batches train on clean images.
    """

    #: learned mixers own trainable modules and need an EMA teacher
    learned: bool = False

    def __init__(self, *, num_classes: int, label_smoothing: float = 0.0, mix_prob: float = 1.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        if not 0.0 <= mix_prob <= 1.0:
            raise ValueError(f"mix_prob must be in [0, 1], got {mix_prob}.")
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mix_prob = mix_prob

    @classmethod
    def from_args(cls, args, *, num_classes: int, label_smoothing: float, classifier) -> Mixer:
        """Build from `MixupArguments` (`args`) and the classifier adapter (for per-architecture defaults)."""
        return cls(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=args.mix_prob)

    def skip(self) -> bool:
        """True when this batch should not be mixed (drawn from the torch RNG, so it resumes exactly)."""
        return self.mix_prob < 1.0 and bool(torch.rand(()) >= self.mix_prob)

    def clean_loss(self, x: torch.Tensor, y: torch.Tensor, classifier: nn.Module) -> dict[str, torch.Tensor]:
        return {"loss": cross_entropy(classifier(x), y, self.label_smoothing)}

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, y: torch.Tensor, classifier: nn.Module) -> dict[str, torch.Tensor]: ...


class NoMix(Mixer):
    """`--mixup none`: plain (label-smoothed) cross-entropy on clean images."""

    def forward(self, x, y, classifier):
        return self.clean_loss(x, y, classifier)


class InputMixer(Mixer):
    """A hand-crafted mixer that mixes input images: sample parameters, apply them, soft-target CE."""

    @abc.abstractmethod
    def get_params(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Sample this batch's parameters (λ, permutation, boxes, masks...). Uses the torch RNG only."""
        ...

    @abc.abstractmethod
    def apply(
        self, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix `x` with `params`; returns (mixed images, soft targets (B, K))."""

    def forward(self, x, y, classifier):
        if self.skip():
            return self.clean_loss(x, y, classifier)
        params = self.get_params(x, y)
        x_mix, target = self.apply(x, y, params)
        out = {"loss": soft_cross_entropy(classifier(x_mix), target)}
        lam = params.get("lam")
        if lam is not None:
            out["lam"] = torch.as_tensor(lam, dtype=torch.float32).mean().detach()
        return out
