"""`AdAutoMixTrainer`: a thin `transformers.Trainer` around `MixupModel`.

It builds the wrapper, adds the generator's param group, updates the EMA teacher after each optimizer step,
evaluates the online and EMA models, logs every loss term, saves mixed-sample grids and exports the chosen weights
in the model's own format. Each override below says why it exists.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer_utils import rotate_checkpoints

from .arguments import MixupArguments
from .backbones import wrap_classifier
from .checkpoints import check_resumable, last_complete_checkpoint, mark_complete
from .mixers import build_mixer
from .modeling import EMASchedule, MixupModel

logger = logging.getLogger(__name__)


class EMACallback(TrainerCallback):
    """Updates the EMA teacher right after every optimizer step (hf-ecosystem §1.2: `on_optimizer_step`)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.total_steps = max(state.max_steps, 1)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model.teacher is not None:
            model.update_ema()
        else:
            model.advance_step()
        if (
            args.world_size > 1
            and args.ddp_broadcast_buffers is not False
            and torch.distributed.is_initialized()
        ):
            # DDP syncs buffers from rank 0 only at the start of each forward, so the train-mode forwards of the
            # last step (classifier and teacher BN statistics) would leave ranks different for evaluation/export.
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)


class MixGridCallback(TrainerCallback):
    """Saves a PNG grid of source images and generated mixes every `save_mix_every` steps and at the end, and logs
    the same image to TensorBoard (tag `mixed_samples`) when `report_to` includes it.

    Args:
        every: steps between grids (0: at the end only).
        mean / std: the input normalisation, undone for the pictures.
        callback_handler: the trainer's, to find the `TensorBoardCallback`'s writer (created at train begin).
    """

    def __init__(self, every: int, mean, std, callback_handler):
        self.every, self.mean, self.std, self.callback_handler = every, mean, std, callback_handler

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        last = state.global_step + 1 >= state.max_steps
        model.mixer.capture = last or (self.every > 0 and (state.global_step + 1) % self.every == 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        mixer = model.mixer
        if mixer.capture and mixer.last_mix is not None and state.is_world_process_zero:
            from transformers.integrations import TensorBoardCallback

            from .visualize import save_mix_grid

            path = os.path.join(args.output_dir, "mixed_samples", f"step_{state.global_step:06d}.png")
            grid = save_mix_grid(mixer.last_mix, path, mean=self.mean, std=self.std)
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                    callback.tb_writer.add_image("mixed_samples", grid, state.global_step, dataformats="HWC")
                    callback.tb_writer.flush()
        mixer.capture, mixer.last_mix = False, None


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient (or non-finite weights were about to be exported)."""


class HubPushError(OSError):
    """The Hub could not be reached or refused an upload; what was saved locally is whole (the message says where
    and how to push it later)."""


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class NonFiniteGuard(TrainerCallback):
    """Checks the loss and the gradients before every optimizer step: one device sync per step, which Trainer
    already pays for its own NaN filter of the logged loss.

    A non-finite step stops the run with `NonFiniteError`, or, with `--max_nonfinite_steps N`, is skipped: the
    gradients are dropped (torch optimizers skip parameters without a gradient: no momentum or weight-decay
    update) and the buffers (BN statistics) are put back as they were before the step's forwards.
    """

    def __init__(self, trainer: AdAutoMixTrainer, max_skips: int):
        self.trainer, self.max_skips, self.skipped = trainer, max_skips, 0
        self._buffers: list[torch.Tensor] | None = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.max_skips > 0:  # only then can a step be undone, so only then pay for the copy
            self._buffers = [b.detach().clone() for b in model.buffers()]

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        finite = self._loss_ok = trainer._loss_finite
        grad_norm = trainer._last_grad_norm
        if not args.fp16 and isinstance(
            grad_norm, torch.Tensor
        ):  # fp16: the grad scaler skips inf steps itself
            finite = finite & torch.isfinite(grad_norm).to(finite.device)
        elif not args.fp16 and grad_norm is not None:
            finite = finite & torch.tensor(math.isfinite(grad_norm), device=finite.device)
        bad = (~finite).to(torch.float32)
        if args.world_size > 1:  # every rank must take the same decision
            bad = trainer.accelerator.reduce(bad, reduction="sum")
        trainer._loss_finite = torch.ones((), dtype=torch.bool, device=finite.device)
        if not bool(bad > 0):
            return
        step = state.global_step + 1
        what = self._describe(model)
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

    def _describe(self, model) -> str:
        terms = [k for k, v in model.last_terms.items() if not bool(torch.isfinite(v).all())]
        parts = []
        if terms or not bool(self._loss_ok):
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


@contextlib.contextmanager
def _restored(obj, name: str, value):
    """Sets `obj.name = value` on exit."""
    try:
        yield
    finally:
        setattr(obj, name, value)


@contextlib.contextmanager
def _hub_token_hidden(args: TrainingArguments):
    """`training_args.bin` is a pickle of the arguments: keep the Hub token out of it (it is uploaded)."""
    token = args.hub_token
    args.hub_token = None
    try:
        yield
    finally:
        args.hub_token = token


class _GeneratorCosine:
    """LR factor of the generator group: cosine from 1 to `floor` over `total` steps (released recipes)."""

    def __init__(self, total: int, floor: float):
        self.total, self.floor = max(total, 1), floor

    def __call__(self, step: int) -> float:
        return self.floor + (1 - self.floor) * 0.5 * (
            1 + math.cos(math.pi * min(step, self.total) / self.total)
        )


class AdAutoMixTrainer(Trainer):
    """`Trainer` for mixup training of any supported classifier.

    Args:
        model: a transformers `*ForImageClassification`, a timm classifier, or a ready `MixupModel`.
        args: `TrainingArguments`.
        mixup_args: `MixupArguments` (default: `--mixup none`).
        train_dataset / eval_dataset: `datasets` image datasets, raw (image + label columns: the default transforms
            for the model's input size are applied) or already giving `pixel_values` / `labels`.
        transform_info: the data's normalisation (`data.TransformInfo`), used for the exported image processor and
            the mixed-sample grids; filled in when the trainer applies the transforms itself.
    """

    # Our loss is a per-micro-batch mean computed by us, whatever the model family; Trainer must divide it by the
    # accumulation steps itself (hf-ecosystem §1.3: the default would skip that for ResNet-like models).
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        mixup_args: MixupArguments | None = None,
        train_dataset=None,
        eval_dataset=None,
        data_collator=None,
        compute_metrics=None,
        transform_info=None,
        **kwargs,
    ):
        from . import data as data_lib
        from .evaluation import compute_metrics as default_metrics

        if model is None:
            raise ValueError("AdAutoMixTrainer needs a model (transformers, timm, or a MixupModel).")
        args = args if args is not None else TrainingArguments(output_dir="trainer_output")
        self.mixup_args = mixup_args = mixup_args if mixup_args is not None else MixupArguments()
        # Our collator builds pixel_values/labels from the raw columns inside `with_transform`; Trainer's column
        # pruning would run first and remove them (hf-ecosystem §1.6), so users never need the flag.
        args.remove_unused_columns = False
        args.label_names = args.label_names or ["labels"]
        if args.ddp_find_unused_parameters is None:
            # Every trainable parameter (classifier, mix head, generator) gets a gradient on every step in every
            # mixer, and the teacher is frozen; Trainer's default for a non-PreTrainedModel (True) is slower.
            args.ddp_find_unused_parameters = False

        _refuse_sharded_training(args)
        wrapper = model if isinstance(model, MixupModel) else self.build_wrapper(model, mixup_args, args)
        if mixup_args.channels_last:
            wrapper.to_channels_last()
        self.transform_info = transform_info
        num_labels = wrapper.classifier.num_classes
        evals = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
        for split, ds in {"train": train_dataset, **evals}.items():
            if ds is not None:  # labels checked up front, also for datasets that are already transformed
                data_lib.check_labels(ds, None, num_labels, split=split)
        if train_dataset is not None or eval_dataset is not None:
            train_dataset, eval_dataset, info = _auto_transform(
                train_dataset, eval_dataset, wrapper, args.seed
            )
            self.transform_info = self.transform_info or info
        if mixup_args.eval_robustness:
            _check_eval_robustness(eval_dataset, self.transform_info)
        if self.transform_info is not None and hasattr(wrapper.mixer, "image_mean"):
            # PuzzleMix undoes the input normalisation for its smoothness term.
            wrapper.mixer.image_mean.copy_(torch.tensor(self.transform_info.mean).view(1, -1, 1, 1))
            wrapper.mixer.image_std.copy_(torch.tensor(self.transform_info.std).view(1, -1, 1, 1))
        super().__init__(
            model=wrapper,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=data_collator or data_lib.collate_fn,
            compute_metrics=compute_metrics or default_metrics,
            **kwargs,
        )
        self._terms: dict[str, torch.Tensor] = {}
        self._terms_count = 0
        self._robustness_subset = None  # --eval_robustness: built at the first evaluation, then reused
        # What the model card says about the data and the base model (`create_model_card` arguments win).
        self.card_info: dict = {}
        self.add_callback(EMACallback())
        if mixup_args.max_nonfinite_steps < 0:
            raise ValueError(f"--max_nonfinite_steps must be >= 0, got {mixup_args.max_nonfinite_steps}.")
        self._loss_finite = torch.ones((), dtype=torch.bool, device=self.args.device)
        self._nan_filter_on_device = False  # see `train`
        self._last_grad_norm = None
        self.nonfinite_guard = NonFiniteGuard(self, mixup_args.max_nonfinite_steps)
        self.add_callback(self.nonfinite_guard)
        if train_dataset is not None and not args.dataloader_persistent_workers:
            # Persistent workers keep the dataset copy of the first epoch, so the epoch would never advance in
            # them: such runs keep drawing augmentation from the global RNG (exact resume is not promised then).
            self.add_callback(AugmentationEpochCallback(train_dataset, args.seed))
        if wrapper.mixer.learned:
            info = self.transform_info
            self.add_callback(
                MixGridCallback(
                    mixup_args.save_mix_every,
                    getattr(info, "mean", None),
                    getattr(info, "std", None),
                    self.callback_handler,
                )
            )
        if wrapper.teacher is not None:
            logger.info("EMA teacher: %s.", wrapper.ema_schedule.describe())

    @staticmethod
    def build_wrapper(model: nn.Module, mixup_args: MixupArguments, args: TrainingArguments) -> MixupModel:
        classifier = wrap_classifier(model)
        mixer = build_mixer(
            mixup_args,
            num_classes=classifier.num_classes,
            label_smoothing=args.label_smoothing_factor,
            classifier=classifier,
        )
        schedule = EMASchedule(
            momentum=mixup_args.ema_momentum,
            momentum_end=mixup_args.ema_momentum_end,
            scope_start=mixup_args.ema_scope_start,
            warmup=mixup_args.ema_warmup,
        )
        return MixupModel(classifier, mixer, ema=bool(mixup_args.ema), ema_schedule=schedule)

    # -- loss ------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Override: Trainer's label smoother would pop `labels` before our forward; the mixers apply
        # `label_smoothing_factor` themselves, to every target, before mixing.
        outputs = model(**inputs)
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    @functools.cached_property
    def _per_pass_backward_supported(self) -> bool:
        """Not with DataParallel (n_gpu > 1: the forward runs in replicas), LOMO (it steps inside backward) or
        SageMaker MP (its own backward/step): one backward there, as before. DeepSpeed is refused at start-up."""
        from transformers.trainer import is_sagemaker_mp_enabled
        from transformers.training_args import OptimizerNames

        return (
            self.args.n_gpu <= 1
            and self.args.optim not in (OptimizerNames.LOMO, OptimizerNames.ADALOMO)
            and not is_sagemaker_mp_enabled()
        )

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Override: (1) lend the model a backward for the learned mixers' per-pass backward (`MixupModel.
        # early_backward`): scaled exactly as Trainer scales the loss it returns (1/GA unless already scaled,
        # then `accelerator.backward`, hence the fp16 GradScaler), run with autocast off as Trainer's own backward
        # is. Trainer then back-propagates what the forward returns (the rest of the graph) as usual. (2)
        # Accumulate the mixer's named loss terms for logging and whether the loss stayed finite (for
        # `NonFiniteGuard`), all on the device, no sync.
        wrapper = self.model
        if isinstance(wrapper, MixupModel) and wrapper.early_backward and self._per_pass_backward_supported:
            steps = self.current_gradient_accumulation_steps
            scaled = self.loss_is_scaled_for_ga  # False: our loss is a per-micro-batch mean (class attribute)

            def backward(loss):
                if not scaled:
                    loss = loss / steps
                with torch.autocast(device_type=loss.device.type, enabled=False):
                    self.accelerator.backward(loss)

            wrapper.backward_fn = backward
            wrapper.full_graph_loss = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            if isinstance(wrapper, MixupModel):
                wrapper.backward_fn = None
        finite = torch.isfinite(loss)
        self._loss_finite = self._loss_finite & finite.to(self._loss_finite.device)
        # Trainer's `logging_nan_inf_filter` (off during `train`), on the device: no sync.
        if self._nan_filter_on_device:
            mean = self._tr_loss / (1 + self.state.global_step - self._globalstep_last_logged)
            loss = torch.where(finite, loss, mean.to(loss.device, loss.dtype))
        for k, v in self.model.last_terms.items():
            self._terms[k] = self._terms.get(k, 0.0) + v.float()
        self._terms_count += 1
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # Override: keep the global gradient norm Trainer computes every step anyway, for `NonFiniteGuard`.
        self._last_grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        return self._last_grad_norm

    def get_train_dataloader(self):
        # Override: drop the last incomplete batch, as timm's training loader does. A last batch of one row
        # breaks BatchNorm (and every mixer needs a partner); a smaller last batch would also weigh its rows more.
        # A training set smaller than one batch keeps its one (smaller) batch.
        dataset, keep = self.train_dataset, self.args.dataloader_drop_last
        per_process = self._train_batch_size
        if dataset is not None and hasattr(dataset, "__len__"):
            rows = len(dataset) // max(self.args.world_size, 1)
            if rows < 2:
                raise ValueError(
                    f"The training set has {len(dataset)} row(s) for {self.args.world_size} process(es); "
                    "training needs at least 2 rows per process (BatchNorm and mixing need a batch of 2 or more)."
                )
            self.args.dataloader_drop_last = rows >= per_process
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = keep

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Override: training logs also carry every loss term, λ, N, mask statistics, EMA momentum, generator LR.
        if "loss" in logs and self._terms:
            keys = sorted(self._terms)
            vals = torch.stack([torch.as_tensor(self._terms[k], device=self.args.device) for k in keys])
            vals = vals / self._terms_count
            if self.args.world_size > 1:
                vals = self.accelerator.reduce(vals, reduction="mean")
            logs.update({f"train_{k}": round(float(v), 4) for k, v in zip(keys, vals)})
            if "train_loss_classifier" in logs:
                # The step loss shown is the classifier's; with the generator's objective added (what is
                # back-propagated) it would swing with the adversarial/cooperative alternation.
                logs["train_loss_total"] = logs["loss"]
                logs["loss"] = logs["train_loss_classifier"]
        if "loss" in logs:
            self._terms, self._terms_count = {}, 0
            if self.model.teacher is not None:
                logs["ema_momentum"] = self.model.current_momentum()
            if self._generator_group is not None:  # set only once the optimizer exists
                logs["generator_lr"] = self.optimizer.param_groups[self._generator_group]["lr"]
            if self.nonfinite_guard.max_skips > 0:
                logs["nonfinite_steps_skipped"] = self.nonfinite_guard.skipped
        super().log(logs, start_time)

    # -- optimizer -------------------------------------------------------------------------------------------
    _generator_group: int | None = None

    def create_optimizer(self, model=None):
        # Override: the generator gets its own param group (own LR and weight decay) in the one optimizer.
        gen = [p for p in getattr(self.model.mixer, "generator_parameters", list)() if p.requires_grad]
        if self.optimizer is not None or not gen:
            return super().create_optimizer()
        for p in gen:  # hide it from Trainer's decay/no-decay grouping, then add it as its own group
            p.requires_grad_(False)
        try:
            super().create_optimizer()
        finally:
            for p in gen:
                p.requires_grad_(True)
        lr = self.args.learning_rate if self.mixup_args.generator_lr is None else self.mixup_args.generator_lr
        wd = (
            self.args.weight_decay
            if self.mixup_args.generator_weight_decay is None
            else self.mixup_args.generator_weight_decay
        )
        self.optimizer.add_param_group({"params": gen, "lr": lr, "weight_decay": wd})
        self._generator_group = len(self.optimizer.param_groups) - 1
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        # Override: with --generator_min_lr, the generator group anneals on its own cosine (released recipes).
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        floor = self.mixup_args.generator_min_lr
        base_lr = (
            self.optimizer.param_groups[self._generator_group]["lr"]
            if self._generator_group is not None
            else 0
        )
        if floor is not None and base_lr > 0:  # a frozen generator (--generator_lr 0) has nothing to anneal
            if not hasattr(scheduler, "lr_lambdas"):
                raise ValueError(
                    f"--generator_min_lr needs a LambdaLR schedule, not {self.args.lr_scheduler_type}."
                )
            base = self.optimizer.param_groups[self._generator_group]["initial_lr"]
            scheduler.lr_lambdas[self._generator_group] = _GeneratorCosine(num_training_steps, floor / base)
        return scheduler

    # -- evaluation ------------------------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        # Override: report the online model as eval_* and the EMA teacher as eval_ema_*; with a learned mixer's
        # own mix head, also that head of each, as eval_mix_head_* and eval_ema_mix_head_* (the release's four
        # heads one_q / one_k / mix_q / mix_k, reference §8). Model first, then head, so that every teacher metric
        # starts with eval_ema_ and the unqualified names stay the exported (clean) head's. With --eval_robustness,
        # the online model and the teacher on the trainer's eval set are also measured on a fixed subset
        # (`_robustness_metrics`), logged as one more entry. Evaluation leaves the RNG as it found it (creating a
        # DataLoader iterator draws from it), so the training draws after an evaluation are those of a run resumed
        # from a checkpoint saved before it.
        model = self.model
        runs = [(False, False, "")]
        if model.teacher is not None:
            runs.append((True, False, "_ema"))
        if model.has_mix_head:
            runs.append((False, True, "_mix_head"))
            if model.teacher is not None:
                runs.append((True, True, "_ema_mix_head"))
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        metrics = {}
        filter_flag = self.args.logging_nan_inf_filter
        self.args.logging_nan_inf_filter = filter_flag or self._nan_filter_on_device  # the user's flag
        with (
            torch.random.fork_rng(devices=devices),
            _restored(self.args, "logging_nan_inf_filter", filter_flag),
        ):
            for ema, mix_head, suffix in runs:
                model.eval_ema, model.eval_mix_head = ema, mix_head
                try:
                    metrics.update(super().evaluate(eval_dataset, ignore_keys, metric_key_prefix + suffix))
                finally:
                    model.eval_ema = model.eval_mix_head = False
            if self.mixup_args.eval_robustness and eval_dataset is None:
                robust = self._robustness_metrics(metric_key_prefix)
                self.log(robust)
                metrics.update(robust)
        return metrics

    def _robustness_metrics(self, prefix: str) -> dict[str, float]:
        """--eval_robustness: `evaluation.robustness_metrics` of the online model and the EMA teacher on the first
        `eval_robustness_samples` rows of the eval set (of the first one, if several), corrupted and occluded once
        (seed 0, the same images in every evaluation and every run)."""
        from .evaluation.robustness import robustness_metrics, robustness_subset

        if self._robustness_subset is None:
            evals = self.eval_dataset
            dataset = next(iter(evals.values())) if isinstance(evals, dict) else evals
            rows = [dataset[i] for i in range(min(self.mixup_args.eval_robustness_samples, len(dataset)))]
            batch = self.data_collator(rows)
            info = self.transform_info
            self._robustness_subset = robustness_subset(
                batch["pixel_values"], batch["labels"], info.mean, info.std
            )
        model, was_training = self.model, self.model.training
        model.eval()
        metrics = {}
        try:
            for adapter, name in ((model.classifier, prefix), (model.teacher, f"{prefix}_ema")):
                if adapter is not None:
                    found = robustness_metrics(
                        adapter, self._robustness_subset, batch_size=self.args.per_device_eval_batch_size
                    )
                    metrics.update({f"{name}_{k}": v for k, v in found.items()})
        finally:
            model.train(was_training)
        if self.args.world_size > 1:
            # Every rank computed the same subset; GPU kernels may still differ in the last bits of FGSM's gradient.
            # Rank 0's numbers for all, so that every rank takes the same best-model decisions.
            from accelerate.utils import broadcast

            values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=self.args.device)
            values = broadcast(values, from_process=0)
            metrics = dict(zip(metrics, values.tolist()))
        return metrics

    # -- saving ----------------------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None):
        # Override: checkpoints (checkpoint-N/) hold the whole wrapper for exact resume; the run's output_dir gets
        # the exported native model (what `save_model()` / `push_to_hub()` users expect).
        output_dir = output_dir or self.args.output_dir
        with _hub_token_hidden(self.args):
            if os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir):
                self.export_model(output_dir)
                self.save_generator(output_dir)
                if self.is_world_process_zero():
                    self.create_model_card()  # what save_model() users get too, not only push_to_hub()
            else:
                super()._save(output_dir, state_dict)

    def _save_checkpoint(self, model, trial):
        # Override: a kill at any moment leaves the previous checkpoint whole. Trainer writes checkpoint-N/ file by
        # file and then deletes old checkpoints (save_total_limit); here the new one is first marked complete
        # (`checkpoints.mark_complete`), and only then are old ones deleted.
        run_dir = self._get_output_dir(trial=trial)
        target = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(target):
            shutil.rmtree(target)  # what an interrupted save (or an abandoned run) left under this name
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            mark_complete(target)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint=True` takes the last *complete* checkpoint in `output_dir`
        (skipping, with a warning, any that an interrupted save left), and a named checkpoint is checked first."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(
                    f"resume_from_checkpoint=True: there is no complete checkpoint in {self.args.output_dir!r}."
                )
            logger.warning("Resuming from %s.", resume_from_checkpoint)
        elif resume_from_checkpoint:
            check_resumable(resume_from_checkpoint)
        if resume_from_checkpoint and self._finished_at(resume_from_checkpoint):
            # Trainer would train one more step from a checkpoint taken at the last step; a re-run of a finished
            # command must give back the same model instead.
            from transformers.trainer_utils import TrainOutput

            logger.warning("%s is the end of training: nothing left to train.", resume_from_checkpoint)
            self._load_from_checkpoint(resume_from_checkpoint)
            self.state = TrainerState.load_from_json(
                os.path.join(resume_from_checkpoint, "trainer_state.json")
            )
            losses = [h["loss"] for h in self.state.log_history if "loss" in h]
            loss = losses[-1] if losses else float("nan")
            return TrainOutput(self.state.global_step, loss, {"train_loss": loss, "epoch": self.state.epoch})
        # Trainer filters a non-finite step loss out of the logged loss with `torch.isnan(loss) or ...`: a host sync
        # per step on a GPU. `training_step` applies the same filter on the device instead (`evaluate` puts the flag
        # back for the evaluation loop, which filters its own losses).
        filter_flag = self._nan_filter_on_device = self.args.logging_nan_inf_filter
        self.args.logging_nan_inf_filter = False
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint or None, trial=trial, **kwargs)
        finally:
            self.args.logging_nan_inf_filter, self._nan_filter_on_device = filter_flag, False

    def _finished_at(self, checkpoint: str) -> bool:
        path = os.path.join(checkpoint, "trainer_state.json")
        if not os.path.isfile(path):
            return False
        state = TrainerState.load_from_json(path)
        if self.args.max_steps > 0:
            return state.global_step >= self.args.max_steps
        return state.global_step >= state.max_steps and state.num_train_epochs == self.args.num_train_epochs

    # -- Hub -------------------------------------------------------------------------------------------------
    # Besides the export (`export_model`) and its card, a Hub commit carries these files of output_dir when they
    # are there (metrics, the resolved recipe) and its mixed-sample grids; `generator/` only with hub_strategy
    # checkpoint/all_checkpoints, which push what resuming needs (Trainer's semantics).
    HUB_FILES = (
        "all_results.json",
        "train_results.json",
        "eval_results.json",
        "test_results.json",
        "trainer_state.json",
        "hf_adautomix_run.json",  # checkpoints.RUN_FILE
    )
    HUB_STAGING = "_hub_staging"  # under output_dir; names starting with "_" are never uploaded from it

    def save_generator(self, output_dir: str | None = None) -> str | None:
        """Save a learned mixer's generator as its own artefact (`generator_hub.save_generator`: config.json with
        what rebuilds it, the backbone stage, N; safetensors weights) to `output_dir/generator/`. Returns the folder,
        or None for mixers without a generator (and on processes other than the main one)."""
        if not getattr(self.model.mixer, "learned", False) or not self.is_world_process_zero():
            return None
        from .generator_hub import GENERATOR_DIR, save_generator

        return save_generator(self, os.path.join(output_dir or self.args.output_dir, GENERATOR_DIR))

    def _hub_pushes_checkpoints(self) -> bool:
        from transformers.trainer_utils import HubStrategy

        return self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS)

    def _stage_for_hub(self, name: str, card_kwargs: dict | None = None) -> str:
        """Build `output_dir/_hub_staging/<name>/`, what one Hub commit uploads: the current model exported as at the
        end of training (`export_model`: native weights, config, image processor, training_args.bin without the
        token), the model card, the mixed-sample grids, `HUB_FILES`, and the generator with the checkpoint
        strategies. Reads the model, never changes it nor the RNG (a resumed run stays exact)."""
        out = self.args.output_dir
        stage = os.path.join(out, self.HUB_STAGING, name)
        shutil.rmtree(stage, ignore_errors=True)  # what a killed run left under this name
        self.export_model(stage)
        # Written to output_dir/README.md (its gallery links are relative to it), then copied.
        card = self.create_model_card(**(card_kwargs or {}))
        shutil.copy2(card, os.path.join(stage, "README.md"))
        for file in self.HUB_FILES:
            if os.path.isfile(os.path.join(out, file)):
                shutil.copy2(os.path.join(out, file), os.path.join(stage, file))
        if os.path.isdir(os.path.join(out, "mixed_samples")):
            shutil.copytree(os.path.join(out, "mixed_samples"), os.path.join(stage, "mixed_samples"))
        if self._hub_pushes_checkpoints():
            self.save_generator(stage)
        return stage

    def _hub_staged(self) -> list:
        """(upload jobs, staging folder) of the in-training pushes not yet cleaned up."""
        return self.__dict__.setdefault("_hub_staged_folders", [])

    def _hub_cleanup(self) -> None:
        """Delete the staging folders whose uploads are over (done or failed)."""
        staged = self._hub_staged()
        for jobs, folder in list(staged):
            if all(job.done() for job in jobs):
                shutil.rmtree(folder, ignore_errors=True)
                staged.remove((jobs, folder))
        root = os.path.join(self.args.output_dir, self.HUB_STAGING)
        if not staged and os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)

    def _hub_push_later(self, repo: str | None = None, private: bool | None = None) -> str:
        repo = repo or self.hub_model_id or self.args.hub_model_id or os.path.basename(self.args.output_dir)
        private = self.args.hub_private_repo if private is None else private
        return f"python examples/push_to_hub.py {self.args.output_dir} --hub_model_id {repo}" + (
            " --private" if private else ""
        )

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        # Override: a Hub that cannot be reached (or refuses the repo) fails here, when the Trainer is built with
        # --push_to_hub, before any training, with what to do instead of a network traceback.
        try:
            super().init_hf_repo(token=token, private=private)
        except Exception as err:
            repo = self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
            raise HubPushError(
                f"Cannot create the Hub repo {repo} ({_one_line(err)}). Check the network and the token (`hf auth "
                "login` or --hub_token), or train without --push_to_hub and push the finished run later with: "
                + self._hub_push_later(repo, private)
            ) from err

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Override: Trainer copies the checkpoint's model.safetensors to output_dir and uploads that; here it is the
        # whole wrapper (classifier, teacher, generator, step) without config.json, which nothing can load. Each
        # in-training commit is instead the current model exported as at the end (`_stage_for_hub`), plus, with
        # hub_strategy checkpoint/all_checkpoints, the checkpoint folder (last-checkpoint/ or checkpoint-N/) for
        # resuming. A failed upload is logged and training goes on; the push at the end tries again.
        from transformers import trainer as hf_trainer
        from transformers.trainer_utils import HubStrategy, SaveStrategy
        from transformers.utils.hub import PushInProgress

        args = self.args
        if args.hub_strategy == HubStrategy.END:
            return
        if self._hub_pushes_checkpoints():
            # A pushed checkpoint must be resumable: every rank's RNG state written (all ranks get here), then the
            # completion marker that `_save_checkpoint` would only write after this push.
            self.accelerator.wait_for_everyone()
        if not self.is_world_process_zero():
            return
        self._hub_cleanup()
        if (
            not args.hub_always_push
            and self.push_in_progress is not None
            and not self.push_in_progress.is_done()
        ):
            return
        self.callback_handler.on_push_begin(args, self.state, self.control)
        step = self.state.global_step
        message = (
            f"Training in progress, step {step}"
            if args.save_strategy == SaveStrategy.STEPS
            else f"Training in progress, epoch {int(self.state.epoch)}"
        )
        uploads = [dict(folder_path=self._stage_for_hub(f"step-{step}"), commit_message=message)]
        if self._hub_pushes_checkpoints():
            mark_complete(checkpoint_folder)
            path = (
                "last-checkpoint"
                if args.hub_strategy == HubStrategy.CHECKPOINT
                else Path(checkpoint_folder).name
            )
            uploads.append(
                dict(
                    folder_path=checkpoint_folder, path_in_repo=path, commit_message=message + ", checkpoint"
                )
            )
        jobs = []
        try:
            for upload in uploads:
                job = hf_trainer.hf_api().upload_folder(
                    repo_id=self.hub_model_id,
                    token=args.hub_token,
                    run_as_future=True,
                    revision=args.hub_revision,
                    **upload,
                )
                job.add_done_callback(self._hub_job_done)
                jobs.append(job)
        except Exception as err:
            logger.warning(
                "Could not push step %d to the Hub repo %s (%s); training goes on, and the push at the end of "
                "training tries again.",
                step,
                self.hub_model_id,
                _one_line(err),
            )
        self._hub_staged().append((jobs, uploads[0]["folder_path"]))
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)
        self._hub_cleanup()

    def _hub_job_done(self, job) -> None:
        if not job.cancelled() and job.exception() is not None:
            logger.warning(
                "An in-training push to the Hub repo %s failed (%s); the push at the end of training tries again.",
                self.hub_model_id,
                _one_line(job.exception()),
            )

    def _finish_current_push(self) -> None:
        # Override: once the in-training uploads are over, their staging folders go.
        super()._finish_current_push()
        self._hub_cleanup()

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """`Trainer.push_to_hub`, uploading only what users load: the export (the EMA teacher by default) with its
        config and image processor, our model card (`kwargs` go to `create_model_card`), the mixed-sample grids,
        the metrics and the resolved recipe; the generator (`generator/`) too with hub_strategy
        checkpoint/all_checkpoints. Everything is saved to `output_dir` first (the generator to
        `output_dir/generator/`); when the Hub cannot be reached, raises `HubPushError` saying where the model is
        and how to push it later."""
        from transformers import trainer as hf_trainer

        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        kwargs.pop("model_name", None)  # our card is named after --hub_model_id
        token = token if token is not None else self.args.hub_token
        self.save_model(_internal_call=True)  # export + card, on every process, before anything can fail
        self.save_generator()
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        stage = self._stage_for_hub("final", card_kwargs=kwargs)
        try:
            if self.hub_model_id is None:  # push_to_hub() without --push_to_hub
                self.init_hf_repo(token=token, private=private)
            result = hf_trainer.hf_api().upload_folder(
                repo_id=self.hub_model_id,
                folder_path=stage,
                commit_message=commit_message,
                token=token,
                run_as_future=not blocking,
                revision=revision if revision is not None else self.args.hub_revision,
            )
        except Exception as err:
            shutil.rmtree(stage, ignore_errors=True)
            self._hub_cleanup()
            cause = err.__cause__ if isinstance(err, HubPushError) and err.__cause__ else err
            raise HubPushError(
                f"Could not push to the Hub repo {self.hub_model_id or self.args.hub_model_id} "
                f"({_one_line(cause)}). The trained model is saved locally in {self.args.output_dir} (exported "
                f"model, model card, metrics); push it later with: {self._hub_push_later(private=private)}"
            ) from err
        if blocking:
            shutil.rmtree(stage, ignore_errors=True)
            self._hub_cleanup()
        else:
            self._hub_staged().append(([result], stage))
        return result

    def create_model_card(
        self,
        *,
        dataset: str | None = None,
        dataset_id: str | None = None,
        finetuned_from: str | None = None,
        tags: str | list[str] | None = None,
        license: str | None = None,
        **_ignored,
    ) -> str:
        """Override: our card (`hub.write_model_card`) instead of Trainer's, also when `push_to_hub()` writes it.
        Metrics are the latest evaluation's in the log history. Arguments not given fall back to
        `self.card_info` (which `save_model()` uses too)."""
        from .hub import write_model_card

        info = {**self.card_info}
        given = dict(dataset=dataset, dataset_id=dataset_id, finetuned_from=finetuned_from, license=license)
        info.update({k: v for k, v in given.items() if v is not None})
        metrics: dict = {}
        for entry in self.state.log_history:
            metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        return write_model_card(
            self,
            metrics=metrics,
            dataset=info.get("dataset") or "a user dataset",
            dataset_id=info.get("dataset_id"),
            finetuned_from=info.get("finetuned_from"),
            license=info.get("license"),
            tags=tags + ["vision"],
        )

    def export_model(self, output_dir: str | None = None, which: str | None = None) -> str:
        """Write the chosen weights (EMA teacher by default when there is one) in the model's native format,
        plus the image processor, without generator or mix head. Returns the folder."""
        from .data import make_image_processor

        output_dir = output_dir or self.args.output_dir
        which = which or self.mixup_args.export_model
        if not self.is_world_process_zero():
            return output_dir
        os.makedirs(output_dir, exist_ok=True)
        adapter = self.model.export_adapter(which)
        bad = [
            n
            for n, t in adapter.state_dict().items()
            if t.is_floating_point() and not bool(t.isfinite().all())
        ]
        if bad:
            raise NonFiniteError(
                f"Refusing to export the {'EMA' if adapter is self.model.teacher else 'online'} model: "
                f"{len(bad)} tensor(s) hold NaN or inf (e.g. {', '.join(bad[:3])})."
            )
        info = self.transform_info
        evals = self.eval_dataset.values() if isinstance(self.eval_dataset, dict) else [self.eval_dataset]
        labels = _label_names(adapter, [self.train_dataset, *evals])
        data_config = None
        if adapter.family == "timm" and info is not None:
            # The eval transform in timm's terms (data.pretrained_data_config reads it back): "squash" with
            # crop_pct 1 resizes to size x size, "center" resizes the short side to size / crop_pct and crops.
            crop = info.eval_crop_pct
            data_config = {
                "input_size": (3, info.size, info.size),
                "mean": tuple(info.mean),
                "std": tuple(info.std),
                "crop_pct": 1.0 if crop is None else float(crop),
                "crop_mode": "squash" if crop is None else "center",
                "interpolation": info.interpolation,
            }
        adapter.save_native(output_dir, label_names=labels, data_config=data_config)
        if adapter.family == "timm":
            # timm exports carry their preprocessing in config.json's pretrained_cfg, which timm and transformers'
            # TimmWrapperImageProcessor read; a preprocessor_config.json would win over it on the Hub
            # (AutoImageProcessor reads config.json only for local timm folders) and could disagree with timm.
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output_dir, "preprocessor_config.json"))
        else:
            processor = self.processing_class
            if processor is None and info is not None:
                processor = make_image_processor(info)
            if processor is not None and hasattr(processor, "save_pretrained"):
                processor.save_pretrained(output_dir)
        with _hub_token_hidden(self.args):
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        logger.info(
            "Exported the %s model (%s) to %s",
            "EMA" if adapter is self.model.teacher else "online",
            adapter.family,
            output_dir,
        )
        return output_dir


def _refuse_sharded_training(args: TrainingArguments) -> None:
    """DeepSpeed/FSDP would shard the EMA teacher and the generator; refuse them before Trainer sets anything up
    (on CPU accelerate would silently fall back to plain DDP)."""
    env = {
        k: os.environ.get(k, "").lower() in ("1", "true", "yes")
        for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    }
    if args.fsdp or args.deepspeed or any(env.values()):
        raise ValueError(
            "hf_adautomix supports single-device and DDP training (accelerate launch --multi_gpu, "
            "torchrun, CPU multi-process with --use_cpu); DeepSpeed and FSDP are not supported: "
            "drop --fsdp/--deepspeed (or the accelerate config that enables them)."
        )


def _check_eval_robustness(eval_dataset, transform_info) -> None:
    """--eval_robustness needs the eval set, its normalisation (to get pixels back) and `imagecorruptions`."""
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
    from .evaluation.robustness import _imagecorruptions

    _imagecorruptions()  # raises an ImportError that says what to install


def _auto_transform(train, evaluation, wrapper: MixupModel, seed: int):
    """Apply the transforms `data.resolve_transforms` decides (the CLI's decision: the data's size unless the
    model needs one, a pretrained model's mean/std) to raw image datasets (image + label columns); datasets that
    already yield `pixel_values` are returned unchanged."""
    import datasets

    from . import data as data_lib

    evals = evaluation.values() if isinstance(evaluation, dict) else (evaluation,)
    for ds in (train, *evals):
        if isinstance(ds, datasets.IterableDataset):
            # Rows are transformed on the fly with `with_transform`, and the mean/std, label checks and exact
            # resume read rows by index: a streaming dataset has none of these.
            raise ValueError(
                f"AdAutoMixTrainer got a {type(ds).__name__} (a streaming dataset); it needs a map-style "
                "datasets.Dataset. Load it with `load_dataset(..., streaming=False)` (or "
                "`Dataset.from_generator`)."
            )

    def is_raw(ds) -> bool:  # a `datasets` image dataset that does not yet yield pixel_values
        return isinstance(ds, datasets.Dataset) and "pixel_values" not in ds[0]

    def in_memory(ds):
        """Ready pixel_values, read once from Arrow rather than formatted row by row at every batch."""
        fast = data_lib.in_memory_tensors(ds)
        return ds if fast is None else fast

    raw = [ds for ds in (train, evaluation) if is_raw(ds)]
    if not raw:
        if isinstance(evaluation, dict):
            return in_memory(train), {k: in_memory(v) for k, v in evaluation.items()}, None
        return in_memory(train), in_memory(evaluation), None
    first = raw[0]
    image_col = data_lib._find_column(first, None, data_lib.IMAGE_COLUMN_CANDIDATES, "image", "train")
    label_col = data_lib._find_column(first, None, data_lib.LABEL_COLUMN_CANDIDATES, "label", "train")
    feature = first.features[label_col]
    names = (
        list(feature.names)
        if hasattr(feature, "names")
        else [str(i) for i in range(wrapper.classifier.num_classes)]
    )
    image_data = data_lib.ImageData(
        train=first,
        validation=raw[-1],
        image_column=image_col,
        label_column=label_col,
        labels=names,
        source="user dataset",
    )
    train_tf, eval_tf, info = data_lib.resolve_transforms(
        image_data, data_lib.DataTrainingArguments(), wrapper, seed=seed
    )
    logger.info(
        "Applying the default '%s' transforms (size %d) to the raw image datasets.", info.recipe, info.size
    )
    out = []
    for ds in (train, evaluation):
        if is_raw(ds):
            tf = train_tf if ds is train else eval_tf
            if (
                data_lib.ROW_COLUMN not in ds.column_names
            ):  # names undecodable rows, seeds augmentation per row
                ds = ds.add_column(data_lib.ROW_COLUMN, list(range(len(ds))))
            ds = data_lib.apply_transforms(
                data_lib.replace(image_data, train=ds, validation=ds), tf, tf
            ).train
        out.append(ds)
    return out[0], out[1], info


def _label_names(adapter, datasets=()) -> list[str] | None:
    """The class names an export carries: those of the data the model was trained on (a `ClassLabel` column with one
    name per class), else the model's own (transformers' `id2label` unless it is the `LABEL_i` default, timm's
    `pretrained_cfg["label_names"]`); None when neither has them."""
    import datasets as hf_datasets

    from .data import LABEL_COLUMN_CANDIDATES

    n = adapter.num_classes
    if adapter.family == "transformers":
        id2label = adapter.model.config.id2label or {}
        own = [str(id2label.get(i, f"LABEL_{i}")) for i in range(n)]
        own = None if own == [f"LABEL_{i}" for i in range(n)] else own
    else:
        own = adapter.model.pretrained_cfg.get("label_names")
        own = list(own) if own is not None and len(own) == n else None
    data = None
    for ds in datasets:
        features = getattr(ds, "features", None) or {}
        columns = [c for c in LABEL_COLUMN_CANDIDATES if c in features] + sorted(features)
        names = [features[c].names for c in columns if isinstance(features[c], hf_datasets.ClassLabel)]
        data = next((list(x) for x in names if len(x) == n), None)
        if data is not None:
            break
    if data is not None and own is not None and data != own:
        logger.warning(
            "The model's class names %s differ from the training data's %s; the export uses the data's.",
            own[:5],
            data[:5],
        )
    return data or own
