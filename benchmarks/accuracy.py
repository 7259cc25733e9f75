"""Accuracy matrix: mixers × seeds trained through the CLI on one dataset and budget, in one table.

    HF_HUB_OFFLINE=1 python benchmarks/accuracy.py --jobs 2 --threads 1 -- \\
        --train_file '../shared/data/cifar10/train-*.parquet' \\
        --validation_file ../shared/data/cifar10/test-00000-of-00001.parquet \\
        --max_train_samples 10000 --max_eval_samples 2000 --num_train_epochs 8

Each (mixer, seed) is one `examples/run_image_classification.py` process (arguments after `--` go to every run),
`--jobs` of them at a time with `--threads` intra-op threads each. Every run keeps an EMA of the weights (`--ema
True`, also for `none`: the EMA does not touch the online model's training, so the online column of `none` is
`none` without an EMA and its EMA column is `none` with one). Per mixer: online and EMA top-1 at the end and the
median of the last `--last` evaluations (the released code reports the median of the last epochs), ECE, wall time
of the whole command and its ratio to `none`, mean ± sample std over seeds.

A run whose output folder already holds `all_results.json` is not trained again (re-running the command completes
an interrupted matrix). Writes `<out>/accuracy.json` and `<out>/accuracy.md`; each run's exported model stays in
`<runs_dir>/<mixer>_seed<seed>/` (e.g. for `examples/evaluate_robustness.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "examples", "run_image_classification.py")
NARROW_RESNET18 = "embedding_size=16,hidden_sizes=[16,32,64,128],depths=[2,2,2,2],layer_type=basic"
# What every run gets unless the arguments after `--` say otherwise: a narrow CIFAR ResNet-18 (width 16), batch 100,
# an evaluation per epoch, no checkpoints (the matrix is re-run per run, not resumed mid-run).
BASE = [
    "--model_type", "resnet", "--config_overrides", NARROW_RESNET18, "--cifar_stem",
    "--per_device_train_batch_size", "100", "--save_strategy", "no", "--ema", "True",
]  # fmt: skip


# HF_ADAUTOMIX_SMOKE=1 (tests/test_docs.py runs the docs' commands): seed 0 only (every mixer, so that the docs'
# evaluation of the seed-0 runs has its folders); each run caps itself (examples/run_image_classification.py).
SMOKE_CAPS = ["--seeds", "0"]


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    run_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    if os.environ.get("HF_ADAUTOMIX_SMOKE"):  # imported only then: `import hf_adautomix` costs torch's import
        from hf_adautomix.smoke import smoke_argv

        argv = smoke_argv(argv, SMOKE_CAPS, "accuracy.py")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--mixers", default="none,mixup,cutmix,automix,adautomix", help="comma-separated --mixup values"
    )
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run")
    p.add_argument("--last", type=int, default=3, help="evaluations in the 'median of the last' columns")
    p.add_argument("--runs_dir", default="outputs/accuracy_runs")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    args.run_args = run_args
    args.mixers = [m for m in args.mixers.split(",") if m]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    return args


def run_one(mixer: str, seed: int, args) -> dict:
    out = os.path.join(args.runs_dir, f"{mixer}_seed{seed}")
    results = os.path.join(out, "all_results.json")
    timing = os.path.join(out, "accuracy_run.json")
    if not (os.path.exists(results) and os.path.exists(timing)):
        cmd = [sys.executable, SCRIPT, *BASE, "--mixup", mixer, "--seed", str(seed), "--output_dir", out]
        cmd += args.run_args
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if args.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        os.makedirs(out, exist_ok=True)
        t0 = time.perf_counter()
        with open(os.path.join(out, "accuracy_run.log"), "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{mixer} seed {seed} failed (exit {proc.returncode}); see {out}/accuracy_run.log"
            )
        with open(timing, "w") as f:
            json.dump({"wall_s": time.perf_counter() - t0, "command": shlex.join(cmd)}, f, indent=2)
        print(f"done: {mixer} seed {seed}", flush=True)
    return summarize(out, args.last)


def summarize(out: str, last: int) -> dict:
    with open(os.path.join(out, "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    with open(os.path.join(out, "all_results.json")) as f:
        final = json.load(f)
    with open(os.path.join(out, "accuracy_run.json")) as f:
        timing = json.load(f)
    row = {"output_dir": out, "wall_s": timing["wall_s"], "command": timing["command"]}
    for name, key in (("online", "eval_accuracy"), ("ema", "eval_ema_accuracy")):
        curve = [h[key] for h in history if key in h]
        if not curve:
            continue
        row[f"{name}_top1"] = final.get(key, curve[-1])
        row[f"{name}_top1_median_last"] = statistics.median(curve[-last:])
        row[f"{name}_ece"] = final.get(key.replace("accuracy", "ece"))
    return row


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def table(runs: dict[str, list[dict]], last: int) -> str:
    base = statistics.mean(r["wall_s"] for r in runs["none"]) if "none" in runs else None
    lines = [
        f"| mixer | seeds | online top-1 % | online, median of last {last} | EMA top-1 % | EMA, median of last {last} "
        "| online ECE % | EMA ECE % | wall time / run | time × none |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mixer, rows in runs.items():
        wall = statistics.mean(r["wall_s"] for r in rows)
        cols = [
            _mean_sd([r.get(k) for r in rows])
            for k in ("online_top1", "online_top1_median_last", "ema_top1", "ema_top1_median_last", "online_ece",
                      "ema_ece")
        ]  # fmt: skip
        ratio = f"{wall / base:.2f}" if base else "–"
        lines.append(f"| {mixer} | {len(rows)} | {' | '.join(cols)} | {wall / 60:.1f} min | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    jobs = [(m, s) for s in args.seeds for m in args.mixers]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        done = list(pool.map(lambda job: run_one(*job, args), jobs))
    runs: dict[str, list[dict]] = {}
    for (mixer, _), row in zip(jobs, done):
        runs.setdefault(mixer, []).append(row)
    header = (
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, {args.jobs} run(s) at a "
        f"time with OMP_NUM_THREADS={args.threads or 'default'}; run arguments: {shlex.join(BASE + args.run_args)}"
    )
    md = header + "\n\n" + table(runs, args.last)
    print(md)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "accuracy.json"), "w") as f:
        json.dump({"header": header, "command": shlex.join(sys.argv), "runs": runs}, f, indent=2)
    with open(os.path.join(args.out, "accuracy.md"), "w") as f:
        f.write(md + "\n")


if __name__ == "__main__":
    main()
