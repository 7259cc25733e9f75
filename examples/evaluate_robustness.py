#!/usr/bin/env python
"""Evaluate an exported classifier's robustness as the AdAutoMix paper does (Table 4, Table 7, Fig. 4/5):
clean top-1/top-5/NLL/ECE with a reliability diagram, the 19 common corruptions x 5 severities, FGSM at 8/255
and random 16 x 16 PatchDrop at 0-90 %.

The data arguments are the training script's, so the same flags select the same validation split:

    python examples/evaluate_robustness.py --model_name_or_path out --output_dir out/robustness
    python examples/evaluate_robustness.py --model_name_or_path out --dataset_name ../shared/data/cifar10 \
        --corruption_params cifar --output_dir out/robustness
    accelerate launch examples/evaluate_robustness.py --model_name_or_path out --output_dir out/robustness

Writes `robustness.json`, `robustness.md` and PNG plots to `--output_dir`. Corruptions need the `robustness`
extra (`pip install 'hf_adautomix[robustness]'`).
"""

from __future__ import annotations

import dataclasses
import logging
import sys

import datasets
import transformers
from transformers import HfArgumentParser

from hf_adautomix import DataTrainingArguments
from hf_adautomix.data import load_image_datasets
from hf_adautomix.evaluation.robustness import CORRUPTIONS, evaluate_robustness, load_exported
from hf_adautomix.smoke import smoke_argv

logger = logging.getLogger(__name__)

# HF_ADAUTOMIX_SMOKE=1 (tests/test_docs.py runs the docs' commands): 16 images, two corruptions at one severity,
# two occlusion ratios.
SMOKE_CAPS = [
    "--max_eval_samples", "16", "--batch_size", "16", "--corruptions", "gaussian_noise,contrast",
    "--severities", "1", "--occlusion_ratios", "0,0.5",
]  # fmt: skip


