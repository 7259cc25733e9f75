"""Time one training step (mixer forward + backward + SGD step) for `none` and every classic mixer, in one run.

    HF_HUB_OFFLINE=1 python benchmarks/bench_mixers.py                      # CPU or the first GPU
    HF_HUB_OFFLINE=1 python benchmarks/bench_mixers.py --device cpu --steps 20 --threads 1

On a busy, shared CPU box use `--threads 1`: with several intra-op threads, OpenMP barrier waits under contention can
inflate a step a hundredfold and swamp the mixers' own cost.

Writes `benchmarks/results/mixers_<device>.json` and `.md` (a table of the median time per step and its ratio to
`none`) and prints the table. The batch is the first `--batch_size` CIFAR-10 test images (`../shared/data/cifar10`,
ImageNet-normalised as HF image processors do) when available, else random images; the model is a small transformers
ResNet from scratch (configurable: `--model_type/--config_overrides` or `--timm_model`), as the mixers' cost, not the
backbone's, is what is measured.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import logging
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_adautomix.arguments import MixupArguments  # noqa: E402
from hf_adautomix.backbones import build_model, wrap_classifier  # noqa: E402
from hf_adautomix.mixers import CLASSIC_MIXERS, PuzzleMix  # noqa: E402
from hf_adautomix.mixers.base import NoMix  # noqa: E402
from hf_adautomix.mixers.puzzlemix import _import_gco  # noqa: E402

logger = logging.getLogger("bench_mixers")
HERE = os.path.dirname(os.path.abspath(__file__))
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--mixers", default="all", help="Comma-separated --mixup names (default: none + all classic)."
    )
    p.add_argument("--model_type", default="resnet", help="transformers architecture (random init).")
    p.add_argument(
        "--config_overrides",
        default="embedding_size=16,hidden_sizes=[16,32,64,128],depths=[1,1,1,1],layer_type=basic",
    )
    p.add_argument("--timm_model", default=None, help="Use this timm architecture instead (random init).")
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3, help="Untimed steps per mixer.")
    p.add_argument("--steps", type=int, default=10, help="Timed steps per mixer (the median is reported).")
    p.add_argument(
        "--rounds", type=int, default=5, help="Interleave the timed steps of all mixers in this many rounds."
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available).")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU).")
    p.add_argument(
        "--data",
        default=os.path.join(HERE, "..", "..", "shared", "data", "cifar10"),
        help="CIFAR-10 parquet folder; random images when missing.",
    )
    p.add_argument("--output_dir", default=os.path.join(HERE, "results"))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_batch(args, device):
    files = sorted(glob.glob(os.path.join(args.data, "test-*.parquet")))
    if files and args.image_size == 32:
        import pyarrow.parquet as pq
        from PIL import Image

        table = pq.read_table(files[0]).slice(0, args.batch_size).to_pydict()
        imgs = [np.asarray(Image.open(io.BytesIO(r["bytes"])).convert("RGB")) for r in table["img"]]
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
        y = torch.tensor(table["label"]) % args.num_classes
        source = f"CIFAR-10 test[:{args.batch_size}]"
    else:
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g)
        y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g)
        source = "random"
    return x.to(device), y.to(device), source


def build_mixer(name: str, classifier, num_classes: int):
    if name == "none":
        return NoMix(num_classes=num_classes)
    if name == "puzzlemix-swap":  # PuzzleMix with our own α-β swap instead of gco-wrapper
        return PuzzleMix(num_classes=num_classes, graph_cut="swap")
    return CLASSIC_MIXERS[name].from_args(
        MixupArguments(mixup=name), num_classes=num_classes, label_smoothing=0.0, classifier=classifier
    )


def run_steps(mixer, classifier, opt, x, y, n, device) -> list[float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(n):
        sync()
        start = time.perf_counter()
        out = mixer(x, y, classifier)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    id2label = {i: str(i) for i in range(args.num_classes)}
    if args.timm_model:
        model = build_model(num_labels=args.num_classes, id2label=id2label, timm_model=args.timm_model)
        model_desc = f"timm {args.timm_model}"
    else:
        model = build_model(
            num_labels=args.num_classes,
            id2label=id2label,
            model_type=args.model_type,
            config_overrides=args.config_overrides,
        )
        model_desc = f"transformers {args.model_type} ({args.config_overrides})"
    classifier = wrap_classifier(model).to(device)
    n_params = sum(p.numel() for p in classifier.parameters())
    x, y, source = load_batch(args, device)

    names = ["none", *CLASSIC_MIXERS, "puzzlemix-swap"] if args.mixers == "all" else args.mixers.split(",")
    if "none" not in names:
        names.insert(0, "none")
    # Build every mixer first, then time them interleaved, round by round, so that a change in machine load
    # (a shared CI box) hits all of them alike.
    classifier.train()
    opt = torch.optim.SGD(classifier.parameters(), lr=0.01, momentum=0.9)
    mixers, skipped = {}, {}
    for name in names:
        try:
            mixers[name] = build_mixer(name, classifier, args.num_classes).to(device)
        except ImportError as e:  # an optional extra (saliency) missing
            skipped[name] = str(e)
            logger.warning("skipped %s: %s", name, e)
    times = {name: [] for name in mixers}
    for mixer in mixers.values():
        run_steps(mixer, classifier, opt, x, y, args.warmup, device)
    per_round = [args.steps // args.rounds + (r < args.steps % args.rounds) for r in range(args.rounds)]
    for n in per_round:
        for name, mixer in mixers.items():
            times[name] += run_steps(mixer, classifier, opt, x, y, n, device)
    results = {}
    for name, t in times.items():
        results[name] = {
            "median_s": statistics.median(t),
            "mean_s": statistics.fmean(t),
            "min_s": min(t),
            "steps": len(t),
        }
        logger.info("%-16s %8.1f ms/step", name, 1000 * results[name]["median_s"])
    base = results["none"]["median_s"]
    for r in results.values():
        r["relative_to_none"] = r["median_s"] / base

    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    )
    graph_cut = "gco-wrapper" if _import_gco() is not None else "own α-β swap (gco-wrapper not installed)"
    meta = {
        "command": "python benchmarks/bench_mixers.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "model": model_desc,
        "parameters": n_params,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "data": source,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "steps": args.steps,
        "puzzlemix_graph_cut": graph_cut,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    slug = device.type
    with open(os.path.join(args.output_dir, f"mixers_{slug}.json"), "w") as f:
        json.dump({"meta": meta, "results": results, "skipped": skipped}, f, indent=2)

    lines = [
        f"Mixer step time on {device_name} ({device}, {meta['threads']} threads), {model_desc}, "
        f"{n_params:,} params, batch {args.batch_size} of {args.image_size}x{args.image_size} ({source}); "
        f"median of {args.steps} steps ({args.rounds} interleaved rounds) after {args.warmup} warm-up. "
        f"PuzzleMix graph cut: {graph_cut}.",
        "",
        "| mixer | ms / step (median) | × none | ms / step (mean) |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {1000 * r['median_s']:.1f} | {r['relative_to_none']:.2f} | {1000 * r['mean_s']:.1f} |"
        for n, r in results.items()
    ]
    lines += [f"| {n} | skipped: {why} | | |" for n, why in skipped.items()]
    lines += ["", f"`{meta['command']}`"]
    table = "\n".join(lines)
    with open(os.path.join(args.output_dir, f"mixers_{slug}.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
