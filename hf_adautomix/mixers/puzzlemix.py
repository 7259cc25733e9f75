"""PuzzleMix (Kim et al., ICML 2020) follows the authors' `snu-mllab/PuzzleMix` `mixup.py` as ported to OpenMixup,
with the CIFAR hyperparameters of §10: the saliency is √(mean_c (∂CE/∂x)²) from one extra forward+backward of the
current model in eval mode (gradient w.r.t. the input only, so no parameter `.grad` is touched); a block grid of
2, 4, 8 or 16 blocks per side; per sample, a multi-label graph cut (labels = mask values {1, ½, 0}) over block-pooled
normalised saliency with the data-smoothness terms folded into the unaries exactly as the authors do, solved by
α-β swap (gco-wrapper's `cut_grid_graph(..., algorithm="swap")` when installed — the authors' solver — else our own
α-β swap, each move an exact s-t min-cut by `scipy.sparse.csgraph.maximum_flow`); then the authors' greedy
optimal-transport block rearrangement (t_eps = 0.8, t_size = 4) of both images (index arithmetic instead of
dense (B, n, n) plans: the same assignment, tested against the dense form), and per-sample λ = mean(mask).
Differences from the authors' code, all documented here:

* the adversarial-noise option (off in OpenMixup) is not implemented;
* graph-cut terms are built with adaptive pooling, so image sizes that are not a multiple of the block count work
  (identical to the authors' `avg_pool2d` when they are); the transport cell is the largest size ≤ t_size that
  divides the image on each axis;
* energies are passed to the solver as integers scaled by (n_labels − 1)², which is exactly what gco-wrapper's
  float path computes for the authors' call but without its int32 overflow on very peaked saliency maps; edge weights
  are clipped at 0 (they are positive for images in [0, 1], which is what `image_mean`/`image_std` must give);
* `image_mean`/`image_std` default to ImageNet's (HF image processors'), where OpenMixup uses CIFAR's below 64 px;
* our own swap solver mirrors GCO's (all-0 start, GCO's pair order, free sites keep α) and returned gco's exact
  labelling on every problem compared (300 random grids; the authors' full pipeline on 320 batches), ~15x slower.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._graphcut import _import_gco, alpha_beta_swap
from .base import (
    InputMixer,
    _BetaMixin,
    _check_images,
    _check_positive,
    _randint,
    cross_entropy,
    mix_target,
    sample_beta,
    soft_cross_entropy,
)

logger = logging.getLogger(__name__)

PUZZLEMIX_INSTALL_HINT = 'pip install "hf_adautomix[puzzlemix]"'


@functools.lru_cache(maxsize=32)
def _transport_cost(n_rows: int, n_cols: int) -> torch.Tensor:
    """Squared distance between the cells of an (n_rows, n_cols) grid, normalised by (side − 1)² (authors' C)."""
    rr, cc = torch.meshgrid(torch.arange(n_rows), torch.arange(n_cols), indexing="ij")
    pos = torch.stack([rr.flatten(), cc.flatten()], dim=1).float()
    side = max(n_rows, n_cols, 2)
    return torch.cdist(pos, pos).pow(2) / (side - 1) ** 2


def mask_transport(mask: torch.Tensor, saliency: torch.Tensor, eps: float) -> torch.Tensor:
    """The authors' greedy transport of cells (`mask_transport` of snu-mllab/PuzzleMix), as source indices.

    Every cell i picks the destination j of lowest cost eps·dist(i, j) − saliency(i)·[j visible]; each destination
    keeps the pick of `argmin` over its column of plan ⊙ cost (so rows that did not pick it count as 0, and ties go
    to the first row, exactly as in the authors' dense code); losers pay +1 on their pick and choose again, for `side`
    rounds. Same result as the authors' (B, n, n) plan; each round is one argmin over the (B, n, n) cost plus
    O(B·n) index work, instead of the authors' several dense (B, n, n) scatters and products.

    Args:
        mask: (B, h, w) weight of the transported image per cell (only > 0 matters).
        saliency: (B, h, w) normalised cell saliency of that image.
        eps: t_eps, the weight of the distance cost.

    Returns:
        (B, h·w) long: for each destination cell the source cell moved there, −1 where none (left empty, i.e. 0,
        as in the authors' code).
    """
    batch, n_rows, n_cols = mask.shape
    n = n_rows * n_cols
    device = mask.device
    cost_matrix = _transport_cost(n_rows, n_cols).to(device=device, dtype=torch.float32)
    visible = (mask > 0).float().reshape(batch, 1, n)
    cost = eps * cost_matrix.unsqueeze(0) - saliency.float().reshape(batch, n, 1) * visible
    arange = torch.arange(n, device=device).expand(batch, n)
    none = torch.full((batch, n), n, device=device)
    winner = torch.full((batch, n), -1, device=device)
    for _ in range(max(n_rows, n_cols)):
        choice = cost.argmin(dim=-1)  # (B, n): each source's destination
        chosen = cost.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
        best = torch.full((batch, n), math.inf, device=device).scatter_reduce(1, choice, chosen, "amin")
        first_best = none.scatter_reduce(
            1, choice, torch.where(chosen == best.gather(1, choice), arange, n), "amin"
        )
        # first row that did *not* pick each destination: row 0 for all but row 0's pick
        differs = choice != choice[:, :1]
        first_other = torch.where(differs.any(1), differs.int().argmax(1), n)
        first_outsider = torch.where(arange == choice[:, :1], first_other.unsqueeze(1), 0)
        wins = (first_best < n) & (
            (best < 0) | ((best == 0) & (first_best < first_outsider)) | (first_outsider == n)
        )
        winner = torch.where(wins, first_best, -1)  # (B, n): per destination
        lost = winner.gather(1, choice) != arange  # (B, n): per source
        cost.scatter_add_(-1, choice.unsqueeze(-1), lost.float().unsqueeze(-1))
    return winner


def transport_image(img: torch.Tensor, sources: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Move the (H/h) x (W/w) cells of `img` (B, C, H, W): destination j gets cell `sources[b, j]`, or 0 when −1."""
    batch, channels, height, width = img.shape
    n_rows, n_cols = grid
    th, tw = height // n_rows, width // n_cols
    cells = img.reshape(batch, channels, n_rows, th, n_cols, tw).permute(0, 2, 4, 1, 3, 5)
    cells = cells.reshape(batch, n_rows * n_cols, channels * th * tw)
    index = sources.clamp_min(0).unsqueeze(-1).expand(-1, -1, cells.shape[-1])
    moved = cells.gather(1, index) * (sources >= 0).unsqueeze(-1).to(img.dtype)
    moved = moved.reshape(batch, n_rows, n_cols, channels, th, tw).permute(0, 3, 1, 4, 2, 5)
    return moved.reshape(batch, channels, height, width)


def _neigh_penalty(a: torch.Tensor, b: torch.Tensor, kh: int, kw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Authors' data-smoothness term between adjacent blocks of a pooled image (B, C, n·kh, n·kw): mean |a − b| across
    each block border (vertical neighbours, horizontal neighbours)."""
    pw_v = (a[:, :, :-1, :] - b[:, :, 1:, :])[:, :, kh - 1 :: kh, :]
    pw_h = (a[:, :, :, :-1] - b[:, :, :, 1:])[:, :, :, kw - 1 :: kw]
    pw_v = F.avg_pool2d(pw_v.abs().mean(1), kernel_size=(1, kw))
    pw_h = F.avg_pool2d(pw_h.abs().mean(1), kernel_size=(kh, 1))
    return pw_v, pw_h


class PuzzleMix(_BetaMixin, InputMixer):
    """PuzzleMix (Kim et al., ICML 2020): saliency-aware block masks by graph cut, plus optimal-transport block
    rearrangement; per-sample λ = mean(mask). See the module docstring for the algorithm and its sources.

    Args:
        alpha: α of Beta(α, α); the drawn value is the prior weight of the graph cut (not the final λ).
        beta: label smoothness β (scaled by 1/block_num/16 as in the authors' code).
        gamma: data smoothness γ.
        eta: prior weight η.
        neigh_size: pooling size of the data-smoothness term.
        n_labels: mask levels (2: {0, 1}, 3: {0, ½, 1}, 4: thirds).
        block_nums: the block grids (blocks per side) drawn uniformly per batch.
        transport: rearrange blocks by the optimal-transport plan.
        t_eps: transport distance weight.
        t_size: transport cell size in pixels (cost memory grows as (HW/t_size²)²: use ~16 on 224-px images).
        image_mean, image_std: the normalisation of the inputs, undone for the data-smoothness term (images in [0, 1]).
        graph_cut: "auto" (gco-wrapper when installed, else our α-β swap), "gco" or "swap".
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "puzzlemix"

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 1.2,
        gamma: float = 0.5,
        eta: float = 0.2,
        neigh_size: int = 4,
        n_labels: int = 3,
        block_nums: tuple[int, ...] = (2, 4, 8, 16),
        transport: bool = True,
        t_eps: float = 0.8,
        t_size: int = 4,
        image_mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        image_std: tuple[float, ...] = (0.229, 0.224, 0.225),
        graph_cut: str = "auto",
        num_classes: int,
        label_smoothing: float = 0.0,
        mix_prob: float = 1.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.alpha = _check_positive("alpha", alpha)
        for name, value in (("beta", beta), ("gamma", gamma), ("eta", eta)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {name}={value!r}.")
        self.beta, self.gamma, self.eta = float(beta), float(gamma), float(eta)
        for name, value in (("neigh_size", neigh_size), ("t_size", t_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}.")
        self.neigh_size, self.t_size = neigh_size, t_size
        if n_labels not in (2, 3, 4):
            raise ValueError(f"n_labels must be 2, 3 or 4, got n_labels={n_labels!r}.")
        self.n_labels = n_labels
        block_nums = tuple(block_nums) if isinstance(block_nums, list | tuple) else block_nums
        if (
            not isinstance(block_nums, tuple)
            or not block_nums
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 2 for b in block_nums)
        ):
            raise ValueError(
                f"block_nums must be a non-empty tuple of integers >= 2, got block_nums={block_nums!r}."
            )
        self.block_nums = block_nums
        self.transport = bool(transport)
        self.t_eps = _check_positive("t_eps", t_eps)
        if len(image_mean) != len(image_std) or any(s <= 0 for s in image_std):
            raise ValueError(
                f"image_mean and image_std must have one entry per channel and std > 0, got "
                f"image_mean={image_mean!r}, image_std={image_std!r}."
            )
        self.register_buffer(
            "image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "image_std", torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        if graph_cut not in ("auto", "gco", "swap"):
            raise ValueError(f"graph_cut must be 'auto', 'gco' or 'swap', got graph_cut={graph_cut!r}.")
        gco = _import_gco() if graph_cut in ("auto", "gco") else None
        if graph_cut == "gco" and gco is None:
            raise ImportError(
                f"graph_cut='gco' needs gco-wrapper, which is not installed: {PUZZLEMIX_INSTALL_HINT}."
            )
        if graph_cut == "auto" and gco is None:
            logger.info(
                "gco-wrapper is not installed; PuzzleMix uses its own α-β swap graph cut (slower). For the "
                "authors' solver: %s",
                PUZZLEMIX_INSTALL_HINT,
            )
        self.graph_cut = (
            "gco" if gco is not None else "swap"
        )  # the module itself is not kept: mixers deep-copy

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, eta={self.eta}, n_labels={self.n_labels}, "
            f"block_nums={self.block_nums}, transport={self.transport}, t_eps={self.t_eps}, t_size={self.t_size}, "
            f"graph_cut={self.graph_cut!r}, mix_prob={self.mix_prob}"
        )

    # -- saliency --------------------------------------------------------------------------------------------
    @staticmethod
    def saliency(x: torch.Tensor, y: torch.Tensor, classifier: nn.Module) -> torch.Tensor:
        """√(mean_c (∂CE/∂x)²) (B, H, W) from one forward+backward of `classifier` in eval mode on the clean batch.

        Only the input's gradient is computed (`torch.autograd.grad`), so no parameter `.grad` is created or changed;
        every submodule's train/eval mode is restored afterwards.
        """
        modes = [(m, m.training) for m in classifier.modules()]
        classifier.eval()
        try:
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                loss = cross_entropy(classifier(x_in), y)
                (grad,) = torch.autograd.grad(loss, x_in)
        finally:
            for m, training in modes:
                m.training = training
        return grad.float().pow(2).mean(dim=1).sqrt()

    # -- graph cut -------------------------------------------------------------------------------------------
    def _graph_terms(self, x: torch.Tensor, saliency: torch.Tensor, perm: torch.Tensor, block_num: int):
        """Unary (B, n, n, L) and edge weights (B, n−1, n), (B, n, n−1) in float, as the authors build them."""
        batch, _, height, width = x.shape
        bh, bw = height // block_num, width // block_num
        nh, nw = min(self.neigh_size, bh), min(self.neigh_size, bw)
        kh, kw = bh // nh, bw // nw
        beta = self.beta / block_num / 16

        pooled = F.adaptive_avg_pool2d(saliency.unsqueeze(1), (block_num, block_num)).squeeze(1)
        unary1 = pooled / pooled.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1)  # own image
        unary2 = unary1[perm]  # partner

        mean, std = self.image_mean.to(x.device), self.image_std.to(x.device)
        x01 = x.float() * std + mean if mean.shape[1] == x.shape[1] else x.float()
        in1 = F.adaptive_avg_pool2d(x01, (block_num * kh, block_num * kw))
        in2 = in1[perm]
        # index 0 ↔ partner (input2), 1 ↔ own image (input1), as in the authors' code
        pv00, ph00 = _neigh_penalty(in2, in2, kh, kw)
        pv01, ph01 = _neigh_penalty(in2, in1, kh, kw)
        pv10, ph10 = _neigh_penalty(in1, in2, kh, kw)
        pv11, ph11 = _neigh_penalty(in1, in1, kh, kw)
        scale = beta * self.gamma
        pv00, pv01, pv10, pv11 = (scale * t for t in (pv00, pv01, pv10, pv11))
        ph00, ph01, ph10, ph11 = (scale * t for t in (ph00, ph01, ph10, ph11))

        u1, u2 = unary1.clone(), unary2.clone()
        u2[:, :-1, :] += (pv10 + pv11) / 2
        u1[:, :-1, :] += (pv01 + pv00) / 2
        u2[:, 1:, :] += (pv01 + pv11) / 2
        u1[:, 1:, :] += (pv10 + pv00) / 2
        u2[:, :, :-1] += (ph10 + ph11) / 2
        u1[:, :, :-1] += (ph01 + ph00) / 2
        u2[:, :, 1:] += (ph01 + ph11) / 2
        u1[:, :, 1:] += (ph10 + ph00) / 2
        pw_v = (pv10 + pv01 - pv11 - pv00) / 2
        pw_h = (ph10 + ph01 - ph11 - ph00) / 2
        return u1, u2, pw_v + beta, pw_h + beta

    def _cut(self, own, partner, w_v, w_h, prior_lam: float, block_num: int):
        """Per-sample graph cut (CPU); returns mask levels (B, n, n) = 1 − label/(L−1) (weight of x's own image)."""
        import numpy as np

        n_labels, eps = self.n_labels, 1e-8
        a = prior_lam
        prior = {
            2: [a, 1 - a],
            3: [a**2, 2 * a * (1 - a), (1 - a) ** 2],
            4: [a**3, 3 * a**2 * (1 - a), 3 * a * (1 - a) ** 2, (1 - a) ** 3],
        }[n_labels]
        prior = self.eta * -np.log(np.asarray(prior) + eps) / block_num**2
        large_val = 1000 * block_num**2
        levels = np.linspace(0, 1, n_labels)  # label l keeps (1 − l/(L−1)) of the own image
        own, partner = own.detach().cpu().double().numpy(), partner.detach().cpu().double().numpy()
        # label l costs the saliency it discards: (1 − level)·partner + level·own, plus the prior
        unary = np.stack([(1 - lv) * partner + lv * own + prior[i] for i, lv in enumerate(levels)], axis=-1)
        w_v = large_val * w_v.detach().cpu().double().numpy()
        w_h = large_val * w_h.detach().cpu().double().numpy()
        sq = (n_labels - 1) ** 2  # integer smoothness (i−j)² = (L−1)²·V of the authors' float V
        unary = large_val * unary
        if not (np.isfinite(unary).all() and np.isfinite(w_v).all() and np.isfinite(w_h).all()):
            raise FloatingPointError(
                "PuzzleMix graph-cut terms are not finite: the saliency map holds inf/nan "
                "(did the clean forward's loss overflow?)."
            )
        if (
            np.abs(unary).max(initial=0) * sq >= 2**31
            or max(w_v.max(initial=0), w_h.max(initial=0)) * sq >= 2**31
        ):
            raise OverflowError("PuzzleMix graph-cut energies overflow int32; check image_mean / image_std.")
        # truncation to integers as in the authors' `astype(np.int32)`, then the (L−1)² scale
        unary = unary.astype(np.int32) * np.int32(sq)
        pairwise = (np.subtract.outer(np.arange(n_labels), np.arange(n_labels)) ** 2).astype(np.int32)
        w_v, w_h = np.clip(w_v, 0, None).astype(np.int32), np.clip(w_h, 0, None).astype(np.int32)
        gco = _import_gco() if self.graph_cut == "gco" else None
        masks = []
        for i in range(unary.shape[0]):  # one graph cut per sample: the method's own per-sample loop
            if gco is not None:
                labels = gco.cut_grid_graph(unary[i], pairwise, w_v[i], w_h[i], algorithm="swap")
                labels = np.asarray(labels).reshape(block_num, block_num)
            else:
                labels = alpha_beta_swap(unary[i], pairwise, w_v[i], w_h[i])
            masks.append(1.0 - labels / (n_labels - 1))
        return np.stack(masks).astype(np.float32)

    # -- transport grid --------------------------------------------------------------------------------------
    def _transport_grid(self, height: int, width: int, block_num: int) -> tuple[int, int]:
        """Cells of t = min(t_size, block size) px (reduced until it divides the side), per axis."""
        sizes = []
        for side in (height, width):
            t = max(min(self.t_size, side // block_num), 1)
            while side % t:
                t -= 1
            sizes.append(side // t)
        return sizes[0], sizes[1]

    # -- interface -------------------------------------------------------------------------------------------
    def get_params(self, x, y, saliency: torch.Tensor | None = None):
        """Needs `saliency` (B, H, W), e.g. from `PuzzleMix.saliency(x, y, classifier)`."""
        _check_images(x, type(self).__name__)
        batch, _, height, width = x.shape
        if saliency is None or tuple(saliency.shape) != (batch, height, width):
            got = None if saliency is None else tuple(saliency.shape)
            raise ValueError(
                f"PuzzleMix.get_params needs a saliency map of shape {(batch, height, width)}, got {got}."
            )
        perm = torch.randperm(batch, device=x.device)
        prior_lam = sample_beta(self.alpha)
        block_num = self.block_nums[_randint(0, len(self.block_nums))]
        block_num = max(min(block_num, height, width), 1)

        own, partner, w_v, w_h = self._graph_terms(x, saliency.float(), perm, block_num)
        blocks = torch.from_numpy(self._cut(own, partner, w_v, w_h, prior_lam, block_num)).to(x.device)

        params: dict[str, Any] = {"perm": perm, "prior_lam": prior_lam, "block_num": block_num}
        if self.transport:
            grid = self._transport_grid(height, width, block_num)
            mask_t = F.interpolate(blocks.unsqueeze(1), size=grid, mode="nearest").squeeze(1)
            sal_t = F.adaptive_avg_pool2d(saliency.float().unsqueeze(1), grid).squeeze(1)
            sal_t = sal_t / sal_t.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1)
            params["grid"] = grid
            params["src1"] = mask_transport(mask_t, sal_t, self.t_eps)
            params["src2"] = mask_transport(1.0 - mask_t, sal_t[perm], self.t_eps)
            blocks = mask_t
        mask = F.interpolate(blocks.unsqueeze(1), size=(height, width), mode="nearest")
        params["mask"] = mask
        params["lam"] = mask.mean(dim=(1, 2, 3))
        return params

    def apply(self, x, y, params):
        _check_images(x, type(self).__name__)
        perm, mask = params["perm"], params["mask"].to(device=x.device, dtype=x.dtype)
        x1, x2 = x, x[perm]
        if params.get("src1") is not None:
            x1 = transport_image(x1, params["src1"], params["grid"])
            x2 = transport_image(x2, params["src2"], params["grid"])
        x_mix = torch.lerp(x2, x1, mask)
        lam = params["mask"].float().mean(dim=(1, 2, 3))
        return x_mix, mix_target(y, perm, lam, self.num_classes, self.label_smoothing)

    def forward(self, x, y, classifier):
        if self.skip():
            return self.clean_loss(x, y, classifier)
        params = self.get_params(x, y, saliency=self.saliency(x, y, classifier))
        x_mix, target = self.apply(x, y, params)
        return {"loss": soft_cross_entropy(classifier(x_mix), target), "lam": params["lam"].mean().detach()}
