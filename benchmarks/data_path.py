"""Training through `AdAutoMixTrainer` (Python API) and the CLI against a plain PyTorch loop, on every data path.

    HF_HUB_OFFLINE=1 python benchmarks/data_path.py --threads 1

Same model (CIFAR ResNet-18 of width `--width`, from scratch), data (the first `--train_samples` CIFAR-10 training
images of `../shared/data/cifar10`), batch, optimizer (SGD, Nesterov momentum 0.9, weight decay 5e-4, cosine LR),
augmentation (CIFAR crop with 4 px reflect padding, horizontal flip) and `--mixup none` everywhere. Each variant
runs in a fresh process, one after the other, `--repeats` times in interleaved order.

* Step time: median time from one optimizer step's end to the next's (data fetch, forward, backward, optimizer,
  logging: all a training iteration costs) over `--steps` steps after `--warmup`, for
  - `plain loop`: images decoded once to a uint8 tensor, a random crop+flip per batch, the loop written by hand;
  - `api raw images`: `AdAutoMixTrainer` given the raw `datasets` split (parquet, undecoded images);
  - `api raw, per image`: the same with decoding forced to one image at a time (`with_transform`, the path
    before images were decoded once);
  - `api with_format("torch")`: given ready `pixel_values` (a `map` of the eval transform, `with_format("torch")`);
  - `api with_format("torch"), via datasets`: the same read through `datasets`' formatter row by row (the path
    before ready datasets were read once);
  - `cli parquet`: `examples/run_image_classification.py` on the parquet file.
* Loader throughput: images/s of the trainer's own training DataLoader alone (no step), beside the step's
  images/s on a fixed batch: the smaller one bounds training.
* Whole run: wall time of the CLI command for `--whole_steps` steps (startup, loading, pre-flight, training, final
  evaluation on `--eval_samples` images, export) against a plain-loop script doing the same.

Writes `benchmarks/results/data_path_<device>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CIFAR = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10")
TRAIN_FILE = os.path.join(CIFAR, "train-00000-of-00002.parquet")
EVAL_FILE = os.path.join(CIFAR, "test-00000-of-00001.parquet")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
STEP_VARIANTS = [
    "plain loop",
    "api raw images",
    "api raw, per image",
    'api with_format("torch")',
    'api with_format("torch"), via datasets',
    "cli parquet",
]


# HF_ADAUTOMIX_SMOKE=1 (tests/test_docs.py runs the docs' commands): the plain loop alone, a tiny model, 3 steps on
# 64 images, once; no whole-run comparison.
SMOKE_CAPS = [
    "--only", "plain loop", "--width", "4", "--batch_size", "16", "--train_samples", "64", "--eval_samples", "32",
    "--steps", "2", "--warmup", "0", "--repeats", "1", "--whole_steps", "0",
]  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--train_file", default=TRAIN_FILE, help="parquet with CIFAR-10's columns (img, label)")
    p.add_argument("--eval_file", default=EVAL_FILE)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--train_samples", type=int, default=3000)
    p.add_argument("--eval_samples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--whole_steps", type=int, default=300, help="0 skips the whole-run comparison")
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    from hf_adautomix.smoke import smoke_argv

    return p.parse_args(smoke_argv(sys.argv[1:] if argv is None else argv, SMOKE_CAPS, "data_path.py"))


def resnet_overrides(width: int) -> str:
    """`--config_overrides` of a CIFAR ResNet-18 with stages of width, 2x, 4x, 8x channels (as step_cost.py)."""
    w = width
    return f"embedding_size={w},hidden_sizes=[{w},{2 * w},{4 * w},{8 * w}],depths=[2,2,2,2],layer_type=basic"


def model_flags(width: int) -> list[str]:
    return ["--model_type", "resnet", "--config_overrides", resnet_overrides(width), "--cifar_stem"]


def build_classifier(width: int):
    """The model `model_flags` gives the CLI, built in this process."""
    import torch

    from hf_adautomix.backbones import build_model

    torch.manual_seed(0)
    labels = {i: str(i) for i in range(10)}
    return build_model(
        num_labels=10,
        id2label=labels,
        model_type="resnet",
        config_overrides=resnet_overrides(width),
        cifar_stem=True,
    )


def load_split(path: str, n: int):
    import datasets

    ds = datasets.load_dataset("parquet", data_files={"train": path}, split="train")
    return ds.select(range(min(n, len(ds))))


def decode_uint8(ds):
    """The plain loop's data: every image decoded once into a uint8 (N, 3, 32, 32) tensor."""
    import io

    import numpy as np
    import PIL.Image
    import torch

    raw = ds.cast_column("img", __import__("datasets").Image(decode=False))
    images = np.stack([np.array(PIL.Image.open(io.BytesIO(v["bytes"])).convert("RGB")) for v in raw["img"]])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(raw["label"])


