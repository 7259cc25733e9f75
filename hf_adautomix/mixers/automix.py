"""AutoMix (Liu et al., ECCV 2022), a learned mixer, as in OpenMixup's `AutoMixup` + `PixelMixBlock`
(reference/adautomix-algorithm.md §7): its mix block `PixelMixBlock` and the `AutoMix` mixer. What it shares with
AdAutoMix lives in `learned`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import cross_entropy
from .learned import _init_conv, _LearnedMixer, _mix, _mix_ce, _upsample


class PixelMixBlock(nn.Module):
    """AutoMix's mix block (§7.2): one shared 1×1 conv as query and key (no activation), a value from the second
    image only; s = sigmoid(Upsample(softmax(QᵀK/√d) V₂)) is image 2's weight, 1 − s image 1's."""

    def __init__(
        self, in_channels: int, *, lam_concat: bool = False, upsample: str = "nearest", reduction: int = 2
    ):
        super().__init__()
        c = in_channels + int(lam_concat)
        self.dim = max(in_channels // reduction, 1)
        self.lam_concat = lam_concat
        self.upsample = upsample
        self.qk = nn.Conv2d(c, self.dim, 1)
        self.value = nn.Conv2d(c, 1, 1)
        _init_conv(self)

    def forward(self, feats: torch.Tensor, lam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        n, b, _, h, w = feats.shape
        if n != 2:
            raise ValueError(f"AutoMix mixes pairs; got {n} feature maps.")
        with torch.autocast(device_type=feats.device.type, enabled=False):
            z = feats.float()
            if self.lam_concat:
                z = torch.cat([z, lam.float().view(2, 1, 1, 1, 1).expand(2, b, 1, h, w)], dim=2)
            q = self.qk(z[0]).flatten(2)
            k = self.qk(z[1]).flatten(2)
            v = self.value(z[1]).flatten(2)  # (B, 1, hw)
            a = (q.transpose(1, 2) @ k / math.sqrt(self.dim)).softmax(dim=-1)  # (B, hw_q, hw_k)
            logit = (a @ v.transpose(1, 2)).view(b, 1, h, w)
            s = torch.sigmoid(_upsample(logit, size, self.upsample))
            return torch.cat([1 - s, s], dim=1)


class AutoMix(_LearnedMixer):
    """AutoMix as in OpenMixup's `AutoMixup` + `PixelMixBlock` (§7): pairs, two independent Beta(2, 2) ratios,
    always-cooperative mix block trained on the teacher's mixup CE plus the L1 mask-area loss."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        mix_head: nn.Module | None,
        mix_layer: int = 3,
        alpha: float = 2.0,
        lam_margin: float = 0.08,
        lam_concat: bool = False,
        upsample: str = "nearest",
        mask_loss_weight: float = 0.1,
        mask_loss_margin: float = 0.1,
        label_smoothing: float = 0.0,
    ):
        super().__init__(
            num_classes=num_classes,
            mix_head=mix_head,
            mix_layer=mix_layer,
            alpha=alpha,
            lam_margin=lam_margin,
            label_smoothing=label_smoothing,
            generator=PixelMixBlock(in_channels, lam_concat=lam_concat, upsample=upsample),
        )
        if mask_loss_weight < 0:
            raise ValueError(f"mask_loss_weight must be >= 0, got {mask_loss_weight}.")
        self.mask_loss_weight, self.mask_loss_margin = mask_loss_weight, mask_loss_margin

    @classmethod
    def from_args(cls, args, *, num_classes, label_smoothing, classifier):
        return cls(
            num_classes=num_classes,
            in_channels=classifier.stage_channels(args.mix_layer),
            mix_head=None if args.share_mix_head else classifier.new_head(),
            mix_layer=args.mix_layer,
            alpha=args.mix_alpha or 2.0,
            lam_margin=0.08 if args.lam_margin is None else args.lam_margin,
            lam_concat=args.lam_concat,
            upsample="nearest" if args.mask_upsample == "auto" else args.mask_upsample,
            mask_loss_weight=args.mask_loss_weight,
            label_smoothing=label_smoothing,
        )

    def forward(self, x, y, classifier, *, teacher, step: int, backward=None):
        """One iteration (§7.1). `backward`: back-propagate each online-classifier pass's loss as soon as it is
        built (activations freed early); the returned `loss` then carries only the generator's graph (value: the
        total). Same gradients as one backward of the total, the paths being disjoint (see `AdAutoMix.forward`)."""
        early = backward is not None and torch.is_grad_enabled()
        b, size, eps = x.shape[0], x.shape[-2:], self.label_smoothing
        g = self.beta((2,))
        lam_mb = torch.stack([g[0], 1 - g[0]]).to(x.device)
        lam_bb = torch.stack([g[1], 1 - g[1]]).to(x.device)
        ident = torch.arange(b)
        pi = torch.stack([ident, torch.randperm(b)]).to(x.device)
        sigma = torch.stack([ident, torch.randperm(b)]).to(x.device)
        head_k = self.head_k(teacher)

        teacher.train(True)
        with torch.no_grad():
            # Only the tapped map is used: stop there where that is exact (`stop_teacher_early`).
            stop = self.stop_teacher_early(teacher)
            fmap = teacher.forward_features(x, stage=self.mix_layer, stop_at_stage=stop).stage_map
        masks_mb = self.generator(fmap[pi], lam_mb, size)
        with torch.no_grad():
            masks_bb = self.generator(fmap[sigma], lam_bb, size)
            l0 = float(g[1])  # the CPU draw: no device sync
            if l0 <= self.lam_margin or l0 >= 1 - self.lam_margin:
                masks_bb = lam_bb.float().view(1, 2, 1, 1).expand_as(masks_bb).clone()
            x_bb = _mix(x, sigma, masks_bb)

        loss_one = cross_entropy(classifier(x), y, eps)
        if early:
            backward(loss_one)
            loss_one = loss_one.detach()
        loss_mix = _mix_ce(
            self.head_q(classifier)(classifier.forward_features(x_bb).pooled), y, sigma, lam_bb, eps
        )
        if early:
            backward(loss_mix)
            loss_mix = loss_mix.detach()
        x_mb = _mix(x, pi, masks_mb)
        loss_k = _mix_ce(head_k(teacher.forward_features(x_mb).pooled), y, pi, lam_mb, eps)
        teacher.train(False)
        # L1 mask-area loss with margin, on the batch-mean of image 1's mask (§7.1).
        loss_mask = self.mask_loss_weight * F.relu(
            (masks_mb[:, 0].mean() - lam_mb[0]).abs() - self.mask_loss_margin
        )

        self._capture(x, pi, x_mb, lam_mb)
        # The classifier's loss (logged as the step loss) and the generator's objective, kept apart; the total is
        # the same sum in the same order as before: ((L_mix + L_one) + L_k) + L_mask.
        loss_classifier = loss_mix + loss_one
        total = loss_classifier + loss_k + loss_mask
        return {
            "loss": total,
            "loss_classifier": loss_classifier.detach(),
            "loss_theta": (loss_k + loss_mask).detach(),
            "loss_one": loss_one.detach(),
            "loss_gen": loss_mix.detach(),
            "loss_teacher": loss_k.detach(),
            "loss_mask": loss_mask.detach(),
            **self._stats(masks_mb, lam_mb),
        }
