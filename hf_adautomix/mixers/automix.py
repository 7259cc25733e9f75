"""Learned mixers: AdAutoMix (Qin et al., ICLR 2024) and AutoMix (Liu et al., ECCV 2022).

Both follow the released code (reference/adautomix-algorithm.md §2-§7) unless an option says otherwise. One call
of `forward` is one training iteration: it samples N, λ and image sets, taps the EMA teacher's stage features,
generates two sets of masks (mb: trains the generator, judged by the teacher; bb: detached, trains the
classifier) and returns every loss term. Gradient paths are disjoint (§2.4): the classifier's losses never reach
the generator (bb masks are made under `no_grad`) and the generator's loss reaches only the generator (the
teacher's parameters are frozen and the online classifier never sees the mb images).

Cheaper than the release without changing the maths (§9): the N cosine-reference teacher passes reuse the logits
of the teacher's clean feature pass (permuted; BN batch statistics do not depend on order), and the detached bb
masks are made under `no_grad`. Side effects, both on the teacher only: its BN running statistics get one clean
update per step instead of N+1, and Swin/ConvNeXt references share one drop-path draw.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, cross_entropy

logger = logging.getLogger(__name__)


class GradReverse(torch.autograd.Function):
    """Identity forward, −grad backward: the generator ascends what the classifier descends (paper variant)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def _init_conv(module: nn.Module) -> None:
    # Released init: every conv weight ~ N(0, 0.01), bias 0 (overwrites mmcv's Kaiming init, §3).
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv(conv: nn.Conv2d, z: torch.Tensor) -> torch.Tensor:
    # The conv at z's dtype (fp32: the module's own weights, unchanged; fp64: the NaN fallback), graph kept to θ.
    bias = None if conv.bias is None else conv.bias.to(z.dtype)
    return F.conv2d(z, conv.weight.to(z.dtype), bias)


