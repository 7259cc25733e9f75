"""Figures of metrics, drawn with matplotlib (Agg backend): the reliability diagram, the occlusion and corruption
plots (`evaluation.report` writes them), training curves (`examples/plot_training.py`) and the comparison of runs
(`examples/compare_runs.py`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np


def _save(plt, fig, path: str, dpi: int) -> str:
    """Write `fig` as a PNG at `path` (its folder made) and close it; returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


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
    return _save(plt, fig, path, dpi=120)


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
    return _save(plt, fig, path, dpi=120)


def save_corruption_plot(results: dict, path: str) -> str:
    """Top-1 error (%) per corruption type, one bar group per severity, from `evaluate_corruptions`'s results.
    Returns `path`."""

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
    return _save(plt, fig, path, dpi=120)


# ----------------------------------------------------------------------------------------------------------
# Training curves and run comparisons (`examples/plot_training.py`, `examples/compare_runs.py`).
# ----------------------------------------------------------------------------------------------------------

# Trainer's summary keys (one value per run or per evaluation, not curves).
_NOT_CURVES = ("runtime", "samples_per_second", "steps_per_second", "total_flos", "epoch", "step")
# The evaluated heads, as `AdAutoMixTrainer.evaluate` prefixes their metrics; longest prefix first.
EVAL_HEADS = {"ema_mix_head_": "EMA mix head", "mix_head_": "mix head", "ema_": "EMA", "": "online"}
_EVAL_METRICS = {"accuracy": "top-1 accuracy", "top5_accuracy": "top-5 accuracy", "nll": "NLL", "ece": "ECE"}
_PANEL_ORDER = [
    "training losses",
    "λ",
    "mask statistics",
    "other training statistics",
    "EMA momentum",
    "learning rates",
    "gradient norm",
    "eval top-1 accuracy",
    "eval top-5 accuracy",
    "eval NLL",
    "eval ECE",
    "eval loss",
]


def _train_group(key: str) -> str | None:
    """The panel of one training log key (None: not plotted)."""
    if key == "loss" or key.startswith("train_loss_"):
        return "training losses"
    if key.startswith("train_lam"):
        return "λ"
    if key.startswith("train_mask"):
        return "mask statistics"
    if key == "ema_momentum":
        return "EMA momentum"
    if key == "learning_rate" or key.endswith("_lr"):
        return "learning rates"
    if key == "grad_norm":
        return "gradient norm"
    if key.startswith("train_"):
        return "other training statistics"
    return None


def _eval_split(key: str) -> tuple[str, str] | None:
    """`eval_ema_top5_accuracy` -> ("top5_accuracy", "EMA"); None for non-metrics (runtime, throughput)."""
    if not key.startswith("eval_") or key.endswith(_NOT_CURVES):
        return None
    rest = key[len("eval_") :]
    for prefix, head in EVAL_HEADS.items():
        if rest.startswith(prefix) and rest[len(prefix) :]:
            return rest[len(prefix) :], head
    return None


def training_curves(log_history: Sequence[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Group a `trainer_state.json` `log_history` into panels of curves: `{panel: {name: (steps, values)}}`.

    Training panels: "training losses" (`loss`, `train_loss_*`), "λ" (`train_lam_*`), "mask statistics"
    (`train_mask_*`), "other training statistics" (other `train_*`), "EMA momentum", "learning rates"
    (`learning_rate`, `*_lr`) and "gradient norm". Evaluation panels, one per metric ("eval top-1 accuracy",
    ..., and "eval loss" only where it is not the NLL again), hold one curve per head (online, EMA, mix head,
    EMA mix head). Trainer's end-of-training summary (the entry with `train_runtime`) and non-finite or
    non-numeric values are left out; absent terms give no panel.
    """
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for entry in log_history:
        if "train_runtime" in entry:  # the run's summary: averages, not a point of a curve
            continue
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            split = _eval_split(key)
            if split is not None:
                metric, name = split
                panel = "eval " + _EVAL_METRICS.get(metric, metric.replace("_", " "))
            else:
                panel, name = _train_group(key), key
            if panel is None:
                continue
            steps, values = panels.setdefault(panel, {}).setdefault(name, ([], []))
            steps.append(float(step))
            values.append(float(value))
    # Trainer's eval loss is the NLL our metrics report again: one panel of the two.
    if "eval NLL" in panels and set(panels.get("eval loss", {})) <= set(panels["eval NLL"]):
        panels.pop("eval loss", None)
    order = [*_PANEL_ORDER, *sorted(p for p in panels if p not in _PANEL_ORDER)]
    return {p: panels[p] for p in order if p in panels}


def save_training_plot(log_history: Sequence[dict], path: str, title: str | None = None) -> str:
    """One panel per group of `training_curves(log_history)` against the optimizer step. Saves a PNG; returns
    `path`. Raises ValueError when the history holds no curve at all."""
    plt = _pyplot()
    panels = training_curves(log_history)
    if not panels:
        raise ValueError("Expected a log_history with logged losses or metrics, found none to plot.")
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.3 * rows), squeeze=False)
    for ax, (panel, curves) in zip(axes.flat, panels.items()):
        for name, (steps, values) in curves.items():
            ax.plot(steps, values, marker="o" if len(steps) <= 20 else None, markersize=3, label=name)
        ax.set(title=panel, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(plt, fig, path, dpi=100)


def save_run_comparison(
    runs: Sequence[str],
    bars: dict[str, Sequence[float | None]],
    occlusion: Sequence[dict | None],
    path: str,
    title: str = "Run comparison",
) -> str:
    """Runs side by side: a grouped bar chart (one group per metric in `bars`, one bar per run; values in %,
    None drawn as no bar) and, when any run has one, its occlusion curve (`{ratio: accuracy}`, fractions).
    Saves a PNG; returns `path`."""

    plt = _pyplot()
    # One colour per run in both panels.
    curves = {i: o for i, o in enumerate(occlusion) if o}
    ncols = 2 if curves else 1
    bar_width = min(12.0, max(6.0, 0.35 * len(bars) * max(1, len(runs)) + 2))  # inches: room for the bars
    fig, axes = plt.subplots(1, ncols, figsize=(bar_width + 5 * (ncols - 1), 4))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(bars))
    for i, run in enumerate(runs):
        values = [v[i] for v in bars.values()]
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, heights, width=width, label=run, color=f"C{i % 10}")
    ax.set_xticks(x, list(bars), rotation=30, ha="right", fontsize="small")
    ax.set(ylabel="%", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="x-small")
    if curves:
        ax = axes[1]
        for i, points in curves.items():
            pairs = sorted((float(r), float(a)) for r, a in points.items())
            xs, ys = [100 * r for r, _ in pairs], [100 * a for _, a in pairs]
            ax.plot(xs, ys, marker="o", label=runs[i], color=f"C{i % 10}")
        ax.set(
            xlabel="Occlusion ratio (%)", ylabel="Top-1 accuracy (%)", title="Random PatchDrop", ylim=(0, 100)
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return _save(plt, fig, path, dpi=100)