def plain_loop(args, steps: int, on_step, images, labels):
    """The hand-written loop: shuffled batches, crop+flip on the batch, SGD with a cosine LR."""
    import math

    import torch
    import torch.nn.functional as F

    device = torch.device(args.device)
    model = build_classifier(args.width).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    n, b, step = len(labels), args.batch_size, 0
    while step < steps:
        perm = torch.randperm(n)
        for i in range(0, n - b + 1, b):  # drop the last incomplete batch, as the trainer does
            idx = perm[i : i + b]
            x = F.pad(images[idx].float(), (4, 4, 4, 4), mode="reflect")
            top, left = torch.randint(
                0, 9, (2,)
            ).tolist()  # one offset per batch: the simplest hand-written loop
            x = x[:, :, top : top + 32, left : left + 32]
            flip = torch.rand(b) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            x = ((x / 255 - mean) / std).to(device)
            y = labels[idx].to(device)
            loss = F.cross_entropy(model(pixel_values=x).logits, y)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            on_step(loss)
            if step >= steps:
                return model


class _StepClock:
    def __init__(self, device):
        self.device, self.times = device, []

    def tick(self, *_):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def median_step(self, warmup: int) -> float:
        gaps = [b - a for a, b in zip(self.times, self.times[1:])][warmup:]
        return statistics.median(gaps)


def trainer_for(args, variant: str, out: str, steps: int):
    import torch
    from transformers import TrainerCallback, TrainingArguments

    from hf_adautomix import AdAutoMixTrainer
    from hf_adautomix import data as data_lib
    from hf_adautomix.data import in_memory

    train = load_split(args.train_file, args.train_samples)
    if variant == "api raw, per image":
        in_memory.DECODE_ONCE_MAX_BYTES = 0  # read where it is used
    if variant.startswith('api with_format("torch")'):
        _, eval_tf = data_lib.build_transforms("cifar", 32, CIFAR_MEAN, CIFAR_STD)
        train = train.map(
            lambda b: {"pixel_values": [eval_tf(i.convert("RGB")) for i in b["img"]], "labels": b["label"]},
            batched=True,
            remove_columns=train.column_names,
        ).with_format("torch")
        if variant.endswith("via datasets"):
            in_memory.in_memory_tensors = lambda ds: None  # read where it is used
    targs = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=args.batch_size,
        max_steps=steps,
        learning_rate=0.1,
        weight_decay=5e-4,
        optim="sgd",
        optim_args="momentum=0.9,nesterov=True",
        lr_scheduler_type="cosine",
        max_grad_norm=0.0,
        logging_steps=20,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
    )
    clock = _StepClock(torch.device(args.device))

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            clock.tick()

    trainer = AdAutoMixTrainer(model=build_classifier(args.width), args=targs, train_dataset=train)
    trainer.add_callback(Clock())
    return trainer, clock


