"""What reacts to training-loop events: the `TrainerCallback`s of `AdAutoMixTrainer` and its per-event helpers.

`EMACallback` (teacher update after each optimizer step, one buffer sync at the end), `NonFiniteGuard` (stops or
skips a non-finite step; its skip count survives a resume, `ExportableState`), `AugmentationEpochCallback`
(per-epoch augmentation seed), `MixGridCallback` (mixed-sample grids), `MaskCollapseWarning` (learned masks that
collapsed to one source); and what the trainer runs at its own events:
`sync_buffers` (DDP, before evaluating), `per_head_metrics` and `RobustnessProbe` (at each evaluation), `LossTerms`
(the running mean of the named loss terms the train forwards return, logged with the loss).
"""

from __future__ import annotations

import logging
import math
import os

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .checkpoints import NonFiniteError, last_complete_checkpoint

logger = logging.getLogger(__name__)


def sync_buffers(model: torch.nn.Module, args) -> None:
    """Every buffer (BN statistics of the classifier, the teacher and the mix heads) from rank 0, in one
    collective.

    DDP broadcasts the buffers from rank 0 at the start of every training forward, so the ranks differ only after
    the last forward: before an evaluation (each rank evaluates its shard) and at the end of training. Checkpoints
    and exports are written by rank 0 alone and need no sync. Nothing is synced when the user turned DDP's buffer
    broadcast off (`--ddp_broadcast_buffers False`).
    """
    if args.world_size <= 1 or args.ddp_broadcast_buffers is False or not torch.distributed.is_initialized():
        return
    buffers = list(model.buffers())
    if not buffers:
        return
    # float64 holds every float32/bf16/fp16 value and every integer count below 2**53 exactly: one flat tensor.
    flat = torch.cat([b.detach().reshape(-1).to(torch.float64) for b in buffers])
    torch.distributed.broadcast(flat, src=0)
    with torch.no_grad():
        for b, part in zip(buffers, flat.split([b.numel() for b in buffers])):
            b.copy_(part.view_as(b))


