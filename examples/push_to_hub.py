#!/usr/bin/env python
"""Push a finished run's exported model to the Hugging Face Hub, later (after a run without --push_to_hub, or one
whose push failed because the Hub could not be reached):

    python examples/push_to_hub.py OUTPUT_DIR --hub_model_id me/resnet18-cifar100-adautomix [--private]
        [--commit_message "..."] [--token hf_...]

OUTPUT_DIR must hold an exported model (config.json and its weights, as `run_image_classification.py` leaves it),
not a training checkpoint. The model card's Hub name (metadata and load snippets) is changed to --hub_model_id,
in OUTPUT_DIR/README.md too, so that the local folder and the Hub agree. Checkpoints (`checkpoint-*`,
`last-checkpoint*`) and files whose names start with `_` are not uploaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

logger = logging.getLogger(__name__)

IGNORE_PATTERNS = ["checkpoint-*", "_*", "last-checkpoint*", ".hf_adautomix.lock"]  # run_folder.LOCK_FILE
WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# What only a training checkpoint (the whole training wrapper, for resuming) holds.
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "hf_adautomix_complete.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "output_dir", help="The finished run's folder (its --output_dir), holding the export."
    )
    parser.add_argument("--hub_model_id", required=True, help="The repo to push to, e.g. me/my-model.")
    parser.add_argument(
        "--private", action="store_true", help="Create the repo private (if it does not exist)."
    )
    parser.add_argument("--commit_message", default="hf_adautomix: upload the trained model")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or `hf auth login`'s).")
    return parser.parse_args(argv)


def check_export(folder: str) -> None:
    """Raise a ValueError unless `folder` holds a loadable export (config.json + weights), not a checkpoint."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is not a folder.")
    names = set(os.listdir(folder))
    if re.fullmatch(r"(checkpoint-\d+|last-checkpoint)", os.path.basename(os.path.normpath(folder))) or (
        "config.json" not in names and names & set(CHECKPOINT_FILES)
    ):
        raise ValueError(
            f"{folder} is a training checkpoint (the whole training wrapper, for resuming), not an exported model. "
            "Push the run's output folder, which holds the export (config.json and model.safetensors)."
        )
    missing = [
        what
        for what, ok in (("config.json", "config.json" in names), ("weights", names & set(WEIGHTS)))
        if not ok
    ]
    if missing:
        raise ValueError(
            f"{folder} holds no exported model: {' and '.join(missing)} missing (expected config.json and one of "
            f"{', '.join(WEIGHTS)}). Export it first (trainer.save_model() or the end of run_image_classification.py)."
        )


def rename_card(folder: str, hub_model_id: str) -> str | None:
    """Set the card's Hub name (`model_name`, which names the model-index) to `hub_model_id`, and put it in the
    load snippets; the card cannot be re-rendered without the trainer, so the rest stays as written. Returns the
    card's path, or None when there is no card."""
    from huggingface_hub import ModelCard

    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        logger.warning("%s has no README.md: the model is pushed without a model card.", folder)
        return None
    card = ModelCard.load(path)
    old = card.data.model_name or os.path.basename(os.path.abspath(folder))
    card.data.model_name = hub_model_id
    text = card.text
    if old != hub_model_id:
        # the load snippets: pipeline(model="old"), from_pretrained("old"), timm's "local-dir:old"/"hf-hub:old",
        # where "old" may be the output folder's path as the run was given it (ending in /old)
        text = re.sub(
            rf'"(?:local-dir:|hf-hub:)?(?:[^"\s]*/)?{re.escape(old)}/?"',
            lambda m: _snippet_name(m.group(0), hub_model_id),
            text,
        )
        text = text.replace(f"# {old}\n", f"# {hub_model_id}\n")
    card.text = text
    card.save(path)
    return path


def _snippet_name(quoted: str, name: str) -> str:
    return f'"hf-hub:{name}"' if quoted.startswith(('"local-dir:', '"hf-hub:')) else f'"{name}"'


def push(
    output_dir: str,
    hub_model_id: str,
    *,
    private: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    api=None,
):
    """Check the export, rename the card, create the repo (if needed) and upload the folder. Returns the commit."""
    check_export(output_dir)
    rename_card(output_dir, hub_model_id)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        repo_id = api.create_repo(hub_model_id, token=token, private=private, exist_ok=True).repo_id
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            commit_message=commit_message,
            token=token,
            ignore_patterns=IGNORE_PATTERNS,
        )
    except Exception as err:
        detail = " ".join(f"{type(err).__name__}: {err}".split())
        raise OSError(
            f"Could not push {output_dir} to the Hub repo {hub_model_id} ({detail}). Nothing in {output_dir} was "
            "lost; check the network and the token (`hf auth login` or --token) and run this command again."
        ) from err


def main(argv: list[str] | None = None, api=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    info = push(
        args.output_dir,
        args.hub_model_id,
        private=args.private,
        commit_message=args.commit_message,
        token=args.token,
        api=api,
    )
    logger.info("Pushed %s to %s", args.output_dir, getattr(info, "commit_url", args.hub_model_id))
    return info


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as err:
        if os.environ.get("HF_ADAUTOMIX_TRACEBACK"):
            raise
        sys.exit(f"error: {err}")
