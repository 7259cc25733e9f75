"""`--mixup timm`: timm's own `timm.data.Mixup`, for users who know its flags.

The one mixer that does not draw from the torch RNG: timm's `Mixup` draws from numpy's RNG (which `Trainer`
checkpoints too).
"""

from __future__ import annotations

import torch

from .base import Mixer, soft_cross_entropy


def parse_minmax(text: str | None, name: str = "--timm_cutmix_minmax") -> tuple[float, float] | None:
    """'lo,hi' -> (lo, hi) with 0 < lo < hi <= 1 (None passes through)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        lo, hi = (float(v) for v in (text.split(",") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 'low,high' (two numbers), got {name}={text!r}.") from None
    if not 0 < lo < hi <= 1:
        raise ValueError(f"{name} must satisfy 0 < low < high <= 1, got {name}={text!r}.")
    return lo, hi


class TimmMixup(Mixer):
    """`--mixup timm`: timm's own `timm.data.Mixup` (MixUp/CutMix switching, batch/pair/elem modes), for users who
    know its flags. It always gets our `num_classes` and label smoothing; the loss is the soft-target CE of
    `timm.loss.SoftTargetCrossEntropy`. timm pairs image i with image B−1−i, so the batch size must be even.
    `mix_prob` is passed as timm's `prob`. timm draws from numpy's RNG (which `Trainer` checkpoints too).

    Args:
        mixup_alpha, cutmix_alpha, cutmix_minmax, switch_prob, mode: timm's `Mixup` arguments.
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "timm"

    def __init__(
        self,
        *,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        cutmix_minmax: tuple[float, float] | None = None,
        switch_prob: float = 0.5,
        mode: str = "batch",
        num_classes: int,
        label_smoothing: float = 0.0,
        mix_prob: float = 1.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {name}={value!r}.")
        if cutmix_minmax is not None:
            cutmix_minmax = parse_minmax(cutmix_minmax, "cutmix_minmax")
        if mixup_alpha == 0 and cutmix_alpha == 0 and cutmix_minmax is None:
            raise ValueError(
                "timm Mixup needs mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax; got "
                f"mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}, cutmix_minmax=None."
            )
        if not 0 <= switch_prob <= 1:
            raise ValueError(f"switch_prob must be in [0, 1], got switch_prob={switch_prob!r}.")
        if mode not in ("batch", "pair", "elem"):
            raise ValueError(f"mode must be 'batch', 'pair' or 'elem', got mode={mode!r}.")
        from timm.data import Mixup

        self.mixup = Mixup(
            mixup_alpha=float(mixup_alpha),
            cutmix_alpha=float(cutmix_alpha),
            cutmix_minmax=cutmix_minmax,
            prob=mix_prob,
            switch_prob=switch_prob,
            mode=mode,
            correct_lam=True,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )

    @classmethod
    def from_args(cls, args, *, num_classes, label_smoothing, classifier):
        return cls(
            mixup_alpha=args.timm_mixup_alpha,
            cutmix_alpha=args.timm_cutmix_alpha,
            cutmix_minmax=parse_minmax(args.timm_cutmix_minmax),
            switch_prob=args.timm_switch_prob,
            mode=args.timm_mode,
            num_classes=num_classes,
            label_smoothing=label_smoothing,
            mix_prob=args.mix_prob,
        )

    def extra_repr(self) -> str:
        m = self.mixup
        return (
            f"mixup_alpha={m.mixup_alpha}, cutmix_alpha={m.cutmix_alpha}, cutmix_minmax={m.cutmix_minmax}, "
            f"switch_prob={m.switch_prob}, mode={m.mode!r}, prob={m.mix_prob}"
        )

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets); `x` is not modified (timm mixes in place, so on a copy)."""
        if x.shape[0] % 2:
            raise ValueError(
                f"--mixup timm needs an even batch size (timm's Mixup pairs image i with image B-1-i), got a batch of "
                f"{x.shape[0]}. Use an even --per_device_train_batch_size and --dataloader_drop_last True, so the "
                "last, smaller batch is dropped."
            )
        return self.mixup(x.clone(), y)

    def forward(self, x, y, classifier):
        x_mix, target = self.mix(x, y)
        return {"loss": soft_cross_entropy(classifier(x_mix), target)}