class EMACallback(TrainerCallback):
    """Updates the EMA teacher right after every optimizer step (hf-ecosystem §1.2: `on_optimizer_step`) and counts
    the step; leaves every rank with rank 0's buffers at the end of training (`sync_buffers`)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.total_steps = max(state.max_steps, 1)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model.teacher is not None:
            model.update_ema()
        else:
            model.advance_step()

    def on_train_end(self, args, state, control, model=None, **kwargs):
        sync_buffers(model, args)


class NonFiniteGuard(TrainerCallback, ExportableState):
    """Checks the loss and the gradients before every optimizer step: one device sync per step, which Trainer
    already pays for its own NaN filter of the logged loss.

    A non-finite step stops the run with `NonFiniteError`, or, with `--max_nonfinite_steps N`, is skipped: the
    gradients are dropped (torch optimizers skip parameters without a gradient: no momentum or weight-decay
    update) and the buffers (BN statistics) are put back as they were before the step's forwards. The trainer
    reports each micro-batch's loss and terms (`observe`) and the step's gradient norm (`observe_grad_norm`). The
    skip count is checkpointed (`state`) and restored on resume, whatever `restore_callback_states_from_checkpoint`
    says.

    Args:
        max_skips: how many non-finite steps may be skipped in the whole run (0: stop at the first).
    """

    def __init__(self, max_skips: int = 0):
        if max_skips < 0:
            raise ValueError(f"--max_nonfinite_steps must be >= 0, got {max_skips}.")
        self.max_skips, self.skipped = max_skips, 0
        self._buffers: list[torch.Tensor] | None = None
        self._finite: torch.Tensor | None = None  # on the device: no sync until the step's decision
        self._terms: dict[str, torch.Tensor] = {}
        self._grad_norm = None

    def state(self) -> dict:
        return {"args": {"max_skips": self.max_skips}, "attributes": {"skipped": self.skipped}}

    def observe(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """One micro-batch's loss and named loss terms."""
        finite = torch.isfinite(loss.detach()).all()
        self._finite = finite if self._finite is None else self._finite & finite.to(self._finite.device)
        self._terms = terms

    def observe_grad_norm(self, grad_norm) -> None:
        """The step's global gradient norm (a tensor or a float), before the optimizer step."""
        self._grad_norm = grad_norm

    def on_train_begin(self, args, state, control, **kwargs):
        # Trainer restores `ExportableState` callbacks only with `restore_callback_states_from_checkpoint`; the skip
        # budget is part of the run's arguments, so a resumed run always continues the count.
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, dict):
            self.skipped = int(saved.get("attributes", {}).get("skipped", self.skipped))

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.max_skips > 0:  # only then can a step be undone, so only then pay for the copy
            self._buffers = [b.detach().clone() for b in model.buffers()]

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        loss_ok, self._finite = self._finite, None
        if loss_ok is None:  # no loss observed (e.g. a subclass's own training step)
            loss_ok = torch.ones((), dtype=torch.bool, device=args.device)
        finite = loss_ok
        grad_norm = self._grad_norm
        if not args.fp16 and isinstance(
            grad_norm, torch.Tensor
        ):  # fp16: the grad scaler skips inf steps itself
            finite = finite & torch.isfinite(grad_norm).to(finite.device)
        elif not args.fp16 and grad_norm is not None:
            finite = finite & torch.tensor(math.isfinite(grad_norm), device=finite.device)
        bad = (~finite).to(torch.float32)
        if (
            args.world_size > 1 and torch.distributed.is_initialized()
        ):  # every rank must take the same decision
            torch.distributed.all_reduce(bad)
        if not bool(bad > 0):
            return
        self._handle(args, state, model, self._describe(model, bool(loss_ok)))

    def _handle(self, args, state, model, what: str) -> None:
        step = state.global_step + 1
        if self.skipped < self.max_skips:
            self.skipped += 1
            model.zero_grad(set_to_none=True)
            if self._buffers is not None:
                torch._foreach_copy_(list(model.buffers()), self._buffers)
            logger.warning(
                "Step %d: %s; skipped it (%d of --max_nonfinite_steps %d).",
                step,
                what,
                self.skipped,
                self.max_skips,
            )
            return
        last = last_complete_checkpoint(args.output_dir, warn=False)
        raise NonFiniteError(
            f"Training diverged at step {step}: {what}. "
            + (f"The last good checkpoint is {last}. " if last else "There is no checkpoint to go back to. ")
            + "Nothing was exported. Lower --learning_rate (or --generator_lr), "
            + ("resume with --resume_from_checkpoint, " if last else "")
            + "or allow a few bad steps with --max_nonfinite_steps N."
        )

    def _describe(self, model, loss_ok: bool) -> str:
        terms = [k for k, v in self._terms.items() if not bool(torch.isfinite(v).all())]
        parts = []
        if terms or not loss_ok:
            parts.append("non-finite loss" + (f" (terms: {', '.join(sorted(terms))})" if terms else ""))
        modules = sorted(
            {
                name.split(".")[0] if not name.startswith("mixer.") else ".".join(name.split(".")[:2])
                for name, p in model.named_parameters()
                if p.grad is not None and not bool(torch.isfinite(p.grad).all())
            }
        )
        if modules:
            parts.append(f"non-finite gradients in {', '.join(modules)}")
        return "; ".join(parts) or "non-finite loss or gradients"


