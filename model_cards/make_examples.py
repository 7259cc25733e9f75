#!/usr/bin/env python
"""Make the example cards in this folder through the real push path: the training script's `main()` with
`--push_to_hub`, the Hub client replaced at its network boundary by a local folder (this machine is offline).

    python model_cards/make_examples.py --data_dir ../shared/data/cifar10 [--families resnet convnext swin]

Each family trains AdAutoMix on a CIFAR-10 subset on the CPU (a small budget, said on the card) and leaves
`model_cards/cifar10_<family>_adautomix/`: the card (README.md) and its mixed-sample image, as uploaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "examples" / "run_image_classification.py"
# Small CIFAR-variant models that train in a few minutes on 2 CPU cores.
FAMILIES = {
    "resnet": ["--timm_model", "resnet18", "--cifar_stem", "--config_overrides", "layers=[1,1,1,1]"],
    "convnext": [
        "--model_type", "convnext", "--cifar_stem", "--config_overrides",
        "hidden_sizes=[32,64,128,256],depths=[1,1,2,1]",
    ],
    "swin": [
        "--model_type", "swin", "--config_overrides",
        "image_size=32,patch_size=2,embed_dim=32,depths=[1,1,2,1],num_heads=[1,2,4,8],window_size=2",
    ],
}  # fmt: skip
BUDGET = [
    "--max_train_samples", "5000", "--max_eval_samples", "1000", "--num_train_epochs", "3",
    "--per_device_train_batch_size", "100", "--learning_rate", "0.1", "--save_mix_every", "100",
    "--logging_steps", "50", "--disable_tqdm", "True", "--use_cpu", "True",
]  # fmt: skip


# ConvNeXt does not train with SGD 0.1 (chance level after 3 epochs here); AdamW as in the ConvNeXt recipe.
OPTIMIZER = {"convnext": ["--optim", "adamw_torch", "--learning_rate", "2e-3", "--weight_decay", "0.05"]}


class LocalHub:
    """`create_repo` / `upload_folder` into a local folder (hf-ecosystem §8.4)."""

    def __init__(self, root: Path):
        self.root = root

    def create_repo(self, repo_id, **kw):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, run_as_future=False, **kw):
        ignore = shutil.ignore_patterns(*(ignore_patterns or []))
        shutil.copytree(folder_path, self.root / repo_id, ignore=ignore, dirs_exist_ok=True)
        info = SimpleNamespace(commit_url="local", oid="0" * 40)
        if run_as_future:
            future = Future()
            future.set_result(info)
            return future
        return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(HERE.parent.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("run_image_classification", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = [
        "--train_file", os.path.join(args.data_dir, "train-*.parquet"),
        "--validation_file", os.path.join(args.data_dir, "test-00000-of-00001.parquet"),
    ]  # fmt: skip
    for family in args.families:
        repo = f"hf-adautomix/cifar10-{family}-adautomix"
        with tempfile.TemporaryDirectory() as tmp:
            hub = LocalHub(Path(tmp) / "hub")
            with mock.patch("transformers.trainer.hf_api", return_value=hub):
                script.main(
                    [*FAMILIES[family], *data, *BUDGET, *OPTIMIZER.get(family, [])]
                    + ["--mixup", "adautomix", "--output_dir", f"{tmp}/out"]
                    + ["--push_to_hub", "True", "--hub_model_id", repo, "--report_to", "none"]
                )
            pushed = hub.root / repo
            target = HERE / f"cifar10_{family}_adautomix"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            shutil.copy2(pushed / "README.md", target / "README.md")
            if (pushed / "mixed_samples").is_dir():
                shutil.copytree(pushed / "mixed_samples", target / "mixed_samples")
            print(f"{family}: {target}")


if __name__ == "__main__":
    main()