@dataclasses.dataclass
class RobustnessArguments:
    model_name_or_path: str = dataclasses.field(
        metadata={
            "help": "An exported model: a transformers folder or Hub id, a timm export folder, or "
            "'local-dir:DIR' / 'hf-hub:ID'."
        }
    )
    output_dir: str = dataclasses.field(
        default="outputs/robustness", metadata={"help": "Where the JSON, markdown and plots go."}
    )
    corruptions: str = dataclasses.field(
        default="all",
        metadata={
            "help": "'all' (the 19 types), 'none', or a comma-separated list of: " + ", ".join(CORRUPTIONS)
        },
    )
    severities: str = dataclasses.field(
        default="1,2,3,4,5", metadata={"help": "Comma-separated severities in 1..5, or a range like '1..5'."}
    )
    corruption_params: str = dataclasses.field(
        default="imagenet",
        metadata={
            "help": "'imagenet': ImageNet-C's parameters (imagecorruptions as is); 'cifar': CIFAR-10/100-C's "
            "smaller ones, for 32 x 32 images (the paper's CIFAR100-C).",
            "choices": ["imagenet", "cifar"],
        },
    )
    fgsm_epsilon: float = dataclasses.field(
        default=8 / 255, metadata={"help": "FGSM L-inf radius in [0, 1] pixel units; negative skips FGSM."}
    )
    occlusion_ratios: str = dataclasses.field(
        default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
        metadata={"help": "Comma-separated occlusion ratios in [0, 1]; 'none' skips occlusion."},
    )
    occlusion_patch_size: int = dataclasses.field(
        default=16, metadata={"help": "Side of the dropped patches."}
    )
    occlusion_fill: str = dataclasses.field(
        default="black",
        metadata={
            "help": "'black': pixel value 0; 'mean': 0 in normalised space (the mean colour).",
            "choices": ["black", "mean"],
        },
    )
    batch_size: int = dataclasses.field(default=128, metadata={"help": "Evaluation batch size per process."})
    num_workers: int = dataclasses.field(
        default=0, metadata={"help": "Dataloader workers (run corruptions)."}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of corruptions, occlusion and splits."})

    def __post_init__(self):
        if self.corruptions.strip().lower() in ("all", ""):
            self.corruption_list = list(CORRUPTIONS)
        elif self.corruptions.strip().lower() == "none":
            self.corruption_list = []
        else:
            self.corruption_list = [c.strip() for c in self.corruptions.split(",") if c.strip()]
            unknown = [c for c in self.corruption_list if c not in CORRUPTIONS]
            if unknown:
                raise ValueError(
                    f"Unknown --corruptions {unknown}; expected 'all', 'none' or names from {CORRUPTIONS}."
                )
        text = self.severities.replace(" ", "")
        if ".." in text:
            lo, hi = text.split("..")
            self.severity_list = list(range(int(lo), int(hi) + 1))
        else:
            self.severity_list = [int(s) for s in text.split(",") if s]
        if not self.severity_list or any(s not in (1, 2, 3, 4, 5) for s in self.severity_list):
            raise ValueError(f"Expected --severities in 1..5, got {self.severities!r}.")
        if self.occlusion_ratios.strip().lower() == "none":
            self.ratio_list = []
        else:
            self.ratio_list = [float(r) for r in self.occlusion_ratios.split(",") if r.strip()]
        if any(not 0 <= r <= 1 for r in self.ratio_list):
            raise ValueError(f"Expected --occlusion_ratios in [0, 1], got {self.occlusion_ratios!r}.")


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((RobustnessArguments, DataTrainingArguments))
    namespace = parser.parse_args(
        args=smoke_argv(sys.argv[1:] if argv is None else argv, SMOKE_CAPS, "evaluate_robustness.py")
    )
    given = vars(namespace)
    if (given["validation_file"] or given["validation_dir"]) and not (
        given["train_file"] or given["train_dir"] or given["dataset_name"]
    ):
        # Only an evaluation set: it is read as the training script would read its validation split.
        given["train_file"], given["train_dir"] = given["validation_file"], given["validation_dir"]
    args, data_args = (
        cls(**{f.name: given[f.name] for f in dataclasses.fields(cls) if f.init})
        for cls in (RobustnessArguments, DataTrainingArguments)
    )

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
        level=logging.INFO,
    )
    datasets.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity_warning()

    # Load the model and its own eval preprocessing (image processor or timm pretrained_cfg).
    model = load_exported(args.model_name_or_path)
    logger.info("Loaded %s (input %d px, mean %s, std %s).", model.source, model.size, model.mean, model.std)

    # The validation split the training script would use, with the same flags (and max_eval_samples).
    image_data = load_image_datasets(data_args, seed=args.seed)
    num_classes = len(image_data.labels)
    if model.model.num_classes != num_classes:  # the classifier adapter's head size
        raise ValueError(
            f"The model has {model.model.num_classes} classes but the data has {num_classes} ({image_data.source})."
        )

    # Clean + calibration, corruptions, FGSM, occlusion; files written by the main process.
    results = evaluate_robustness(
        model,
        image_data.validation,
        batch_size=args.batch_size,
        output_dir=args.output_dir,
        corruptions=args.corruption_list,
        severities=args.severity_list,
        corruption_params=args.corruption_params,
        fgsm_epsilon=args.fgsm_epsilon if args.fgsm_epsilon >= 0 else None,
        occlusion_ratios=args.ratio_list,
        patch_size=args.occlusion_patch_size,
        occlusion_fill=args.occlusion_fill,
        seed=args.seed,
        image_column=image_data.image_column,
        label_column=image_data.label_column,
        num_workers=args.num_workers,
    )
    clean = results["clean"]
    logger.info("Clean top-1 %.2f %%, ECE %.2f %%.", 100 * clean["accuracy"], 100 * clean["ece"])
    if "corruptions" in results:
        logger.info("Mean corruption error %.2f %%.", 100 * results["corruptions"]["mean_error"])
    if "fgsm" in results:
        logger.info("FGSM error %.2f %%.", 100 * results["fgsm"]["error"])
    return results


if __name__ == "__main__":
    main()