class AugmentationEpochCallback(TrainerCallback):
    """Seeds the training augmentation per (seed, epoch, row) so that a resumed run is bitwise exact
    (`data.set_augmentation_epoch`)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def on_epoch_begin(self, args, state, control, **kwargs):
        from .data import set_augmentation_epoch

        set_augmentation_epoch(self.dataset, self.seed, math.floor((state.epoch or 0) + 1e-9))


class MixGridCallback(TrainerCallback):
    """Saves a PNG grid of source images and generated mixes every `save_mix_every` steps and at the end, and logs
    the same image as `mixed_samples` to each tracker in `report_to` that takes images (TensorBoard, trackio, wandb:
    `trackers.log_image`).

    Args:
        every: steps between grids (0: at the end only).
        transform_info: the input normalisation (`data.TransformInfo`, or None), undone for the pictures.
        callback_handler: the trainer's, to find the trackers' callbacks (their runs open at train begin).
    """

    def __init__(self, every: int, transform_info, callback_handler):
        self.every, self.callback_handler = every, callback_handler
        self.mean, self.std = getattr(transform_info, "mean", None), getattr(transform_info, "std", None)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        last = state.global_step + 1 >= state.max_steps
        model.mixer.capture = last or (self.every > 0 and (state.global_step + 1) % self.every == 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        mixer = model.mixer
        if mixer.capture and mixer.last_mix is not None and state.is_world_process_zero:
            from .trackers import log_image
            from .visualize import save_mix_grid

            step = state.global_step
            path = os.path.join(args.output_dir, "mixed_samples", f"step_{step:06d}.png")
            grid = save_mix_grid(mixer.last_mix, path, mean=self.mean, std=self.std)
            lams = ", ".join(f"{v:.2f}" for v in mixer.last_mix["lam"].tolist())
            caption = f"step {step}, λ = {lams}"  # one λ per source row
            log_image(self.callback_handler.callbacks, "mixed_samples", grid, path, step, caption)
        mixer.capture, mixer.last_mix = False, None


class MaskCollapseWarning(TrainerCallback):
    """Warns once when a learned mixer's masks have collapsed: for `WINDOWS` logs in a row the masks are crisp
    (entropy below `ENTROPY`, nats per pixel) AND their area is far from λ (mean |mask area − λ| above `GAP`), so
    each mixed image is (nearly) one source image while its target still says λ. `update` is the same test on
    logs read back (`benchmarks/mask_collapse.py`).

    A crisp mask of the right area (CutMix-like) is not a collapse, nor is a soft mask whose area is off (the mask
    loss can still pull it back). Measured on the embedded digits (docs/benchmarks.md, "Mask collapse"): collapsed
    AutoMix runs log entropy ≤ 0.03 and gaps 0.28-0.75 from the onset on; healthy runs stay above 0.06 nats.
    """

    ENTROPY, GAP, WINDOWS = 0.05, 0.25, 5

    def __init__(self, mixer: str):
        self.mixer, self.run, self.first, self.warned = mixer, 0, None, False

    @classmethod
    def collapsed(cls, logs: dict) -> bool | None:
        """Whether one log's mask statistics say collapsed (None: the log has none)."""
        if "train_mask_entropy" not in logs:
            return None
        return logs["train_mask_entropy"] < cls.ENTROPY and logs["train_mask_lam_gap"] > cls.GAP

    def update(self, step: int, logs: dict) -> bool:
        """Count one log (at `step`); whether the last `WINDOWS` logs with mask statistics all say collapsed (the
        first of them at `self.first`)."""
        bad = self.collapsed(logs)
        if bad is not None:
            self.run, self.first = (self.run + 1, self.first or step) if bad else (0, None)
        return self.run >= self.WINDOWS

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.warned and self.update(state.global_step, logs or {}) and state.is_world_process_zero:
            self.warned = True
            logger.warning(
                "The %s masks have collapsed since step %d: for %d logs in a row they are crisp (entropy %.4f < %s) "
                "and far from λ (mean |area − λ| %.3f > %s), so each mixed image is one source image while its "
                "target says λ. On small, easy data this happens once the EMA teacher is good "
                "(docs/benchmarks.md, \"Mask collapse\"); the grids in mixed_samples/ show it.",
                self.mixer, self.first, self.run, logs["train_mask_entropy"], self.ENTROPY,
                logs["train_mask_lam_gap"], self.GAP,
            )  # fmt: skip