def child(args) -> dict:
    import torch

    device = torch.device(args.device)
    variant = args._child
    steps = args.warmup + args.steps + 1
    with tempfile.TemporaryDirectory() as out:
        if variant == "plain loop":
            images, labels = decode_uint8(load_split(args.train_file, args.train_samples))
            clock = _StepClock(device)
            plain_loop(args, steps, clock.tick, images, labels)
            return {"step_s": clock.median_step(args.warmup)}
        if variant == "cli parquet":
            return {"step_s": cli_steps(args, out, steps)}
        trainer, clock = trainer_for(args, variant, out, steps)
        result = {"dataset": type(trainer.train_dataset).__name__}
        # Loader alone: the trainer's own training DataLoader, iterated without a step.
        loader = trainer.get_train_dataloader()
        t0, seen = time.perf_counter(), 0
        for i, batch in enumerate(loader):
            seen += len(batch["labels"])
            if i + 1 >= args.steps:
                break
        result["loader_images_s"] = seen / (time.perf_counter() - t0)
        trainer.train()
        result["step_s"] = clock.median_step(args.warmup)
        # The step alone, on one fixed batch: forward, backward, optimizer step.
        model, opt = trainer.model, trainer.optimizer
        x = batch["pixel_values"].to(device)
        y = batch["labels"].to(device)
        times = []
        for _ in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            model(pixel_values=x, labels=y)["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        result["model_images_s"] = args.batch_size / statistics.median(times[args.warmup :])
        return result


def cli_command(args, out: str, steps: int, eval_samples: int | None) -> list[str]:
    cmd = [
        sys.executable,
        os.path.join(ROOT, "examples", "run_image_classification.py"),
        *model_flags(args.width),
    ]
    cmd += ["--train_file", args.train_file, "--max_train_samples", str(args.train_samples)]
    cmd += [
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--max_steps",
        str(steps),
        "--output_dir",
        out,
    ]
    cmd += ["--logging_steps", "20", "--disable_tqdm", "True"]
    if eval_samples:
        cmd += [
            "--validation_file",
            args.eval_file,
            "--max_eval_samples",
            str(eval_samples),
            "--eval_strategy",
            "no",
        ]
    else:
        cmd += ["--validation_file", args.eval_file, "--max_eval_samples", "100", "--eval_strategy", "no"]
    if args.device == "cpu":
        cmd += ["--use_cpu", "True"]
    return cmd


def cli_steps(args, out: str, steps: int) -> float:
    """Step time inside the CLI: its trainer_state.json has no per-step times, so run the CLI's main() in this
    process with a clock callback added to the trainer it builds."""
    import importlib.util

    from transformers import TrainerCallback

    import hf_adautomix

    clock = _StepClock(__import__("torch").device(args.device))

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            clock.tick()

    original = hf_adautomix.AdAutoMixTrainer.__init__

    def init(self, *a, **k):
        original(self, *a, **k)
        self.add_callback(Clock())

    hf_adautomix.AdAutoMixTrainer.__init__ = init
    spec = importlib.util.spec_from_file_location(
        "cli", os.path.join(ROOT, "examples", "run_image_classification.py")
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cli.main(cli_command(args, out, steps, None)[2:])
    return clock.median_step(args.warmup)


PLAIN_SCRIPT = """
import sys, time, torch
sys.path.insert(0, {here!r})
import data_path as b
args = b.parse_args({argv!r})
if args.threads: torch.set_num_threads(args.threads)
images, labels = b.decode_uint8(b.load_split(args.train_file, args.train_samples))
model = b.plain_loop(args, {steps}, lambda loss: None, images, labels).eval()
ev_x, ev_y = b.decode_uint8(b.load_split(args.eval_file, args.eval_samples))
"""


def whole_runs(args) -> dict:
    """Wall time of the whole CLI command against a plain-loop script (decode, train, evaluate, save)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    plain = PLAIN_SCRIPT.format(here=HERE, argv=_child_argv(args), steps=args.whole_steps)
    plain += (
        "with torch.no_grad():\n"
        "    acc = sum((model(pixel_values=((x.float() / 255 - torch.tensor(b.CIFAR_MEAN).view(1, 3, 1, 1))"
        " / torch.tensor(b.CIFAR_STD).view(1, 3, 1, 1))).logits.argmax(1) == y).sum().item()"
        " for x, y in zip(ev_x.split(256), ev_y.split(256)))\n"
        "torch.save(model.state_dict(), {out!r})\n"
    )
    times = {"plain loop": [], "cli parquet": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", plain.replace("{out!r}", repr(os.path.join(out, "m.pt")))],
                env=env,
                check=True,
                capture_output=True,
            )
            times["plain loop"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            cmd = cli_command(args, os.path.join(out, "cli"), args.whole_steps, args.eval_samples)
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            times["cli parquet"].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _child_argv(args) -> list[str]:
    argv = ["--device", args.device, "--width", str(args.width), "--batch_size", str(args.batch_size)]
    argv += ["--train_file", args.train_file, "--eval_file", args.eval_file]
    argv += ["--train_samples", str(args.train_samples), "--eval_samples", str(args.eval_samples)]
    argv += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    return argv + (["--threads", str(args.threads)] if args.threads else [])


def main(argv=None):
    args = parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        print(json.dumps(child(args)))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    names = args.only or STEP_VARIANTS
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            cmd = [sys.executable, os.path.abspath(__file__), "--_child", name, *_child_argv(args)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    rows = []
    base = statistics.median(r["step_s"] for r in runs["plain loop"]) if "plain loop" in runs else None
    for name, results in runs.items():
        step = statistics.median(r["step_s"] for r in results)
        row = {"variant": name, "ms_per_step": 1e3 * step, "x_plain": step / base if base else None}
        for key in ("loader_images_s", "model_images_s", "dataset"):
            if key in results[0]:
                vals = [r[key] for r in results]
                row[key] = statistics.median(vals) if key != "dataset" else vals[0]
        if "loader_images_s" in row:
            row["bound_by"] = (
                "data loader" if row["loader_images_s"] < row["model_images_s"] else "model step"
            )
        rows.append(row)
    whole = whole_runs(args) if args.whole_steps > 0 else {}
    dev = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu"
    header = (
        f"device: {dev} ({args.device}), threads: {args.threads or torch.get_num_threads()}, CIFAR ResNet-18 width "
        f"{args.width}, batch {args.batch_size}, first {args.train_samples} CIFAR-10 training images, `--mixup none`; "
        f"step time: median over {args.steps} steps after {args.warmup}, median of {args.repeats} fresh processes"
    )
    lines = [
        header,
        "",
        "| data path | dataset the trainer reads | ms / step | × plain loop | loader images/s | step images/s | bound by |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        loader = f"{r['loader_images_s']:.0f}" if "loader_images_s" in r else "–"
        model = f"{r['model_images_s']:.0f}" if "model_images_s" in r else "–"
        lines.append(
            f"| {r['variant']} | {r.get('dataset', '–')} | {r['ms_per_step']:.1f} | "
            f"{r['x_plain']:.3f} | {loader} | {model} | {r.get('bound_by', '–')} |"
        )
    if whole:
        lines += [
            "",
            f"Whole run, {args.whole_steps} steps + evaluation on {args.eval_samples} images + save "
            f"(median of {args.repeats}): plain-loop script {whole['plain loop']:.1f} s, CLI "
            f"{whole['cli parquet']:.1f} s, CLI × plain loop {whole['cli parquet'] / whole['plain loop']:.3f}.",
        ]
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"data_path_{args.device}")
    with open(stem + ".json", "w") as f:
        json.dump(
            {"header": header, "rows": rows, "whole_run_s": whole, "command": " ".join(sys.argv)}, f, indent=2
        )
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
