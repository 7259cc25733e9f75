"""AdAutoMix's generator G_θ (Qin et al., ICLR 2024; reference/adautomix-algorithm.md §3): the N-image
cross-attention mask generator `AdaptiveMask`, with its overflow clamp and NaN fallback as released.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from .learned import _init_conv, _upsample

logger = logging.getLogger(__name__)


def _conv(conv: nn.Conv2d, z: torch.Tensor) -> torch.Tensor:
    # The conv at z's dtype (fp32: the module's own weights, unchanged; fp64: the NaN fallback), graph kept to θ.
    bias = None if conv.bias is None else conv.bias.to(z.dtype)
    return F.conv2d(z, conv.weight.to(z.dtype), bias)


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
