"""FLOPs, wall time, images/s and peak memory of one optimizer step of each mixer, relative to `none`, in one run.

    HF_HUB_OFFLINE=1 python benchmarks/step_cost.py --threads 1                       # learned mixers, CPU
    HF_HUB_OFFLINE=1 python benchmarks/step_cost.py --threads 1 --group classic       # the classic mixers
    HF_HUB_OFFLINE=1 python benchmarks/step_cost.py --device cuda --batch_size 100   # GPU

`--group learned` (default) runs `none`, AutoMix and AdAutoMix variants, `--group classic` `none` and every classic
mixer (PuzzleMix with gco-wrapper when installed, and with our own α-β swap graph cut), `--group all` both.

A step is what the trainer does per batch: `MixupModel` forward + backward + SGD step + EMA update. Learned
mixers run twice: `single` (one backward of the total, `early_backward=False`) and `per-pass` (each online
classifier pass back-propagated inside the forward as soon as its loss is built, the default under the trainer).
`stop=always` rows force the teacher's clean pass to stop at the tapped stage even on a BN teacher (there it drops
the clean batch from the teacher's stage-4 running statistics, so "auto" does not do it; on LayerNorm teachers
"auto" does it exactly).

* FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one step (forward and backward).
* Time: median of `--rounds` × `--steps` steps after `--warmup`, variants interleaved round by round.
* Peak memory: CUDA, `max_memory_allocated` during a step minus the memory allocated before it; CPU, peak RSS of
  a fresh subprocess per variant (Linux VmHWM, reset after one warm-up step) minus its RSS before the
  measured steps.

Model: a CIFAR ResNet-18 (transformers ResNet, basic blocks, depths 2-2-2-2) of width `--width` (16: stages of
16/32/64/128 channels). Writes `benchmarks/results/step_cost_<device>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_adautomix.arguments import MixupArguments  # noqa: E402
from hf_adautomix.backbones import build_model, wrap_classifier  # noqa: E402
from hf_adautomix.mixers import CLASSIC_MIXERS, build_mixer  # noqa: E402
from hf_adautomix.modeling import MixupModel  # noqa: E402
from hf_adautomix.smoke import smoke_argv, smoke_run  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# name: (MixupArguments kwargs, per-pass backward, mixer attributes set after building)
LEARNED = {
    "automix single": (dict(mixup="automix"), False, {}),
    "automix per-pass": (dict(mixup="automix"), True, {}),
    "automix per-pass stop=always": (dict(mixup="automix"), True, {"teacher_stop_early": "always"}),
    "adautomix N=2 single": (dict(mixup="adautomix", mix_num=2), False, {}),
    "adautomix N=2 per-pass": (dict(mixup="adautomix", mix_num=2), True, {}),
    "adautomix N=3 single": (dict(mixup="adautomix", mix_num=3), False, {}),
    "adautomix N=3 per-pass": (dict(mixup="adautomix", mix_num=3), True, {}),
    "adautomix N=3 separate single": (
        dict(mixup="adautomix", mix_num=3, teacher_ref_passes="separate"),
        False,
        {},
    ),
    "adautomix N=3 separate per-pass stop=always": (
        dict(mixup="adautomix", mix_num=3, teacher_ref_passes="separate"),
        True,
        {"teacher_stop_early": "always"},
    ),
}
CLASSIC = {name: (dict(mixup=name), False, {}) for name in CLASSIC_MIXERS}
CLASSIC["puzzlemix swap"] = (dict(mixup="puzzlemix"), False, {"graph_cut": "swap"})  # without gco-wrapper
VARIANTS = {"none": (dict(mixup="none"), False, {}), **LEARNED, **CLASSIC}
GROUPS = {"learned": ["none", *LEARNED], "classic": ["none", *CLASSIC], "all": list(VARIANTS)}
# HF_ADAUTOMIX_SMOKE=1 (tests/test_docs.py runs the docs' commands): a tiny model and batch, one timed step, and
# `none` alone unless --only is given (see parse_args): each variant's memory is measured in a process of its own.
SMOKE_CAPS = [
    "--width", "4", "--batch_size", "4", "--warmup", "0", "--steps", "1", "--rounds", "1", "--mem_steps", "1",
]  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--mem_steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels_last", action="store_true", help="channels-last weights and inputs")
    p.add_argument(
        "--amp", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype of the forward"
    )
    p.add_argument("--only", nargs="*", default=None, help="variant names to run (default: --group's)")
    p.add_argument("--group", choices=sorted(GROUPS), default="learned", help="which variants to run")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(smoke_argv(sys.argv[1:] if argv is None else argv, SMOKE_CAPS, "step_cost.py"))
    if smoke_run() and args.only is None:
        args.only = ["none"]
    return args


def build(name: str, args, device):
    kwargs, per_pass, attributes = VARIANTS[name]
    torch.manual_seed(args.seed)
    w = args.width
    model = build_model(
        num_labels=args.num_classes,
        id2label={i: str(i) for i in range(args.num_classes)},
        model_type="resnet",
        config_overrides=f"embedding_size={w},hidden_sizes=[{w},{2 * w},{4 * w},{8 * w}],depths=[2,2,2,2],"
        "layer_type=basic",
        cifar_stem=True,
    )
    classifier = wrap_classifier(model)
    mix_args = MixupArguments(**kwargs)
    mixer = build_mixer(mix_args, num_classes=args.num_classes, label_smoothing=0.0, classifier=classifier)
    for attribute, value in attributes.items():
        setattr(mixer, attribute, value)
    wrapper = MixupModel(classifier, mixer, ema=mix_args.ema).to(device).train()
    if args.channels_last:
        wrapper.to_channels_last()
    wrapper.total_steps = 10_000
    wrapper.early_backward = per_pass
    # fp16 scales every backward, also the per-pass ones inside the forward (as Trainer's accelerator does).
    wrapper.scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    scale = wrapper.scaler.scale if wrapper.scaler is not None else (lambda loss: loss)
    # Lent for each step's forward (`MixupModel.per_pass_backward`), as the trainer's `training_step` does.
    wrapper.bench_backward = (lambda loss: scale(loss).backward()) if per_pass else None
    opt = torch.optim.SGD([p for p in wrapper.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    return wrapper, opt


AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP = {"dtype": None}  # set from --amp


def step(wrapper, opt, x, y):
    opt.zero_grad(set_to_none=True)
    dtype, scaler = AMP["dtype"], wrapper.scaler
    fn = wrapper.bench_backward
    lent = wrapper.per_pass_backward(fn) if fn is not None else contextlib.nullcontext()
    with lent, torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = wrapper(x, y)["loss"]
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    if wrapper.teacher is not None:
        wrapper.update_ema()


def batch(args, device):
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g)
    return x.to(device), y.to(device)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(args) -> None:
    """Peak memory of one variant's steps, in this fresh process."""
    device = torch.device(args.device)
    wrapper, opt = build(args._child, args, device)
    x, y = batch(args, device)
    if device.type == "cuda":
        step(wrapper, opt, x, y)  # optimizer state and caches exist from here on, as in training
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(args.mem_steps):
            step(wrapper, opt, x, y)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        step(
            wrapper, opt, x, y
        )  # one warm-up step (optimizer state, oneDNN caches), then reset the high-water mark
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux ≥ 4.0: VmHWM := VmRSS
        before = _status_kib("VmRSS") * 1024
        for _ in range(args.mem_steps):
            step(wrapper, opt, x, y)
        peak = _status_kib("VmHWM") * 1024 - before
    print(json.dumps({"peak_bytes": peak}))


