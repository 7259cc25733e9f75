#!/usr/bin/env python
"""Put several training runs side by side (e.g. `--mixup none`, `mixup` and `adautomix` on the same data): each
run's mixer and model, the clean top-1 / top-5 / NLL / ECE of its online and EMA heads, and, where the run was
evaluated with `examples/evaluate_robustness.py`, its mean corruption error, FGSM error and occlusion curve.

    python examples/compare_runs.py outputs/none outputs/mixup outputs/adautomix --out_dir outputs/comparison
    python examples/compare_runs.py outputs/mixup outputs/adautomix \
        --robustness_dirs outputs/mixup/rob outputs/adautomix/rob

Reads `hf_adautomix_run.json` (mixer, model; else the folder name), `all_results.json` (else
`eval_results.json`) and `robustness/robustness.json` (or the matching `--robustness_dirs` entry; `-` for none).
Writes `comparison.md` (also printed), `comparison.json` and `comparison.png` to `--out_dir`. What a run lacks is
shown as "-".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from hf_adautomix.plots import save_run_comparison

# (column, key in the results; fraction shown in %, or a plain number)
CLEAN = [
    ("top-1", "accuracy", True),
    ("top-5", "top5_accuracy", True),
    ("NLL", "nll", False),
    ("ECE", "ece", True),
]
HEADS = [("", "eval_"), ("EMA ", "eval_ema_")]


def _load(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _model_name(record: dict) -> str | None:
    """The model a run trained, as its arguments name it."""
    for key in ("timm_model", "model_name_or_path"):
        if record.get(key):
            return str(record[key])
    return f"{record['model_type']} (random init)" if record.get("model_type") else None


def _robustness(run_dir: str, given: str | None) -> tuple[dict | None, str | None]:
    """The robustness results of a run: `given` (a folder or the JSON; '-'/'none': none), else
    `run_dir/robustness/robustness.json`."""
    if given is not None and given.strip().lower() in ("-", "none", ""):
        return None, None
    if given is None:
        path = os.path.join(run_dir, "robustness", "robustness.json")
    else:
        path = given if given.endswith(".json") else os.path.join(given, "robustness.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--robustness_dirs entry {given!r}: no robustness.json at {path!r}.")
    return _load(path), (path if os.path.isfile(path) else None)


def collect_run(run_dir: str, name: str, robustness_dir: str | None = None) -> dict[str, Any]:
    """What one run folder tells: `{"name", "dir", "mixer", "model", "clean": {head: {metric: value}},
    "corruption_error", "fgsm_error", "occlusion", "files"}`; absent pieces are None."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"Run folder {run_dir!r} does not exist.")
    record = _load(os.path.join(run_dir, "hf_adautomix_run.json")) or {}
    results_path = next(
        (
            p
            for p in (os.path.join(run_dir, n) for n in ("all_results.json", "eval_results.json"))
            if os.path.isfile(p)
        ),
        None,
    )
    results = _load(results_path) if results_path else {}
    clean = {
        head.strip() or "online": {key: results.get(prefix + key) for _, key, _ in CLEAN}
        for head, prefix in HEADS
    }
    robust, robust_path = _robustness(run_dir, robustness_dir)
    robust = robust or {}
    mixer = record.get("mixup")
    if mixer == "adautomix" and record.get("adautomix_variant") not in (None, "released"):
        mixer = f"adautomix ({record['adautomix_variant']})"
    return {
        "name": name,
        "dir": run_dir,
        "mixer": mixer or name,
        "model": _model_name(record) or name,
        "clean": clean,
        "corruption_error": (robust.get("corruptions") or {}).get("mean_error"),
        "fgsm_error": (robust.get("fgsm") or {}).get("error"),
        "fgsm_epsilon": (robust.get("fgsm") or {}).get("epsilon"),
        "occlusion": (robust.get("occlusion") or {}).get("accuracy"),
        "files": {"results": results_path, "robustness": robust_path},
    }


