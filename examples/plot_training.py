#!/usr/bin/env python
"""Plot a training run's curves from its `trainer_state.json`: every logged loss term, λ, the mask statistics, the
EMA momentum, the learning rates, the gradient norm and the evaluation metrics of each head (online, EMA, mix
head, EMA mix head), one panel per group.

    python examples/plot_training.py outputs/adautomix                    # -> outputs/adautomix/training_curves.png
    python examples/plot_training.py outputs/adautomix/checkpoint-500 --out curves.png
    python examples/plot_training.py outputs/adautomix/trainer_state.json

Works for any `--mixup`: the panels of terms a mixer does not log are left out. Prints the path of the PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from hf_adautomix.plots import save_training_plot


def find_trainer_state(path: str) -> str:
    """`path` itself if it is a file, else `path/trainer_state.json`; an error that names what is missing."""
    state = path if os.path.isfile(path) else os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state):
        raise FileNotFoundError(
            f"No trainer_state.json at {path!r}: expected a run's output_dir, a checkpoint-* folder or the file."
        )
    return state


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "output_dir", help="A run's output_dir, one of its checkpoint-* folders, or a trainer_state.json."
    )
    parser.add_argument(
        "--out", default=None, help="PNG to write (default: training_curves.png next to the state)."
    )
    parser.add_argument("--title", default=None, help="Figure title (default: the folder name).")
    args = parser.parse_args(argv)

    state_path = find_trainer_state(args.output_dir)
    with open(state_path) as f:
        state = json.load(f)
    folder = os.path.dirname(os.path.abspath(state_path))
    out = args.out or os.path.join(folder, "training_curves.png")
    title = args.title or f"{os.path.basename(folder)} (step {state.get('global_step', '?')})"
    path = save_training_plot(state.get("log_history", []), out, title=title)
    print(path)
    return path


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"plot_training.py: {e}")
