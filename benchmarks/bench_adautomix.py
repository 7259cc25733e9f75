"""Cost of one training step of the learned mixers relative to `none`, measured in one run.

    HF_HUB_OFFLINE=1 python benchmarks/bench_adautomix.py --device cpu --threads 1
    HF_HUB_OFFLINE=1 python benchmarks/bench_adautomix.py --device cuda --cifar_r18   # ResNet-18 CIFAR on a GPU

A step is what the trainer does per batch: `MixupModel` forward (all passes of the method) + backward + SGD step +
EMA update. Variants, interleaved over `--rounds` rounds so that machine noise hits them alike:

* `none`, `automix`;
* `adautomix N=k` for k = 2..5 with the default shared teacher pass (§9.1 of the reference);
* `adautomix N=3 released passes`: N extra teacher reference passes and bb masks built with a graph, as the
  released code does (`--teacher_ref_passes separate`) — the cost of the original at the same maths.

Writes `benchmarks/results/adautomix_<device>.json` and `.md` and prints the table (median ms/step, ratio to none).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_mixers import load_batch  # noqa: E402

from hf_adautomix.arguments import MixupArguments  # noqa: E402
from hf_adautomix.backbones import build_model, wrap_classifier  # noqa: E402
from hf_adautomix.mixers import build_mixer  # noqa: E402
from hf_adautomix.modeling import MixupModel  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {
    "none": dict(mixup="none"),
    "automix": dict(mixup="automix"),
    "adautomix N=2": dict(mixup="adautomix", mix_num=2),
    "adautomix N=3": dict(mixup="adautomix", mix_num=3),
    "adautomix N=4": dict(mixup="adautomix", mix_num=4),
    "adautomix N=5": dict(mixup="adautomix", mix_num=5),
    "adautomix N=3 released passes": dict(mixup="adautomix", mix_num=3, teacher_ref_passes="separate"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (1 on a shared CPU box)."
    )
    p.add_argument(
        "--cifar_r18", action="store_true", help="timm ResNet-18 CIFAR variant (the paper's model)."
    )
    p.add_argument(
        "--config_overrides",
        default="embedding_size=16,hidden_sizes=[16,32,64,128],depths=[1,1,1,1],layer_type=basic",
    )
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "cifar10"))
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    return p.parse_args(argv)


def build(variant: dict, args, device) -> tuple[MixupModel, torch.optim.Optimizer]:
    torch.manual_seed(args.seed)
    id2label = {i: str(i) for i in range(args.num_classes)}
    if args.cifar_r18:
        model = build_model(
            num_labels=args.num_classes, id2label=id2label, timm_model="resnet18", cifar_stem=True
        )
    else:
        model = build_model(
            num_labels=args.num_classes,
            id2label=id2label,
            model_type="resnet",
            config_overrides=args.config_overrides,
            cifar_stem=True,
        )
    classifier = wrap_classifier(model)
    mix_args = MixupArguments(**variant)
    mixer = build_mixer(mix_args, num_classes=args.num_classes, label_smoothing=0.0, classifier=classifier)
    wrapper = MixupModel(classifier, mixer, ema=mix_args.ema).to(device).train()
    wrapper.total_steps = 10_000
    params = [p for p in wrapper.parameters() if p.requires_grad]
    return wrapper, torch.optim.SGD(params, lr=0.01, momentum=0.9)


def run_steps(wrapper, opt, x, y, n: int, device) -> list[float]:
    times = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        wrapper(x, y)["loss"].backward()
        opt.step()
        wrapper.update_ema() if wrapper.teacher is not None else None
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.image_size = 32
    x, y, source = load_batch(args, device)
    built = {name: build(v, args, device) for name, v in VARIANTS.items()}
    for w, o in built.values():
        run_steps(w, o, x, y, args.warmup, device)
    times = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (w, o) in built.items():
            times[name] += run_steps(w, o, x, y, args.steps, device)
    base = statistics.median(times["none"])
    rows = [
        {
            "variant": n,
            "ms_per_step": 1e3 * statistics.median(t),
            "ratio_to_none": statistics.median(t) / base,
        }
        for n, t in times.items()
    ]
    released = next(r for r in rows if r["variant"] == "adautomix N=3 released passes")["ms_per_step"]
    ours = next(r for r in rows if r["variant"] == "adautomix N=3")["ms_per_step"]
    dev = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    header = (
        f"device: {dev} ({args.device}), threads: {torch.get_num_threads()}, batch {args.batch_size} of "
        f"{source}, model: {'timm resnet18 CIFAR' if args.cifar_r18 else 'small transformers ResNet CIFAR'}, "
        f"{args.rounds}x{args.steps} steps per variant, interleaved"
    )
    lines = [header, "", "| variant | ms / step (median) | × none |", "|---|---:|---:|"]
    lines += [f"| {r['variant']} | {r['ms_per_step']:.1f} | {r['ratio_to_none']:.2f} |" for r in rows]
    lines += [
        "",
        f"AdAutoMix N=3, shared teacher pass vs released passes: {ours / released:.2f}× the time per step.",
    ]
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"adautomix_{device.type}")
    with open(stem + ".json", "w") as f:
        json.dump({"header": header, "rows": rows, "command": " ".join(sys.argv)}, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
