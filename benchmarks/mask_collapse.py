"""Did the learned masks of finished runs collapse? One markdown row per run folder, from its `trainer_state.json`.

A logging window counts as collapsed by the criterion of the training-time warning
(`hf_adautomix.callbacks.MaskCollapseWarning`: mask entropy < 0.05 nats and mean |mask area − λ| > 0.25); the
onset is the first step of its first run of 5 collapsed windows. With the run's flags (`hf_adautomix_run.json`)
and the exported EMA teacher's accuracy, so runs that differ in one flag can be compared:

    python benchmarks/mask_collapse.py runs/collapse_*
"""

from __future__ import annotations

import argparse
import json
import os

from hf_adautomix.callbacks import MaskCollapseWarning


def _json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def summarize(run: str) -> dict:
    """The collapse facts of one run folder."""
    state = _json(os.path.join(run, "trainer_state.json"))
    if not state:
        raise SystemExit(f"error: {run} has no trainer_state.json (not a finished training run)")
    logs = [r for r in state["log_history"] if MaskCollapseWarning.collapsed(r) is not None]
    watch = MaskCollapseWarning(mixer="")
    onset = next((watch.first for r in logs if watch.update(r["step"], r)), None)
    flags = _json(os.path.join(run, "hf_adautomix_run.json"))  # the run's flags
    results = _json(os.path.join(run, "all_results.json"))
    return {
        "run": run,
        "mixup": flags.get("mixup", "?"),
        "ema_warmup": flags.get("ema_warmup", "?"),
        "windows": len(logs),
        "collapsed": sum(bool(MaskCollapseWarning.collapsed(r)) for r in logs),
        "onset": onset,
        "min_entropy": min((r["train_mask_entropy"] for r in logs), default=float("nan")),
        "last_gap": logs[-1]["train_mask_lam_gap"] if logs else float("nan"),
        "ema_accuracy": results.get("eval_ema_accuracy", float("nan")),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| run | `--mixup` | `--ema_warmup` | logs with masks | collapsed | onset step | min entropy | last gap | "
        "EMA top-1 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        onset = "—" if r["onset"] is None else str(r["onset"])
        lines.append(
            f"| {r['run']} | {r['mixup']} | {r['ema_warmup']} | {r['windows']} | {r['collapsed']} | {onset} | "
            f"{r['min_entropy']:.4f} | {r['last_gap']:.3f} | {r['ema_accuracy']:.4f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="output folders of finished training runs")
    args = p.parse_args(argv)
    print(table([summarize(run) for run in args.runs]))


if __name__ == "__main__":
    main()
