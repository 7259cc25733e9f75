"""The optimizer's generator param group and its learning-rate schedule.

A learned mixer's generator trains in the one optimizer Trainer builds, in a param group of its own (its own LR
and weight decay, `--generator_lr` / `--generator_weight_decay`), and with `--generator_min_lr` anneals on its own
cosine, as in the released recipes. `AdAutoMixTrainer.create_optimizer` / `create_scheduler` delegate here.
"""

from __future__ import annotations

import math
from collections.abc import Callable


class GeneratorCosine:
    """LR factor of the generator group: cosine from 1 to `floor` over `total` steps (released recipes).

    A class, not a closure: `LambdaLR.state_dict` checkpoints a callable object's attributes (`total`, `floor`).
    """

    def __init__(self, total: int, floor: float):
        self.total, self.floor = max(total, 1), floor

    def __call__(self, step: int) -> float:
        return self.floor + (1 - self.floor) * 0.5 * (
            1 + math.cos(math.pi * min(step, self.total) / self.total)
        )


def add_generator_group(create: Callable, mixer, args, mixup_args) -> int | None:
    """Build the optimizer with `create` (Trainer's `create_optimizer`) and give the generator its own group.

    Args:
        create: builds the optimizer from the parameters that require a gradient and returns it.
        mixer: the mixer; its `generator_parameters()` (if any) form the group.
        args: `TrainingArguments` (`learning_rate`, `weight_decay`: the group's defaults).
        mixup_args: `MixupArguments` (`generator_lr`, `generator_weight_decay`).

    Returns:
        The index of the generator's param group, or None when the mixer has no trainable generator.
    """
    gen = [p for p in getattr(mixer, "generator_parameters", list)() if p.requires_grad]
    if not gen:
        create()
        return None
    for p in gen:  # hide it from Trainer's decay/no-decay grouping, then add it as its own group
        p.requires_grad_(False)
    try:
        optimizer = create()
    finally:
        for p in gen:
            p.requires_grad_(True)
    lr = args.learning_rate if mixup_args.generator_lr is None else mixup_args.generator_lr
    wd = args.weight_decay if mixup_args.generator_weight_decay is None else mixup_args.generator_weight_decay
    optimizer.add_param_group({"params": gen, "lr": lr, "weight_decay": wd})
    return len(optimizer.param_groups) - 1


def anneal_generator_group(
    scheduler, optimizer, group: int | None, num_training_steps: int, args, mixup_args
) -> None:
    """With `--generator_min_lr`, put the generator group of `scheduler` on its own cosine to that LR.

    Args:
        scheduler: the `LambdaLR` Trainer built (one LR factor per param group).
        optimizer: its optimizer.
        group: the generator's param group (`add_generator_group`), or None.
        num_training_steps: the cosine's length.
        args: `TrainingArguments` (`lr_scheduler_type`, named in the error when it is not a `LambdaLR`).
        mixup_args: `MixupArguments` (`generator_min_lr`: None leaves the group on the shared schedule).
    """
    floor = mixup_args.generator_min_lr
    base_lr = optimizer.param_groups[group]["lr"] if group is not None else 0
    if floor is None or base_lr <= 0:  # a frozen generator (--generator_lr 0) has nothing to anneal
        return
    if not hasattr(scheduler, "lr_lambdas"):
        raise ValueError(f"--generator_min_lr needs a LambdaLR schedule, not {args.lr_scheduler_type}.")
    base = optimizer.param_groups[group]["initial_lr"]
    scheduler.lr_lambdas[group] = GeneratorCosine(num_training_steps, floor / base)


def check_step_counts(args) -> None:
    """TrainingArguments that would crash in training or make no optimizer step, refused with the flag named."""
    if args.gradient_accumulation_steps < 1:
        raise ValueError(
            f"--gradient_accumulation_steps {args.gradient_accumulation_steps} must be 1 or more."
        )
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise ValueError(
            f"--num_train_epochs {args.num_train_epochs:g} with --max_steps {args.max_steps} makes no optimizer "
            "step: nothing would be trained. Give --num_train_epochs > 0 or --max_steps > 0."
        )
