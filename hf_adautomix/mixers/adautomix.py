"""AdAutoMix (Qin et al., ICLR 2024), a learned mixer; its generator G_θ is `generator.AdaptiveMask`.

It follows the released code (reference/adautomix-algorithm.md §2-§6) unless an option says otherwise. One call
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

import torch
import torch.nn.functional as F
from torch import nn

from .base import cross_entropy
from .generator import AdaptiveMask
from .learned import _LearnedMixer, _mix, _mix_ce


class GradReverse(torch.autograd.Function):
    """Identity forward, −grad backward: the generator ascends what the classifier descends (paper variant)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


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

    def _teacher_clean_pass(self, teacher, head_k, x):
        """The teacher's clean pass in train mode (left on for its later passes), no graph: (stage map, the
        cosine references' logits, or None when they come from their own passes and the pass stopped early)."""
        teacher.train(True)
        with torch.no_grad():
            if self.separate_ref_passes and self.stop_teacher_early(teacher):
                # The references come from their own passes: the clean pass needs only the tapped map.
                return teacher.forward_features(x, stage=self.mix_layer, stop_at_stage=True).stage_map, None
            feats = teacher.forward_features(x, stage=self.mix_layer)
            return feats.stage_map, head_k(feats.pooled)  # references r_n = ref_logits[π_n] (shared, §9.1)

    def _reference_loss(self, classifier, head_q, x, y, perms, lam, *, vanilla: bool, backward=None):
        """L_re = (1 − α)·CE_clean + α·L_van (vanilla N-way mix of `perms` with `lam`), or CE_clean alone without
        `vanilla`. With `backward`, each pass's share is back-propagated as soon as it is built (and detached).
        Returns (loss_one, loss_van, loss_re)."""
        eps, n, size = self.label_smoothing, lam.numel(), x.shape[-2:]
        loss_one = cross_entropy(classifier(x), y, eps)
        if not vanilla:
            if backward is not None:
                backward(loss_one)
                loss_one = loss_one.detach()
            return loss_one, torch.zeros((), device=x.device), loss_one
        if backward is not None:
            backward((1 - self.mce_weight) * loss_one)
            loss_one = loss_one.detach()
        x_van = _mix(x, perms, lam.float().view(1, n, 1, 1).expand(x.shape[0], n, *size))
        loss_van = _mix_ce(head_q(classifier.forward_features(x_van).pooled), y, perms, lam, eps)
        if backward is not None:
            backward(self.mce_weight * loss_van)
            loss_van = loss_van.detach()
        return loss_one, loss_van, (1 - self.mce_weight) * loss_one + self.mce_weight * loss_van

    # -- one iteration -----------------------------------------------------------------------------------------
    def forward(self, x, y, classifier, *, teacher, step: int, keep_graph: bool = False, backward=None):
        """One iteration. `keep_graph` returns the loss terms with their autograd graphs, plus `loss_re` and both
        mask sets (`masks_bb`: the masks of the classifier's generated-mix input), so tests can check each term's
        gradient path (§12.2); the training step leaves it off.

        `backward` (a callable on a scalar loss, e.g. the trainer's scaled `accelerator.backward`): back-propagate
        each online-classifier pass's share of the total (weights (1 − α), α, 1) as soon as that pass's loss is
        built, so its activations are freed before the next pass runs. The returned `loss` then carries the graph
        of L_θ only (its value is still the total); the caller back-propagates it. The gradients are the total's
        (the paths are disjoint, §2.4), up to the order of floating-point accumulation into `.grad`. Without it
        (or with `keep_graph`), one graph for one backward of the total, as before.

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
        early = backward is not None and not keep_graph and torch.is_grad_enabled()
        # Drawn on the CPU: the margin test reads λ without waiting for the device.
        p = self.sample(x.shape[0], "cpu")
        n, hit = p["n"], self.margin_hit(p["lam_mb" if paper else "lam_bb"])
        lam_mb, lam_bb, pi, sigma = (p[k].to(x.device) for k in ("lam_mb", "lam_bb", "pi", "sigma"))
        # The classifier's image sets and λ: σ, λ^bb as released; the one set π, λ^mb in the paper.
        lam_c, perms_c = (lam_mb, pi) if paper else (lam_bb, sigma)
        eps, size = self.label_smoothing, x.shape[-2:]
        head_k = self.head_k(teacher)

        # 1. Teacher clean pass, train mode as released (batch statistics, own BN buffers), no graph.
        fmap, ref_logits = self._teacher_clean_pass(teacher, head_k, x)

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
        # With `early`, each pass's loss is back-propagated (times its weight in the total) once built.
        head_q = self.head_q(classifier)
        loss_one, loss_van, loss_re = self._reference_loss(
            classifier,
            head_q,
            x,
            y,
            perms_c,
            lam_c,
            vanilla=n >= 3 or paper,
            backward=backward if early else None,
        )

        x_mb = _mix(x, pi, masks_mb)
        # Paper, Eq. 14/15: the one generated set trains the classifier (descent) and, through gradient reversal,
        # the generator (ascent on the online model's mixed CE). Released: the detached bb set.
        x_gen = GradReverse.apply(x_mb) if paper and not hit else x_bb
        loss_gen = _mix_ce(head_q(classifier.forward_features(x_gen).pooled), y, perms_c, lam_c, eps)
        if early and x_gen is x_bb:  # paper: L_gen also reaches θ through the mb masks, so it waits for L_θ
            backward(loss_gen)
            loss_gen = loss_gen.detach()

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
        if early:  # the same value; the graph of what is left to back-propagate (L_θ, and the paper's L_gen)
            total = (loss_gen + loss_re.detach()) + loss_theta
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
