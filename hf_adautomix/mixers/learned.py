"""What the two learned mixers share: the `_LearnedMixer` base (mix head and its EMA copy, generator, the teacher's
feature tap, λ sampling, logged mask statistics, the captured mix grid), the N-way mix and mixed CE, and the init and
upsampling used by both mix blocks (AdAutoMix's `generator.AdaptiveMask`, AutoMix's `automix.PixelMixBlock`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, cross_entropy


def _init_conv(module: nn.Module) -> None:
    # Released init: every conv weight ~ N(0, 0.01), bias 0 (overwrites mmcv's Kaiming init, §3).
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _upsample(logits: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    # The factor is the feature stride, derived from the shapes (input size / feature size), never hand-set.
    if mode == "nearest":
        return F.interpolate(logits, size=size, mode="nearest")
    return F.interpolate(logits, size=size, mode=mode, align_corners=False)


def _mix(x: torch.Tensor, perms: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """x̃_i = Σ_n M_{i,n} ⊙ x[perm_n(i)] (each mask channel broadcast over RGB)."""
    return sum(masks[:, n : n + 1].to(x.dtype) * x[perms[n]] for n in range(perms.shape[0]))


def _mix_ce(logits: torch.Tensor, y: torch.Tensor, perms: torch.Tensor, lam: torch.Tensor, smoothing: float):
    """CE_λ(z; Y) = Σ_n λ_n · CE(z, y[perm_n]) (each CE a batch mean)."""
    return sum(lam[n] * cross_entropy(logits, y[perms[n]], smoothing) for n in range(perms.shape[0]))


def _train_forward_is_pure(model: nn.Module) -> bool:
    """Whether a train-mode forward of `model` changes nothing but its output: no BatchNorm running statistics to
    update and no dropout / drop-path / drop-block that draws random numbers. Only then may the teacher's clean
    pass stop at the tapped stage without changing the teacher's buffers or the RNG stream (conservative: any
    such module anywhere in the model counts, not only after the tapped stage)."""
    for m in model.modules():
        # Duck-typed: batch/instance norms tracking running statistics, and torch's dropouts (`p`, `inplace`).
        if getattr(m, "track_running_stats", False) and getattr(m, "running_mean", None) is not None:
            return False
        if hasattr(m, "inplace") and isinstance(getattr(m, "p", None), float) and m.p > 0:
            return False
        if any(float(getattr(m, a, 0.0) or 0.0) > 0 for a in ("drop_prob", "drop_rate", "drop_path_rate")):
            return False
    return True


class _LearnedMixer(Mixer):
    """Shared machinery: mix head (+ its EMA copy), generator, the teacher's feature tap."""

    learned = True

    def __init__(
        self,
        *,
        num_classes: int,
        generator: nn.Module,
        mix_head: nn.Module | None,
        mix_layer: int,
        alpha: float,
        lam_margin: float,
        label_smoothing: float = 0.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing)
        if alpha <= 0:
            raise ValueError(f"alpha (Beta α_B) must be > 0, got {alpha}.")
        if not 0 <= lam_margin < 0.5:
            raise ValueError(f"lam_margin must be in [0, 0.5), got {lam_margin}.")
        self.generator = generator
        self.mix_head = mix_head  # None: the model's own head serves mixed images too (--share_mix_head)
        self.mix_head_teacher = (
            copy.deepcopy(mix_head).requires_grad_(False) if mix_head is not None else None
        )
        self.mix_layer = mix_layer
        self.alpha = alpha
        self.lam_margin = lam_margin
        self.capture = False  # set by the trainer's callback when a PNG grid of this step's mixes is wanted
        # Whether the teacher's clean feature pass may stop at the tapped stage when its logits are unused:
        # "auto" only where that is exact (`_train_forward_is_pure`: no BN running statistics, no random
        # draws, so the teacher's buffers and the RNG stream stay as they were), "always", or "never". With BN
        # teachers (ResNets) "always" drops the clean batch from the later stages' running statistics of the
        # teacher (what an EMA export evaluates with), so "auto" keeps the full pass there.
        self.teacher_stop_early = "auto"
        self._pure_teacher: dict[int, bool] = {}
        self.last_mix: dict[str, torch.Tensor] | None = None

    def attach(self, classifier, teacher) -> None:
        classifier.check_stage(self.mix_layer)

    def ema_pairs(self):
        return [(self.mix_head, self.mix_head_teacher)] if self.mix_head is not None else []

    def generator_parameters(self):
        return list(self.generator.parameters())

    def stop_teacher_early(self, teacher) -> bool:
        """Whether the teacher's clean pass may end at the tapped stage (see `teacher_stop_early`)."""
        if self.teacher_stop_early not in ("auto", "always", "never"):
            raise ValueError(
                f"teacher_stop_early must be auto, always or never; got '{self.teacher_stop_early}'."
            )
        if self.teacher_stop_early != "auto":
            return self.teacher_stop_early == "always"
        if id(teacher) not in self._pure_teacher:
            self._pure_teacher[id(teacher)] = _train_forward_is_pure(teacher)
        return self._pure_teacher[id(teacher)]

    def head_q(self, classifier):
        return self.mix_head if self.mix_head is not None else classifier.head

    def head_k(self, teacher):
        return self.mix_head_teacher if self.mix_head_teacher is not None else teacher.head

    def beta(self, shape) -> torch.Tensor:
        a = torch.tensor(float(self.alpha))
        return torch.distributions.Beta(a, a).sample(shape)

    def _stats(self, masks: torch.Tensor, lam: torch.Tensor) -> dict[str, torch.Tensor]:
        mean = masks.detach().float().mean(dim=(0, 2, 3))
        ent = -(masks.detach().float().clamp_min(1e-12).log() * masks.detach().float()).sum(1).mean()
        return {
            "mask_mean_1": mean[0],
            "lam_1": lam[0].detach().float(),
            "mask_lam_gap": (mean - lam.float().to(mean.device)).abs().mean(),
            "mask_entropy": ent,
        }

    def _capture(self, x, perms, x_mix, lam):
        if self.capture:
            self.last_mix = {
                "sources": torch.stack([x[p[:4]] for p in perms]).detach().float().cpu(),
                "mixes": x_mix[:4].detach().float().cpu(),
                "lam": lam.detach().float().cpu(),
            }
