"""MixUp and Manifold Mixup: λx + (1 − λ)x[perm] on the input or on a hidden map, λ ~ Beta(α, α) once per batch
(OpenMixup's implementation, `reference/adautomix-algorithm.md` §10)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import (
    InputMixer,
    Mixer,
    _BetaMixin,
    _check_positive,
    _randint,
    mix_target,
    sample_beta,
    soft_cross_entropy,
)


class MixUp(_BetaMixin, InputMixer):
    """MixUp (Zhang et al., ICLR 2018): x̃ = λx + (1 − λ)x[perm], λ ~ Beta(α, α) once per batch.

    Args:
        alpha: α of Beta(α, α).
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "mixup"

    def __init__(
        self, *, alpha: float = 1.0, num_classes: int, label_smoothing: float = 0.0, mix_prob: float = 1.0
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.alpha = _check_positive("alpha", alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, mix_prob={self.mix_prob}"

    def get_params(self, x, y):
        return {"lam": sample_beta(self.alpha), "perm": torch.randperm(x.shape[0], device=x.device)}

    def apply(self, x, y, params):
        lam, perm = float(params["lam"]), params["perm"]
        return torch.lerp(x[perm], x, lam), mix_target(y, perm, lam, self.num_classes, self.label_smoothing)


class ManifoldMix(_BetaMixin, Mixer):
    """Manifold Mixup (Verma et al., ICML 2019): mix the hidden maps at a random layer k ∈ `layers`,
    h̃ = λh + (1 − λ)h[perm]; layer 0 is the input, k ≥ 1 the output of stage k (through the classifier adapter's
    `mix_at_stage` hook, shape-agnostic: CNN maps and token sequences alike).

    Args:
        alpha: α of Beta(α, α).
        layers: the layers k is drawn from (OpenMixup: {0, 1, 2}).
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "manifoldmix"

    def __init__(
        self,
        *,
        alpha: float = 2.0,
        layers: tuple[int, ...] = (0, 1, 2),
        num_classes: int,
        label_smoothing: float = 0.0,
        mix_prob: float = 1.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.alpha = _check_positive("alpha", alpha)
        layers = tuple(layers) if isinstance(layers, list | tuple) else layers
        if (
            not isinstance(layers, tuple)
            or not layers
            or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in layers)
        ):
            raise ValueError(
                f"layers must be a non-empty tuple of layer indices >= 0, got layers={layers!r}."
            )
        self.layers = layers

    @classmethod
    def _arch_kwargs(cls, args, classifier):
        stages = getattr(classifier, "num_stages", None)
        return {} if stages is None else {"layers": tuple(k for k in (0, 1, 2) if k <= stages)}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, layers={self.layers}, mix_prob={self.mix_prob}"

    def get_params(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        return {
            "lam": sample_beta(self.alpha),
            "perm": torch.randperm(x.shape[0], device=x.device),
            "layer": self.layers[_randint(0, len(self.layers))],
        }

    def mixed_logits(
        self, x: torch.Tensor, y: torch.Tensor, classifier: nn.Module, params: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward with the mix at `params["layer"]`; returns (logits, soft targets)."""
        lam, perm, layer = float(params["lam"]), params["perm"], int(params["layer"])

        def mix(h: torch.Tensor) -> torch.Tensor:
            return torch.lerp(h[perm], h, lam)

        if layer == 0:
            logits = classifier(mix(x))
        else:
            if not hasattr(classifier, "mix_at_stage"):
                raise TypeError(
                    f"ManifoldMix at layer {layer} needs a classifier adapter with `mix_at_stage` "
                    f"(hf_adautomix.backbones.wrap_classifier), got {type(classifier).__name__}."
                )
            with classifier.mix_at_stage(layer, mix):
                logits = classifier(x)
        return logits, mix_target(y, perm, lam, self.num_classes, self.label_smoothing)

    def forward(self, x, y, classifier):
        if self.skip():
            return self.clean_loss(x, y, classifier)
        params = self.get_params(x, y)
        logits, target = self.mixed_logits(x, y, classifier, params)
        return {"loss": soft_cross_entropy(logits, target), "lam": torch.tensor(float(params["lam"]))}
