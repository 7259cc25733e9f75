"""Pictures of mixes: grids of source images and their generated mixes, saved as PNG and shown inline in
notebooks. (The figures of metrics are in `hf_adautomix.plots`.)"""

from __future__ import annotations

import base64
import html
import os
import struct
import time
from collections.abc import Sequence

import numpy as np
import torch
from transformers import TrainerCallback


def denormalize(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """Undo the input normalisation and clamp to [0, 1] (identity when mean/std are unknown)."""
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1) if x.ndim == 4 else (-1, 1, 1)
        x = x * torch.tensor(std, dtype=x.dtype).view(shape) + torch.tensor(mean, dtype=x.dtype).view(shape)
    return x.clamp(0, 1)


def mix_grid(mix: dict[str, torch.Tensor], mean=None, std=None) -> np.ndarray:
    """A grid with one row per source set (up to 4 columns) and a last row of the generated mixes, as the
    released `SAVEHook` lays it out, as an (H, W, 3) uint8 array. `mix` holds "sources" (N, k, C, H, W), "mixes"
    (k, C, H, W) and "lam" (N,)."""
    from torchvision.utils import make_grid

    rows = torch.cat([mix["sources"], mix["mixes"][None]], dim=0)  # (N + 1, k, C, H, W)
    grid = make_grid(
        denormalize(rows.flatten(0, 1).float().cpu(), mean, std), nrow=rows.shape[1], pad_value=1.0
    )
    # torchvision's `save_image` conversion to 8 bits
    return grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()


def save_mix_grid(mix: dict[str, torch.Tensor], path: str, mean=None, std=None) -> np.ndarray:
    """Save `mix_grid(mix, mean, std)` as a PNG at `path`; returns the grid (the PNG's pixels, for trackers)."""
    import PIL.Image

    grid = mix_grid(mix, mean, std)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    PIL.Image.fromarray(grid).save(path)
    return grid


def mix_grid_paths(output_dir: str) -> list[str]:
    """The mixed-sample grids a run saved (`output_dir/mixed_samples/step_*.png`), oldest step first."""
    folder = os.path.join(output_dir, "mixed_samples")
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.startswith("step_") and n.endswith(".png"))
    return [os.path.join(folder, n) for n in names]


def mixes_html(paths: Sequence[str], scale: int = 2) -> str:
    """One row of PNG images, each captioned with its step, embedded as base64 (so notebooks keep them inline)."""
    cells = []
    for path in paths:
        with open(path, "rb") as f:
            png = f.read()
        width = struct.unpack(">I", png[16:20])[0]  # the IHDR chunk: width, height as big-endian uint32
        name = os.path.splitext(os.path.basename(path))[0]
        caption = f"step {int(name[5:])}" if name[5:].isdigit() else name
        cells.append(
            '<figure style="margin:4px;text-align:center">'
            f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" width="{width * scale}" '
            f'style="image-rendering:pixelated"/><figcaption>{html.escape(caption)}</figcaption></figure>'
        )
    return '<div style="display:flex;flex-wrap:wrap;align-items:flex-end">' + "".join(cells) + "</div>"


def show_mixes(output_dir: str, last: int | None = None, scale: int = 2) -> list[str]:
    """Display a run's mixed-sample grids inline (IPython / Jupyter) in one row, oldest step first. Each grid has
    one row per source image set and a last row of the generated mixes. Returns the paths shown.

    Args:
        output_dir: the run's `output_dir` (the grids are in its `mixed_samples/`).
        last: show only the last `last` grids.
        scale: zoom factor of the (small) images.
    """
    from IPython.display import HTML, display

    paths = mix_grid_paths(output_dir)
    if last is not None:
        paths = paths[-last:] if last > 0 else []
    if not paths:
        display(HTML(f"<p>No mixed-sample grids in {html.escape(str(output_dir))}/mixed_samples.</p>"))
        return []
    display(HTML(mixes_html(paths, scale)))
    return paths


class ShowMixesCallback(TrainerCallback):
    """Displays each mixed-sample grid inline as soon as `AdAutoMixTrainer` has saved it (every `save_mix_every`
    steps and at the last step), so that a notebook shows the mixes evolve during training.

    Args:
        scale: zoom factor of the (small) images.
    """

    def __init__(self, scale: int = 2):
        self.scale = scale
        self.shown: set[str] = set()
        self.since = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        # Grids left in output_dir by an earlier run are not this run's.
        self.shown, self.since = set(), time.time() - 1.0

    def _show_new(self, args):
        new = [
            p
            for p in mix_grid_paths(args.output_dir)
            if p not in self.shown and os.path.getmtime(p) >= self.since
        ]
        if new:
            from IPython.display import HTML, display

            display(HTML(mixes_html(new, self.scale)))
            self.shown.update(new)

    # Checked at each step's end and at the end of training: whatever the callbacks' order, the grid saved at the
    # last step's end is shown too.
    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._show_new(args)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._show_new(args)


def __getattr__(name: str):
    """The figures of metrics moved to `hf_adautomix.plots`; `hf_adautomix.visualize.<figure>` still finds them."""
    from . import plots

    return getattr(plots, name)
