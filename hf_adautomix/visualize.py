"""Pictures: grids of source images and their generated mixes."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


def denormalize(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """Undo the input normalisation and clamp to [0, 1] (identity when mean/std are unknown)."""
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1) if x.ndim == 4 else (-1, 1, 1)
        x = x * torch.tensor(std, dtype=x.dtype).view(shape) + torch.tensor(mean, dtype=x.dtype).view(shape)
    return x.clamp(0, 1)


def save_mix_grid(mix: dict[str, torch.Tensor], path: str, mean=None, std=None) -> str:
    """Save a grid with one row per source set (up to 4 columns) and a last row of the generated mixes, as the
    released `SAVEHook` lays it out. `mix` holds "sources" (N, k, C, H, W), "mixes" (k, C, H, W) and "lam" (N,)."""
    from torchvision.utils import save_image

    sources, mixes = mix["sources"], mix["mixes"]
    rows = torch.cat([sources, mixes[None]], dim=0)  # (N + 1, k, C, H, W)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_image(denormalize(rows.flatten(0, 1), mean, std), path, nrow=rows.shape[1], padding=2, pad_value=1.0)
    return path