def _upsample(logits: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    # The factor is the feature stride, derived from the shapes (input size / feature size), never hand-set.
    if mode == "nearest":
        return F.interpolate(logits, size=size, mode="nearest")
    return F.interpolate(logits, size=size, mode=mode, align_corners=False)


class AdaptiveMask(nn.Module):
    """AdAutoMix's generator G_θ (§3, paper Eq. 5-7): N-image cross-attention masks that sum to 1 at every pixel.

    Per image n: Q_n = ReLU(W_q Z_n), K_n = ReLU(W_k Z_n) (d = C/2 channels, 1×1 convs shared across images),
    V_n = W_v Z_n (1 channel). S_n = Q_nᵀ (Σ_{j≠n} K_j) / √d (the N−1 logit matrices summed, as released),
    m_n = softmax_keys(S_n) V_n. The logits [m_1..m_N] are upsampled to the image size, then softmaxed over the
    N images (released order; the paper takes the softmax first, §11 A4). Attention runs in fp32.

    Overflow and NaN, as released (§3): if the unscaled S_n holds ±inf anywhere in the batch, every entry of S_n is
    clamped to ±1e25 *before* the 1/√d scaling (so overflowed entries tie with the largest finite ones instead of
    ranking below them). A sample whose fp32 mask is NaN is recomputed in fp64; one that is NaN even in fp64 (a
    NaN in its feature map) gets the uniform mask 1/N, without a graph, so it cannot poison θ's gradient. For
    finite inputs whose attention logits stay within ±1e25 none of this changes a bit of the result.

    Args:
        in_channels: C of the tapped feature map.
        lam_concat: append a constant λ_n channel to Z_n.
        upsample: "bilinear" (released CNN configs) or "nearest" (ViT configs).
    """

    #: the release's bound for attention logits that overflowed
    clamp = 1e25

    def __init__(
        self, in_channels: int, *, lam_concat: bool = False, upsample: str = "bilinear", reduction: int = 2
    ):
        super().__init__()
        c = in_channels + int(lam_concat)
        self.dim = max(in_channels // reduction, 1)
        self.lam_concat = lam_concat
        self.upsample = upsample
        self.query = nn.Conv2d(c, self.dim, 1)
        self.key = nn.Conv2d(c, self.dim, 1)
        self.value = nn.Conv2d(c, 1, 1)
        _init_conv(self)

    def mask_logits(
        self, feats: torch.Tensor, lam: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """feats (N, B, C, h, w), lam (N,) -> per-image logits (B, N, h, w), before upsampling and softmax."""
        n, b, _, h, w = feats.shape
        z = feats.to(dtype)
        if self.lam_concat:
            z = torch.cat([z, lam.to(dtype).view(n, 1, 1, 1, 1).expand(n, b, 1, h, w)], dim=2)
        z = z.flatten(0, 1)  # (N*B, C', h, w)
        q = F.relu(_conv(self.query, z)).view(n, b, self.dim, h * w)
        k = F.relu(_conv(self.key, z)).view(n, b, self.dim, h * w)
        v = _conv(self.value, z).view(n, b, h * w)
        # Σ_{j≠n} Q_nᵀK_j = Q_nᵀ(Σ_j K_j − K_n): one matmul per image instead of N−1.
        s = torch.einsum("nbdp,nbdq->nbpq", q, k.sum(0, keepdim=True) - k)
        # Released clamp: S_n (the whole batch) with any ±inf is clamped everywhere, then scaled. Without ±inf the
        # `where` returns s untouched; it needs no device sync.
        has_inf = s.isinf().flatten(1).any(1).view(n, 1, 1, 1)
        s = torch.where(has_inf, s.clamp(-self.clamp, self.clamp), s) / math.sqrt(self.dim)
        m = torch.einsum("nbpq,nbq->nbp", s.softmax(dim=-1), v)
        return m.view(n, b, h, w).transpose(0, 1)

    def _masks(self, feats, lam, size, dtype) -> torch.Tensor:
        return _upsample(self.mask_logits(feats, lam, dtype), size, self.upsample).softmax(dim=1)

    def forward(self, feats: torch.Tensor, lam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Masks (B, N, H, W) in fp32, summing to 1 over N at every pixel."""
        with torch.autocast(device_type=feats.device.type, enabled=False):
            masks = self._masks(feats, lam, size, torch.float32)
            bad = masks.isnan().flatten(1).any(1)  # (B,)
            if not bool(bad.any()):  # one tiny device sync per call, as the release's NaN check
                return masks
            return self._nan_fallback(feats, lam, size, bad)

    def _nan_fallback(self, feats, lam, size, bad) -> torch.Tensor:
        """Samples are independent (1×1 convs, attention within a sample). The batch is recomputed in fp32 with the
        NaN samples' features zeroed (so the finite samples get the same numbers, and no NaN activation sits in the
        graph: a zero gradient through a NaN is still NaN); the NaN samples are recomputed on their own in fp64,
        and those still NaN there get the uniform mask 1/N, without a graph."""
        n = feats.shape[0]
        nan_rows = bad.nonzero().squeeze(1)
        with torch.no_grad():
            ok64 = ~self._masks(feats[:, nan_rows], lam, size, torch.float64).isnan().flatten(1).any(1)
        fixed = nan_rows[ok64]
        logger.warning(
            "AdAutoMix generator: NaN mask for %d sample(s) in fp32; recomputed in fp64 (%d finite, %d set to "
            "the uniform mask 1/N).",
            nan_rows.numel(),
            fixed.numel(),
            nan_rows.numel() - fixed.numel(),
        )
        clean = torch.where(bad.view(1, -1, 1, 1, 1), torch.zeros_like(feats), feats)
        masks = torch.where(bad.view(-1, 1, 1, 1), 1.0 / n, self._masks(clean, lam, size, torch.float32))
        if fixed.numel():
            masks = masks.index_put((fixed,), self._masks(feats[:, fixed], lam, size, torch.float64).float())
        return masks


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


def _mix(x: torch.Tensor, perms: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """x̃_i = Σ_n M_{i,n} ⊙ x[perm_n(i)] (each mask channel broadcast over RGB)."""
    return sum(masks[:, n : n + 1].to(x.dtype) * x[perms[n]] for n in range(perms.shape[0]))


def _mix_ce(logits: torch.Tensor, y: torch.Tensor, perms: torch.Tensor, lam: torch.Tensor, smoothing: float):
    """CE_λ(z; Y) = Σ_n λ_n · CE(z, y[perm_n]) (each CE a batch mean)."""
    return sum(lam[n] * cross_entropy(logits, y[perms[n]], smoothing) for n in range(perms.shape[0]))


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
        self.last_mix: dict[str, torch.Tensor] | None = None

    def attach(self, classifier, teacher) -> None:
        classifier.check_stage(self.mix_layer)

    def ema_pairs(self):
        return [(self.mix_head, self.mix_head_teacher)] if self.mix_head is not None else []

    def generator_parameters(self):
        return list(self.generator.parameters())

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


class AdAutoMix(_LearnedMixer):
    """AdAutoMix, released objective by default (§2); `variant="paper"` follows Eq. 11/15 instead (§11 A1/A2).

    Args:
        num_classes: K.
        in_channels: channels of the tapped teacher stage.
        mix_head: the added head for mixed images (None shares the model's head).
        mix_num: N (≥ 2); `mix_num_random` draws N from {2..mix_num} each step.
        alpha: α_B of Beta(α_B, α_B) (1.0).
        mce_weight: α, weight of the vanilla N-way mixup CE (0.5), clean CE gets 1 − α (N ≥ 3).
        adv_weight: β, weight of the adversarial teacher CE (0.3).
        lam_margin: m; within m of 0/1 the classifier branch uses vanilla mixup (0.03).
        lam_concat / upsample: generator options (§3).
        variant: "released" or "paper".
        separate_ref_passes: run the N cosine-reference teacher passes separately after the mixed pass and build the
            bb masks with a graph, exactly as released (the teacher's BN statistics then match the release bit for
            bit); the default shares the clean pass (§9.1), same maths, fewer passes.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        mix_head: nn.Module | None,
        mix_layer: int = 3,
        mix_num: int = 3,
        mix_num_random: bool = False,
        alpha: float = 1.0,
        mce_weight: float = 0.5,
        adv_weight: float = 0.3,
        lam_margin: float = 0.03,
        lam_concat: bool = False,
        upsample: str = "bilinear",
        variant: str = "released",
        label_smoothing: float = 0.0,
        separate_ref_passes: bool = False,
    ):
        if mix_num < 2:
            raise ValueError(f"mix_num must be >= 2, got {mix_num}.")
        if variant not in ("released", "paper"):
            raise ValueError(f"variant must be 'released' or 'paper', got '{variant}'.")
        super().__init__(
            num_classes=num_classes,
            mix_head=mix_head,
            mix_layer=mix_layer,
            alpha=alpha,
            lam_margin=lam_margin,
            label_smoothing=label_smoothing,
            generator=AdaptiveMask(in_channels, lam_concat=lam_concat, upsample=upsample),
        )
        self.mix_num, self.mix_num_random = mix_num, mix_num_random
        self.mce_weight, self.adv_weight, self.variant = mce_weight, adv_weight, variant
        self.separate_ref_passes = separate_ref_passes

    @classmethod
    def from_args(cls, args, *, num_classes, label_smoothing, classifier):
        return cls(
            num_classes=num_classes,
            in_channels=classifier.stage_channels(args.mix_layer),
            mix_head=None if args.share_mix_head else classifier.new_head(),
            mix_layer=args.mix_layer,
            mix_num=args.mix_num,
            mix_num_random=args.mix_num_random,
            alpha=args.mix_alpha or 1.0,
            mce_weight=args.mce_weight,
            adv_weight=args.adv_weight,
            lam_margin=0.03 if args.lam_margin is None else args.lam_margin,
            lam_concat=args.lam_concat,
            upsample="bilinear" if args.mask_upsample == "auto" else args.mask_upsample,
            variant=args.adautomix_variant,
            label_smoothing=label_smoothing,
            separate_ref_passes=args.teacher_ref_passes == "separate",
        )

    # -- sampling (§2.2) -------------------------------------------------------------------------------------
    def sample(self, batch_size: int, device) -> dict[str, torch.Tensor]:
        """N, λ^mb, λ^bb and the permutations π (mb) and σ (bb), all from the torch RNG."""
        n = int(torch.randint(2, self.mix_num + 1, ())) if self.mix_num_random else self.mix_num
        if n == 2:  # two independent ratios; the first member of each pair is the identity
            g = self.beta((2,))
            lam_mb, lam_bb = torch.stack([g[0], 1 - g[0]]), torch.stack([g[1], 1 - g[1]])
            ident = torch.arange(batch_size)
            pi = torch.stack([ident, torch.randperm(batch_size)])
            sigma = torch.stack([ident, torch.randperm(batch_size)])
        else:  # normalised i.i.d. Beta draws (not a Dirichlet), shared by both branches
            g = self.beta((n,))
            lam_mb = lam_bb = g / g.sum()
            pi = torch.stack([torch.randperm(batch_size) for _ in range(n)])
            sigma = torch.stack([torch.randperm(batch_size) for _ in range(n)])
        return {
            "n": n,
            "lam_mb": lam_mb.to(device),
            "lam_bb": lam_bb.to(device),
            "pi": pi.to(device),
            "sigma": sigma.to(device),
        }

    def margin_hit(self, lam_bb: torch.Tensor) -> bool:
        """JinXins' test (§11 B1): λ₁ ≤ m or λ₁ > 1 − m (N=2: λ ≤ m or 1 − λ ≤ m)."""
        l1, m = float(lam_bb[0]), self.lam_margin
        return l1 <= m or (1 - l1 <= m if lam_bb.numel() == 2 else l1 > 1 - m)

    # -- one iteration -----------------------------------------------------------------------------------------
    def forward(self, x, y, classifier, *, teacher, step: int, keep_graph: bool = False):
        """One iteration. `keep_graph` returns the loss terms with their autograd graphs, plus `loss_re` and both
        mask sets (`masks_bb`: the masks of the classifier's generated-mix input), so tests can check each term's
        gradient path (§12.2); the training step leaves it off.

        Released (§2.3): the classifier trains on the detached bb mixes of the image sets σ with λ^bb
        (L_gen = CE_λ^bb(h_mix_q(f_q(x̃^bb)); y[σ])), the vanilla mix L_van on the same σ, λ^bb; the generator on the
        mb mixes of π with λ^mb, judged by the teacher only. The λ-margin override swaps x̃^bb for the vanilla mix.

        Paper (`variant="paper"`): one image set X = {x[π_n]} and one λ = λ^mb (Eq. 8) feed every term. Classifier,
        Eq. 14: L_amce(ψ_W) (Eq. 3) on x_mix = G_θ(X, λ) + α·L_mce(ψ_W) (Eq. 4, vanilla Σλ_n x_n of the same X, for
        every N, §11 A8) + (1 − α)·L_ace (Eq. 2, = clean CE, §4). Generator, Eq. 15/16: ascent on
        L_amce(ψ_W) − β·L_amce(ψ_Ŵ) + (1 − β)·L_cos, i.e. gradient reversal on x_mix for the first term plus
        descent on β·L_k − (1 − β)·C. The λ-margin override (tested on λ^mb) feeds L_amce the vanilla mix instead of
        x_mix, as the release does for its classifier branch; on such a step θ gets only the teacher terms. No
        second (bb) generator call; σ and λ^bb are drawn (same RNG stream as released) but unused.
        """
        paper = self.variant == "paper"
        # Drawn on the CPU: the margin test reads λ without waiting for the device.
        p = self.sample(x.shape[0], "cpu")
        n, hit = p["n"], self.margin_hit(p["lam_mb" if paper else "lam_bb"])
        lam_mb, lam_bb, pi, sigma = (p[k].to(x.device) for k in ("lam_mb", "lam_bb", "pi", "sigma"))
        # The classifier's image sets and λ: σ, λ^bb as released; the one set π, λ^mb in the paper.
        lam_c, perms_c = (lam_mb, pi) if paper else (lam_bb, sigma)
        eps, size = self.label_smoothing, x.shape[-2:]
        head_k = self.head_k(teacher)

        # 1. Teacher clean pass, train mode as released (batch statistics, own BN buffers), no graph.
        teacher.train(True)
        with torch.no_grad():
            feats = teacher.forward_features(x, stage=self.mix_layer)
            ref_logits = head_k(feats.pooled)  # cosine references r_n = ref_logits[π_n] (shared pass, §9.1)
        fmap = feats.stage_map

        # 2. Generator: mb with graph; released also bb, detached (made under no_grad, §9.2).
        masks_mb = self.generator(fmap[pi], lam_mb, size)
        if not paper and self.separate_ref_passes:  # released: built with a graph, then detached (§11 B6)
            masks_bb = self.generator(fmap[sigma], lam_bb, size).detach()
        with torch.no_grad():
            if not paper and not self.separate_ref_passes:
                masks_bb = self.generator(fmap[sigma], lam_bb, size)
            if (
                hit
            ):  # the classifier's generated-mix input falls back to vanilla mixup, on every channel (§11 B3)
                masks_bb = lam_c.float().view(1, n, 1, 1).expand(x.shape[0], n, *size).clone()
            x_bb = _mix(x, perms_c, masks_bb) if (hit or not paper) else None
        if paper and not hit:
            masks_bb = masks_mb

        # 3. Classifier (online, three passes with their own BN statistics).
        loss_one = cross_entropy(classifier(x), y, eps)
        head_q = self.head_q(classifier)
        if n >= 3 or paper:
            x_van = _mix(x, perms_c, lam_c.float().view(1, n, 1, 1).expand(x.shape[0], n, *size))
            loss_van = _mix_ce(head_q(classifier.forward_features(x_van).pooled), y, perms_c, lam_c, eps)
            loss_re = (1 - self.mce_weight) * loss_one + self.mce_weight * loss_van
        else:
            loss_van = torch.zeros((), device=x.device)
            loss_re = loss_one

        x_mb = _mix(x, pi, masks_mb)
        # Paper, Eq. 14/15: the one generated set trains the classifier (descent) and, through gradient reversal,
        # the generator (ascent on the online model's mixed CE). Released: the detached bb set.
        x_gen = GradReverse.apply(x_mb) if paper and not hit else x_bb
        loss_gen = _mix_ce(head_q(classifier.forward_features(x_gen).pooled), y, perms_c, lam_c, eps)

        # 4. Teacher judges the mb mixes: graph to the input only (teacher weights are frozen).
        z = head_k(teacher.forward_features(x_mb).pooled)
        if self.separate_ref_passes:  # released order: clean, mixed, then N clean permuted passes
            with torch.no_grad():
                refs = [head_k(teacher.forward_features(x[pi[i]]).pooled) for i in range(n)]
        else:
            refs = [ref_logits[pi[i]] for i in range(n)]
        teacher.train(False)
        loss_k = _mix_ce(z, y, pi, lam_mb, eps)
        cos = sum(
            lam_mb[i] * F.cosine_similarity(z.float(), refs[i].float(), dim=1, eps=1e-8) for i in range(n)
        ).mean()

        # 5. Generator objective.
        beta = self.adv_weight
        if paper:  # θ maximises L_amce(W) − βL_k + (1−β)C (Eq. 15): minimise βL_k − (1−β)C here
            adversarial = True
            loss_theta = beta * loss_k - (1 - beta) * cos
        else:  # released: adversarial on even optimizer steps (the first), cooperative on odd ones
            adversarial = step % 2 == 0
            loss_theta = -beta * loss_k + (1 - beta) * cos if adversarial else loss_k

        self._capture(x, pi, x_mb, lam_mb)
        # The classifier's loss (what a step "costs" the model; logged as the step loss) and the total that is
        # back-propagated: (L_gen + L_re) + L_θ, the same sum in the same order as released.
        loss_classifier = loss_gen + loss_re
        total = loss_classifier + loss_theta
        d = (lambda t: t) if keep_graph else torch.Tensor.detach
        out = {
            "loss": total,
            "loss_classifier": d(loss_classifier),
            "loss_one": d(loss_one),
            "loss_van": d(loss_van),
            "loss_gen": d(loss_gen),
            "loss_teacher": d(loss_k),
            "cos_sim": d(cos),
            "loss_theta": d(loss_theta),
            "adversarial": torch.tensor(1.0 if adversarial else 0.0),
            "n_mix": torch.tensor(float(n)),
            **self._stats(masks_mb, lam_mb),
        }
        if keep_graph:
            out.update(loss_re=loss_re, masks_mb=masks_mb, masks_bb=masks_bb)
        return out


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

    def forward(self, x, y, classifier, *, teacher, step: int):
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
            fmap = teacher.forward_features(x, stage=self.mix_layer).stage_map
        masks_mb = self.generator(fmap[pi], lam_mb, size)
        with torch.no_grad():
            masks_bb = self.generator(fmap[sigma], lam_bb, size)
            l0 = float(g[1])  # the CPU draw: no device sync
            if l0 <= self.lam_margin or l0 >= 1 - self.lam_margin:
                masks_bb = lam_bb.float().view(1, 2, 1, 1).expand_as(masks_bb).clone()
            x_bb = _mix(x, sigma, masks_bb)

        loss_one = cross_entropy(classifier(x), y, eps)
        loss_mix = _mix_ce(
            self.head_q(classifier)(classifier.forward_features(x_bb).pooled), y, sigma, lam_bb, eps
        )
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
