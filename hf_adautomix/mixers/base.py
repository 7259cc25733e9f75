"""The interface every mixer implements, and the label/loss, sampling and validation helpers they share.

A mixer is an `nn.Module` that knows nothing about the training loop (timm's `Mixup` is the model): given a
normalised image batch `x` (B, C, H, W), integer labels `y` (B,) and the classifier adapter, it returns a dict of
named loss terms whose `"loss"` entry is what is back-propagated. Other entries are detached scalars that the
trainer logs (λ, mask statistics, ...). Hand-crafted mixers split sampling from applying
(torchvision v2's `_get_params` / `_transform`), so tests can pin the parameters.

The hand-crafted mixers draw from the torch RNG only (scalars on the CPU generator, permutations and masks on the
batch's device) through the helpers below, so `Trainer`'s RNG checkpoint resumes a run exactly.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

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


class MaskMixer(InputMixer):
    """An input mixer whose parameters are a permutation and a mask `mask` (1|B, 1, H, W) holding the weight of x's own
    content at each pixel: x̃ = mask ⊙ x + (1 − mask) ⊙ x[perm]; the weight of y is mean(mask)."""

    def apply(self, x, y, params):
        _check_images(x, type(self).__name__)
        perm, mask = params["perm"], params["mask"].to(device=x.device, dtype=x.dtype)
        # lerp is exact at weights 0 and 1, so hard masks copy pixels bit for bit
        x_mix = torch.lerp(x[perm], x, mask)
        lam = params["mask"].float().mean(dim=(1, 2, 3)).expand(x.shape[0])
        return x_mix, mix_target(y, perm, lam, self.num_classes, self.label_smoothing)


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the hand-crafted mixers: per-method default α, validation, sampling
# ---------------------------------------------------------------------------------------------------------------
#: α of Beta(α, α) per method, (CNNs: R18/RX50/WRN, transformer-like: DeiT/Swin/ConvNeXt), from OpenMixup's CIFAR-100
#: README (reference §10). SmoothMix has none: OpenMixup draws λ and discards it. ManifoldMix's second column is its
#: ConvNeXt value (the only transformer-like model it was run with).
DEFAULT_ALPHA: dict[str, tuple[float, float]] = {
    "mixup": (1.0, 0.8),
    "cutmix": (0.2, 2.0),
    "manifoldmix": (2.0, 2.0),
    "saliencymix": (0.2, 0.2),
    "fmix": (0.2, 1.0),
    "gridmix": (0.2, 1.0),
    "resizemix": (1.0, 1.0),
    "puzzlemix": (1.0, 2.0),
}


def default_alpha(method: str, classifier: nn.Module | None = None) -> float:
    """The §10 default α of `method` for the classifier's architecture family (CNN column when unknown)."""
    if method not in DEFAULT_ALPHA:
        raise ValueError(f"method {method!r} has no default alpha; expected one of {sorted(DEFAULT_ALPHA)}.")
    transformer = bool(getattr(classifier, "is_transformer_like", False))
    return DEFAULT_ALPHA[method][int(transformer)]


def _check_positive(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive number, got {name}={value!r}.")
    return float(value)


def _check_range(name: str, value: Any, lo: float, hi: float, *, integer: bool = False) -> tuple:
    """A (low, high) pair with lo <= low <= high <= hi (a single number means (v, v))."""
    pair = (value, value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    kind = int if integer else int | float
    if (
        not isinstance(pair, tuple | list)
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, kind) for v in pair)
        or not lo <= pair[0] <= pair[1] <= hi
    ):
        raise ValueError(
            f"{name} must be a number or a (low, high) pair with {lo} <= low <= high <= {hi}, "
            f"got {name}={value!r}."
        )
    return tuple(pair)


def sample_beta(alpha: float) -> float:
    """λ ~ Beta(α, α), drawn from the torch CPU generator."""
    a = torch.tensor(float(alpha))
    return float(torch.distributions.Beta(a, a, validate_args=False).sample())


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high)."""
    return int(torch.randint(low, high, ()))


def shuffle_index(batch_size: int, device: torch.device | str, *, no_repeat_tries: int = 0) -> torch.Tensor:
    """A random permutation of the batch. With `no_repeat_tries` > 0, the first of that many draws that moves every
    sample (OpenMixup's `_no_repeat_shuffle_idx(ignore_failure=True)`), the last draw if none does; vectorised, so no
    device sync."""
    if no_repeat_tries <= 0 or batch_size < 2:
        return torch.randperm(batch_size, device=device)
    perms = torch.rand(no_repeat_tries, batch_size, device=device).argsort(dim=1)
    moved = (perms != torch.arange(batch_size, device=device)).all(dim=1)
    first = torch.where(moved.any(), moved.int().argmax(), torch.tensor(no_repeat_tries - 1, device=device))
    return perms[first]


def _check_images(x: torch.Tensor, who: str) -> None:
    if x.ndim != 4:
        raise ValueError(
            f"{who} expects a batch of images of shape (B, C, H, W), got shape {tuple(x.shape)}."
        )


class _BetaMixin:
    """`alpha` validation and `from_args` for the mixers that draw λ ~ Beta(α, α)."""

    method: ClassVar[str]

    @classmethod
    def _arch_kwargs(cls, args, classifier) -> dict[str, Any]:
        """Extra constructor arguments that depend on the architecture (e.g. ResizeMix's interpolation)."""
        return {}

    @classmethod
    def from_args(cls, args, *, num_classes: int, label_smoothing: float, classifier) -> Mixer:
        alpha = args.mix_alpha if args.mix_alpha is not None else default_alpha(cls.method, classifier)
        return cls(
            alpha=alpha,
            num_classes=num_classes,
            label_smoothing=label_smoothing,
            mix_prob=args.mix_prob,
            **cls._arch_kwargs(args, classifier),
        )