def peak_memory(name: str, args) -> int:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", name, "--device", args.device]
    cmd += [
        "--width",
        str(args.width),
        "--batch_size",
        str(args.batch_size),
        "--mem_steps",
        str(args.mem_steps),
        "--amp",
        args.amp,
        *(["--channels_last"] if args.channels_last else []),
    ]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    # glibc keeps freed small-and-medium blocks resident, so RSS would not fall when activations are freed: serve
    # every block over 64 KiB by mmap (returned to the OS on free) so that VmHWM tracks the live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def flops(wrapper, opt, x, y) -> int | None:
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            step(wrapper, opt, x, y)
    except (
        RuntimeError
    ):  # PuzzleMix: FlopCounterMode's module hooks break its torch.autograd.grad (torch 2.14)
        return None
    return counter.get_total_flops()


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def main(argv=None):
    args = parse_args(argv)
    AMP["dtype"] = AMP_DTYPES[args.amp]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        return child(args)
    device = torch.device(args.device)
    names = args.only or GROUPS[args.group]
    if "none" not in names:
        names = ["none", *names]
    x, y = batch(args, device)
    built = {n: build(n, args, device) for n in names}
    for w, o in built.values():
        for _ in range(args.warmup):
            step(w, o, x, y)
    fl = {n: flops(*built[n], x, y) for n in names}
    times = {n: [] for n in names}
    for _ in range(args.rounds):
        for n, (w, o) in built.items():
            for _ in range(args.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                step(w, o, x, y)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[n].append(time.perf_counter() - t0)
    del built
    mem = {n: peak_memory(n, args) for n in names}
    t0, f0, m0 = statistics.median(times["none"]), fl["none"], mem["none"]
    rows = []
    for n in names:
        t = statistics.median(times[n])
        rows.append(
            {
                "variant": n,
                "gflops_per_step": fl[n] / 1e9 if fl[n] is not None else None,
                "flops_x_none": fl[n] / f0 if fl[n] is not None else None,
                "ms_per_step": 1e3 * t,
                "time_x_none": t / t0,
                "images_per_s": args.batch_size / t,
                "peak_mib": mem[n] / 2**20,
                "peak_x_none": mem[n] / m0 if m0 > 0 else float("nan"),
            }
        )
    dev = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    mem_kind = (
        "max_memory_allocated above the pre-step allocation"
        if device.type == "cuda"
        else ("peak RSS above the pre-step RSS, fresh process per variant")
    )
    header = (
        f"device: {dev} ({args.device}), threads: {torch.get_num_threads()}, CIFAR ResNet-18 width {args.width}, "
        f"batch {args.batch_size} of random 32x32 images, {args.rounds}x{args.steps} timed steps per variant "
        f"(interleaved, after {args.warmup} warm-up), {args.amp}{', channels-last' if args.channels_last else ''}, peak memory: {mem_kind}"
    )
    lines = [
        header,
        "",
        "| variant | GFLOPs / step | FLOPs × none | ms / step | time × none | images/s | peak MiB | peak × none |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['variant']} | {_num(r['gflops_per_step'])} | {_num(r['flops_x_none'])} | {r['ms_per_step']:.1f} | "
        f"{r['time_x_none']:.2f} | {r['images_per_s']:.0f} | {r['peak_mib']:.1f} | {r['peak_x_none']:.2f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    # step_cost_cpu.md: the learned group in fp32; other groups, --only, --amp and --channels_last get a suffix
    suffix = "_only" if args.only else ("" if args.group == "learned" else f"_{args.group}")
    suffix += ("" if args.amp == "fp32" else f"_{args.amp}") + (
        "_channels_last" if args.channels_last else ""
    )
    stem = os.path.join(args.out, f"step_cost_{device.type}{suffix}")
    with open(stem + ".json", "w") as f:
        json.dump({"header": header, "rows": rows, "command": " ".join(sys.argv)}, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