def _fmt(value, percent: bool) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if percent else f"{value:.4f}"


def _ratio_key(points: dict, ratio: float):
    return next((points[r] for r in points if abs(float(r) - ratio) < 1e-9), None)


def comparison_markdown(runs: list[dict]) -> str:
    """One row per run: mixer, model, clean metrics of both heads, robustness (percentages except NLL)."""
    ratios = sorted({float(r) for run in runs for r in (run["occlusion"] or {})})
    columns = ["run", "mixer", "model"]
    columns += [f"{head}{col}{' (%)' if pct else ''}" for head, _ in HEADS for col, _, pct in CLEAN]
    columns += ["corruption error (%)", "FGSM error (%)"] + [f"occlusion {r:.0%} top-1 (%)" for r in ratios]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for run in runs:
        cells = [run["name"], str(run["mixer"]), str(run["model"])]
        for head, _ in HEADS:
            cells += [_fmt(run["clean"][head.strip() or "online"][key], pct) for _, key, pct in CLEAN]
        cells += [_fmt(run["corruption_error"], True), _fmt(run["fgsm_error"], True)]
        cells += [_fmt(_ratio_key(run["occlusion"] or {}, r), True) for r in ratios]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _names(dirs: list[str]) -> list[str]:
    """Folder names, or the paths as given where two runs share a folder name."""
    base = [os.path.basename(os.path.normpath(d)) for d in dirs]
    return [b if base.count(b) == 1 else os.path.normpath(d) for b, d in zip(base, dirs)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="The runs' output_dir folders.")
    parser.add_argument("--out_dir", default="comparison", help="Where comparison.md/.json/.png go.")
    parser.add_argument(
        "--robustness_dirs",
        nargs="+",
        default=None,
        help="One per run: the folder of its robustness.json (or the file); '-' for none. "
        "Default: RUN/robustness/robustness.json where it exists.",
    )
    parser.add_argument("--names", nargs="+", default=None, help="One label per run (default: folder names).")
    args = parser.parse_args(argv)
    for flag, given in (("--robustness_dirs", args.robustness_dirs), ("--names", args.names)):
        if given is not None and len(given) != len(args.run_dirs):
            parser.error(f"{flag}: expected one entry per run ({len(args.run_dirs)}), got {len(given)}.")

    names = args.names or _names(args.run_dirs)
    rob = args.robustness_dirs or [None] * len(args.run_dirs)
    runs = [collect_run(d, n, r) for d, n, r in zip(args.run_dirs, names, rob)]

    # The table, printed and written; the collected numbers as JSON.
    os.makedirs(args.out_dir, exist_ok=True)
    table = comparison_markdown(runs)
    md_path = os.path.join(args.out_dir, "comparison.md")
    with open(md_path, "w") as f:
        f.write("# Run comparison\n\n" + table)
    with open(os.path.join(args.out_dir, "comparison.json"), "w") as f:
        json.dump(runs, f, indent=2)
    print(table)

    # The figure: clean (online, EMA) and robustness bars, and the occlusion curves.
    def pct(v):
        return None if v is None else 100 * v

    bars = {
        f"{head}{col}": [pct(run["clean"][head.strip() or "online"][key]) for run in runs]
        for head, _ in HEADS
        for col, key, is_pct in CLEAN
        if is_pct
    }
    bars["corruption error"] = [pct(run["corruption_error"]) for run in runs]
    bars["FGSM error"] = [pct(run["fgsm_error"]) for run in runs]
    bars = {k: v for k, v in bars.items() if any(x is not None for x in v)}
    png = save_run_comparison(
        names, bars, [run["occlusion"] for run in runs], os.path.join(args.out_dir, "comparison.png")
    )
    print(f"Wrote {md_path} and {png}")
    return {"runs": runs, "markdown": md_path, "figure": png}


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"compare_runs.py: {e}")