class RobustnessProbe:
    """--eval_robustness, run at every evaluation of the trainer's eval set: `evaluation.probe.robustness_metrics` of
    the online model and the EMA teacher on the first `samples` rows of the eval set (of the first one, if several),
    corrupted and occluded once (seed 0: the same images in every evaluation and every run).

    Args:
        eval_dataset: the trainer's eval set (checked here, read at the first evaluation).
        transform_info: its normalisation (`data.TransformInfo`), to get the pixels back.
        samples: how many rows.
    """

    def __init__(self, eval_dataset, transform_info, samples: int):
        if eval_dataset is None:
            raise ValueError(
                "--eval_robustness needs an eval dataset (its first --eval_robustness_samples rows are corrupted and "
                "attacked); pass eval_dataset= (or give the script validation data), or drop --eval_robustness."
            )
        if transform_info is None:
            raise ValueError(
                "--eval_robustness needs the eval data's mean/std to get pixels back from pixel_values; pass "
                "transform_info= (data.TransformInfo) with datasets that already yield pixel_values."
            )
        from .evaluation.corruptions import require_imagecorruptions

        require_imagecorruptions()  # raises an ImportError that says what to install
        self.info, self.samples = transform_info, samples
        self.subset = None  # built at the first evaluation, then reused

    def measure(self, trainer, prefix: str) -> dict[str, float]:
        """`<prefix>_robust_*` and `<prefix>_ema_robust_*` of `trainer.model`, in eval mode (its mode is restored)."""
        from .evaluation.probe import robustness_metrics, robustness_subset

        if self.subset is None:
            evals = trainer.eval_dataset
            dataset = next(iter(evals.values())) if isinstance(evals, dict) else evals
            batch = trainer.data_collator([dataset[i] for i in range(min(self.samples, len(dataset)))])
            self.subset = robustness_subset(
                batch["pixel_values"], batch["labels"], self.info.mean, self.info.std
            )
        model, was_training, args = trainer.model, trainer.model.training, trainer.args
        model.eval()
        metrics = {}
        try:
            for adapter, name in ((model.classifier, prefix), (model.teacher, f"{prefix}_ema")):
                if adapter is not None:
                    found = robustness_metrics(
                        adapter, self.subset, batch_size=args.per_device_eval_batch_size
                    )
                    metrics.update({f"{name}_{k}": v for k, v in found.items()})
        finally:
            model.train(was_training)
        if args.world_size > 1:
            # Every rank computed the same subset; GPU kernels may still differ in the last bits of FGSM's gradient.
            # Rank 0's numbers for all, so that every rank takes the same best-model decisions.
            from accelerate.utils import broadcast

            values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=args.device)
            metrics = dict(zip(metrics, broadcast(values, from_process=0).tolist()))
        return metrics


class LossTerms:
    """Running sums, on the device (no sync per step), of the named loss terms of the train forwards since the
    last log."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            v = v.float() if v.ndim == 0 else v.float().mean()  # DataParallel gathers one value per replica
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def pop_means(self, args, accelerator) -> dict[str, float]:
        """The mean of each term since the last call, over the micro-batches and the processes; then starts over."""
        if not self.sums:
            self.count = 0
            return {}
        keys = sorted(self.sums)
        vals = torch.stack([torch.as_tensor(self.sums[k], device=args.device) for k in keys]) / self.count
        if args.world_size > 1:
            vals = accelerator.reduce(vals, reduction="mean")
        self.sums, self.count = {}, 0
        return {k: float(v) for k, v in zip(keys, vals)}


def per_head_metrics(compute_metrics, heads: list[str]):
    """`compute_metrics` run on each head's logits (`predictions`, a tuple in `heads` order, as the eval forward
    returns them with `eval_all_heads`), its metrics named `<head>_<metric>` (the online head "" unprefixed), plus
    each other head's loss: its mean cross-entropy (Trainer's own `loss` is the online head's)."""
    from transformers import EvalPrediction

    from .evaluation.metrics import nll

    def compute(pred: EvalPrediction, **kwargs) -> dict[str, float]:
        logits = pred.predictions if isinstance(pred.predictions, (tuple, list)) else (pred.predictions,)
        metrics = {}
        for head, scores in zip(heads, logits):
            found = {"loss": nll(scores, pred.label_ids)} if head else {}
            if compute_metrics is not None:
                one = EvalPrediction(scores, pred.label_ids, pred.inputs, pred.losses)
                found.update(compute_metrics(one, **kwargs))
            metrics.update({f"{head}_{k}" if head else k: v for k, v in found.items()})
        return metrics

    return compute
