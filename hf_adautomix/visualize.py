"""Pictures: grids of source images and their generated mixes, saved as PNG and shown inline in notebooks."""

from __future__ import annotations

import base64
import html
import os
import struct
import time
from collections.abc import Sequence

import torch
from transformers import TrainerCallback


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


# ----------------------------------------------------------------------------------------------------------
# Robustness plots (matplotlib, Agg backend; `hf_adautomix.evaluation.robustness` writes them).
# ----------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display needed; keeps an already chosen backend
    import matplotlib.pyplot as plt

    return plt


def reliability_bins(logits, labels, n_bins: int = 15) -> dict[str, list[float]]:
    """Per-bin count, accuracy and mean confidence of the softmax top-1, with the binning of
    `evaluation.metrics.ece` (left-closed equal-width bins; confidence 1.0 in the last bin here, so a saturated
    softmax is drawn, and the ECE it adds is the same). Returns `{"edges", "count", "accuracy", "confidence"}`;
    empty bins have accuracy and confidence NaN."""
    import numpy as np

    from .evaluation.metrics import log_softmax

    probs = np.exp(log_softmax(np.asarray(logits, dtype=np.float64)))
    labels = np.asarray(labels)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "accuracy": acc.tolist(),
        "confidence": mean_conf.tolist(),
    }


def save_reliability_diagram(logits, labels, path: str, n_bins: int = 15, title: str | None = None) -> str:
    """Reliability diagram (the paper's Fig. 4 / Fig. 7): per confidence bin, the accuracy (bars) against the
    diagonal of perfect calibration, with the gap to the bin's mean confidence shaded, and a confidence histogram
    below. The title gives the ECE (`evaluation.metrics.ece`, `n_bins` bins). Saves a PNG; returns `path`."""
    import numpy as np

    from .evaluation.metrics import ece

    plt = _pyplot()
    stats = reliability_bins(logits, labels, n_bins)
    edges = np.asarray(stats["edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    acc, conf, count = (np.nan_to_num(np.asarray(stats[k])) for k in ("accuracy", "confidence", "count"))
    value = ece(logits, labels, n_bins=n_bins, from_logits=True)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.bar(centers, acc, width=width, edgecolor="black", color="tab:blue", label="accuracy")
    top.bar(
        centers,
        conf - acc,
        bottom=acc,
        width=width,
        edgecolor="tab:red",
        color="tab:red",
        alpha=0.3,
        label="gap",
    )
    top.plot([0, 1], [0, 1], "r--", label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="accuracy", title=title or f"Reliability diagram (ECE {100 * value:.2f} %)")
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(centers, count / max(count.sum(), 1), width=width, edgecolor="black", color="tab:gray")
    bottom.set(xlim=(0, 1), xlabel="confidence", ylabel="fraction")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_occlusion_plot(curves: dict[str, dict], path: str, title: str = "Random PatchDrop") -> str:
    """Top-1 accuracy (%) against occlusion ratio (%), one line per model (the paper's Fig. 5). `curves` maps a
    name to `{ratio: accuracy}` (ratios in [0, 1], as floats or strings; accuracies in [0, 1]). Returns `path`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, points in curves.items():
        pairs = sorted((float(r), float(a)) for r, a in points.items())
        ax.plot([100 * r for r, _ in pairs], [100 * a for _, a in pairs], marker="o", label=name)
    ax.set(xlabel="Occlusion ratio (%)", ylabel="Top-1 accuracy (%)", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_corruption_plot(results: dict, path: str) -> str:
    """Top-1 error (%) per corruption type, one bar group per severity, from `evaluate_corruptions`'s results.
    Returns `path`."""
    import numpy as np

    plt = _pyplot()
    names = list(results["error"])
    severities = list(results["severity_mean_error"])
    fig, ax = plt.subplots(figsize=(max(5, 0.55 * len(names) + 1.5), 3.8))
    width = 0.8 / len(severities)
    for i, s in enumerate(severities):
        x = np.arange(len(names)) + (i - (len(severities) - 1) / 2) * width
        ax.bar(x, [100 * results["error"][n][s] for n in names], width=width, label=f"severity {s}")
    ax.set_xticks(np.arange(len(names)), names, rotation=60, ha="right", fontsize="small")
    ax.set(ylabel="Top-1 error (%)", ylim=(0, 100))
    ax.set_title(f"Corruptions ({results['params']}), mean error {100 * results['mean_error']:.2f} %")
    ax.legend(fontsize="x-small", ncol=min(5, len(severities)))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
