"""`AdAutoMixTrainer`: a thin `transformers.Trainer` around `MixupModel`.

It builds the wrapper, adds the generator's param group, updates the EMA teacher after each optimizer step,
evaluates the online and EMA models, logs every loss term, saves mixed-sample grids and exports the chosen weights
in the model's own format. Each override below says why it exists.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import rotate_checkpoints

from . import callbacks, checkpoints, optim
from .arguments import MixupArguments
from .backbones import wrap_classifier
from .checkpoints import NonFiniteError as NonFiniteError  # re-exported (hf_adautomix.trainer.NonFiniteError)
from .export import export_trained, hub_token_hidden
from .hub_push import HubPushError as HubPushError  # re-exported: `from hf_adautomix.trainer import ...`
from .hub_push import HubPushMixin
from .mixers import build_mixer
from .modeling import EMASchedule, MixupModel

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _restored(obj, name: str, value):
    """Sets `obj.name = value` on exit."""
    try:
        yield
    finally:
        setattr(obj, name, value)


class AdAutoMixTrainer(HubPushMixin, Trainer):
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
        # Override: wrap the model (`MixupModel`), prepare the datasets, register the callbacks.
        from . import data as data_lib
        from .evaluation import compute_metrics as default_metrics

        if model is None:
            raise ValueError("AdAutoMixTrainer needs a model (transformers, timm, or a MixupModel).")
        args = args if args is not None else TrainingArguments(output_dir="trainer_output")
        self.mixup_args = mixup_args = MixupArguments.checked(mixup_args)  # a string is a TypeError
        # Our collator builds pixel_values/labels from the raw columns inside `with_transform`; Trainer's column
        # pruning would run first and remove them (hf-ecosystem §1.6), so users never need the flag.
        args.remove_unused_columns = False
        args.label_names = args.label_names or ["labels"]
        args.dataloader_pin_memory &= args.device.type not in ("cpu", "mps")  # no pinning there (torch warns)
        if args.ddp_find_unused_parameters is None:
            # Every trainable parameter (classifier, mix head, generator) gets a gradient on every step in every
            # mixer, and the teacher is frozen; Trainer's default for a non-PreTrainedModel (True) is slower.
            args.ddp_find_unused_parameters = False

        _refuse_sharded_training(args)
        wrapper = model if isinstance(model, MixupModel) else self.build_wrapper(model, mixup_args, args)
        if mixup_args.channels_last:
            wrapper.to_channels_last()
        self.transform_info = transform_info
        if train_dataset is not None or eval_dataset is not None:  # labels checked, raw datasets transformed
            facts, num_labels = wrapper.classifier.data_facts(), wrapper.classifier.num_classes
            train_dataset, eval_dataset, info = data_lib.prepare_datasets(
                train_dataset, eval_dataset, model_data=facts, num_labels=num_labels, seed=args.seed
            )
            self.transform_info = self.transform_info or info
        self.robustness_probe = None  # --eval_robustness
        if mixup_args.eval_robustness:
            samples = mixup_args.eval_robustness_samples
            self.robustness_probe = callbacks.RobustnessProbe(eval_dataset, self.transform_info, samples)
        if self.transform_info is not None and hasattr(wrapper.mixer, "image_mean"):  # PuzzleMix: smoothness
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
        self.loss_terms = callbacks.LossTerms()  # the train forwards' named loss terms, logged by `log`
        # What the model card says about the data and the base model (`create_model_card` arguments win).
        self.card_info: dict = {}
        self.add_callback(callbacks.EMACallback())
        self._nan_filter_on_device = False  # see `train`
        self.add_callback(callbacks.NonFiniteGuard(mixup_args.max_nonfinite_steps))
        if train_dataset is not None and not args.dataloader_persistent_workers:
            # Persistent workers keep the dataset copy of the first epoch, so the epoch would never advance in
            # them: such runs keep drawing augmentation from the global RNG (exact resume is not promised then).
            self.add_callback(callbacks.AugmentationEpochCallback(train_dataset, args.seed))
        if wrapper.mixer.learned:
            every, info = mixup_args.save_mix_every, self.transform_info
            self.add_callback(callbacks.MixGridCallback(every, info, self.callback_handler))
            self.add_callback(callbacks.MaskCollapseWarning(mixup_args.mixup))
        if wrapper.teacher is not None:
            logger.info("EMA teacher: %s.", wrapper.ema_schedule.describe())

    @staticmethod
    def build_wrapper(model: nn.Module, mixup_args: MixupArguments, args: TrainingArguments) -> MixupModel:
        """`model` with the mixer and EMA teacher that `mixup_args` ask for, as one `MixupModel`."""
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

    @property
    def nonfinite_guard(self) -> callbacks.NonFiniteGuard:
        """The run's `NonFiniteGuard` (looked up: Trainer replaces restored `ExportableState` callbacks)."""
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, callbacks.NonFiniteGuard))

    # -- loss ------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Override: Trainer's label smoother would pop `labels` before our forward (the mixers apply
        # `label_smoothing_factor` themselves, to every target, before mixing); and a train forward's named loss
        # terms, which come back in its outputs, go to the log and to `NonFiniteGuard` (on the device, no sync).
        outputs = model(**inputs)
        if self.model.training:
            terms = {k: v for k, v in outputs.items() if k != "loss"}
            self.loss_terms.add(terms)
            self.nonfinite_guard.observe(outputs["loss"], terms)
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
        # Override: lend the model a backward for the learned mixers' per-pass backward (`MixupModel.
        # per_pass_backward`), scaled exactly as Trainer scales the loss it returns (1/GA unless already scaled,
        # then `accelerator.backward`, hence the fp16 GradScaler), run with autocast off as Trainer's own backward
        # is; Trainer then back-propagates what the forward returns (the rest of the graph) as usual. And apply
        # Trainer's NaN filter of the logged loss on the device (see `train`).
        net = self.model
        lend = isinstance(net, MixupModel) and net.early_backward and self._per_pass_backward_supported

        def backward(loss):
            if not self.loss_is_scaled_for_ga:  # False: our loss is a per-micro-batch mean (class attribute)
                loss = loss / self.current_gradient_accumulation_steps
            with torch.autocast(device_type=loss.device.type, enabled=False):
                self.accelerator.backward(loss)

        ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        with net.per_pass_backward(backward, full_graph=ddp) if lend else contextlib.nullcontext():
            loss = super().training_step(model, inputs, num_items_in_batch)
        if self._nan_filter_on_device:  # Trainer's `logging_nan_inf_filter` (off in `train`), without a sync
            mean = self._tr_loss / (1 + self.state.global_step - self._globalstep_last_logged)
            loss = torch.where(torch.isfinite(loss), loss, mean.to(loss.device, loss.dtype))
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # Override: hand the global gradient norm Trainer computes every step anyway to `NonFiniteGuard`.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.nonfinite_guard.observe_grad_norm(grad_norm)
        return grad_norm

    def get_train_dataloader(self):
        # Override: drop the last incomplete batch, as timm's training loader does. A last batch of one row
        # breaks BatchNorm (and every mixer needs a partner); a smaller last batch would also weigh its rows more.
        # A training set smaller than one batch keeps its one (smaller) batch.
        dataset, keep = self.train_dataset, self.args.dataloader_drop_last
        if dataset is not None and hasattr(dataset, "__len__"):
            rows = len(dataset) // max(self.args.world_size, 1)
            if rows < 2:
                raise ValueError(
                    f"The training set has {len(dataset)} row(s) for {self.args.world_size} process(es); "
                    "training needs at least 2 rows per process (BatchNorm and mixing need a batch of 2 or more)."
                )
            self.args.dataloader_drop_last = rows >= self._train_batch_size
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = keep

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Override: training logs also carry every loss term, λ, N, mask statistics, EMA momentum, generator LR.
        if "loss" in logs:
            terms = self.loss_terms.pop_means(self.args, self.accelerator)
            logs.update({f"train_{k}": round(v, 4) for k, v in terms.items()})
            if "train_loss_classifier" in logs:
                # The step loss shown is the classifier's; with the generator's objective added (what is
                # back-propagated) it would swing with the adversarial/cooperative alternation.
                logs["train_loss_total"] = logs["loss"]
                logs["loss"] = logs["train_loss_classifier"]
            if self.model.teacher is not None:
                logs["ema_momentum"] = self.model.current_momentum()
            if self._generator_group is not None:  # set only once the optimizer exists
                logs["generator_lr"] = self.optimizer.param_groups[self._generator_group]["lr"]
            if self.nonfinite_guard.max_skips > 0:
                logs["nonfinite_steps_skipped"] = self.nonfinite_guard.skipped
        super().log(logs, start_time)

    # -- optimizer -------------------------------------------------------------------------------------------
    _generator_group: int | None = None  # the generator's param group, once the optimizer exists

    def create_optimizer(self, model=None):
        # Override: the generator gets its own param group (own LR and weight decay) in the one optimizer.
        if self.optimizer is not None:
            return super().create_optimizer()
        create, mixer = super().create_optimizer, self.model.mixer
        self._generator_group = optim.add_generator_group(create, mixer, self.args, self.mixup_args)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        # Override: with --generator_min_lr, the generator group anneals on its own cosine (released recipes).
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        group, steps = self._generator_group, num_training_steps
        optim.anneal_generator_group(scheduler, self.optimizer, group, steps, self.args, self.mixup_args)
        return scheduler

    # -- evaluation ------------------------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        # Override: one pass over the data for every head (`_evaluate_heads`): eval_* (online), eval_ema_* (EMA
        # teacher), eval_mix_head_* and eval_ema_mix_head_* (a learned mixer's mix head of each, reference §8);
        # --eval_robustness metrics (`RobustnessProbe`) as one more log entry; rank 0's buffers on every rank
        # first. The RNG is left as found (a DataLoader iterator draws from it): a resumed run stays exact.
        callbacks.sync_buffers(self.model, self.args)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        filter_flag = self.args.logging_nan_inf_filter
        self.args.logging_nan_inf_filter = filter_flag or self._nan_filter_on_device  # the user's flag
        with (
            torch.random.fork_rng(devices=devices),
            _restored(self.args, "logging_nan_inf_filter", filter_flag),
        ):
            evals = eval_dataset if eval_dataset is not None else self.eval_dataset
            if isinstance(evals, dict):  # Trainer calls this method once per dataset, named eval_<name>_*
                metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            else:
                metrics = self._evaluate_heads(eval_dataset, ignore_keys, metric_key_prefix)
            if self.robustness_probe is not None and eval_dataset is None:
                robust = self.robustness_probe.measure(self, metric_key_prefix)
                self.log(robust)
                metrics.update(robust)
        return metrics

    def _evaluate_heads(self, eval_dataset, ignore_keys, prefix: str) -> dict[str, float]:
        """Trainer's evaluation of one dataset, the eval forward returning every head's logits and
        `compute_metrics` naming each head's metrics (`per_head_metrics`)."""
        model = self.model
        with (
            _restored(self, "compute_metrics", self.compute_metrics),
            _restored(model, "eval_all_heads", False),
        ):
            self.compute_metrics = callbacks.per_head_metrics(self.compute_metrics, model.eval_heads)
            model.eval_all_heads = True
            return super().evaluate(eval_dataset, ignore_keys, prefix)

    # -- saving ----------------------------------------------------------------------------------------------
    _checkpointing = False  # True inside `_save_checkpoint`: `_save` then writes the whole wrapper

    def _save(self, output_dir: str | None = None, state_dict=None):
        # Override of Trainer's private save hook (what every `save_model` runs): checkpoints (checkpoint-N/, flagged
        # by `_save_checkpoint`) hold the whole wrapper for exact resume; every other save (`save_model(dir)`,
        # `push_to_hub()`) exports the native model, generator and card to the folder.
        output_dir = output_dir or self.args.output_dir
        with hub_token_hidden(self.args):
            if self._checkpointing:
                super()._save(output_dir, state_dict)
                return
            self.export_model(output_dir)
            self.save_generator(output_dir)
            if self.is_world_process_zero():
                self.save_model_card(output_dir)  # what save_model() users get too, not only push_to_hub()
                # safetensors writes 0600; the export gets the user's umask
                checkpoints.umask_modes(output_dir)

    def _save_checkpoint(self, model, trial):
        # Override: a kill at any moment leaves the previous checkpoint whole. Trainer writes checkpoint-N/ file by
        # file and then deletes old checkpoints (save_total_limit); here the new one is first marked complete
        # (`checkpoints.mark_complete`), and only then are old ones deleted. (`_save_checkpoint` and
        # `_get_output_dir` are Trainer's private hooks: checkpoint writing has no public one.)
        run_dir = self._get_output_dir(trial=trial)
        target = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(target):
            shutil.rmtree(target)  # what an interrupted save (or an abandoned run) left under this name
        limit = self.args.save_total_limit
        self.args.save_total_limit, self._checkpointing = None, True
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, SafetensorError) as err:  # a full disk: one line naming what a re-run resumes from
            raise checkpoints.save_failed(err, target, run_dir) from err
        finally:
            self.args.save_total_limit, self._checkpointing = limit, False
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            checkpoints.mark_complete(target)
            # transformers' own rotation (trainer_utils, not in its documented API), run after the mark instead.
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint=True` takes the last *complete* checkpoint in `output_dir`
        (skipping, with a warning, any that an interrupted save left), and a named checkpoint is checked first.
        Arguments that would make no optimizer step (or crash) are a ValueError naming the flag, before anything."""
        optim.check_step_counts(args := self.args)
        resume = checkpoints.checkpoint_to_resume(resume_from_checkpoint, args.output_dir, self.model)
        if resume and checkpoints.finished_at(resume, args.max_steps, args.num_train_epochs):
            return self._finished_run(resume)
        # Trainer filters a non-finite step loss out of the logged loss with `torch.isnan(loss) or ...`: a host sync
        # per step on a GPU. `training_step` applies the same filter on the device instead (`evaluate` puts the flag
        # back for the evaluation loop, which filters its own losses).
        filter_flag = self._nan_filter_on_device = self.args.logging_nan_inf_filter
        self.args.logging_nan_inf_filter = False
        try:
            return super().train(resume_from_checkpoint=resume, trial=trial, **kwargs)
        finally:
            self.args.logging_nan_inf_filter, self._nan_filter_on_device = filter_flag, False

    def _finished_run(self, checkpoint: str):
        """A re-run of a finished run gives back its model, state and train metrics (Trainer would train a step)."""
        logger.warning("%s is the end of training: nothing left to train.", checkpoint)
        self._load_from_checkpoint(checkpoint)  # Trainer's private loader: the one that reads what it wrote
        self.state, output = checkpoints.finished_state(checkpoint, self.args.output_dir)
        return output

    # -- export (the Hub side: `hub_push.HubPushMixin`) ------------------------------------------------------
    def export_model(self, output_dir: str | None = None, which: str | None = None) -> str:
        """Write the chosen weights (EMA teacher by default when there is one) in the model's native format,
        plus the image processor, without generator or mix head (`export.export_trained`). Returns the folder."""
        return export_trained(self, output_dir, which)

    def save_generator(self, output_dir: str | None = None) -> str | None:
        """Save a learned mixer's generator as its own artefact (`generator_hub.save_generator`) to
        `output_dir/generator/`. Returns the folder, or None without a generator (or on processes but the main)."""
        if not getattr(self.model.mixer, "learned", False) or not self.is_world_process_zero():
            return None
        from .generator_hub import GENERATOR_DIR, save_generator

        return save_generator(self, os.path.join(output_dir or self.args.output_dir, GENERATOR_DIR))


def _refuse_sharded_training(args: TrainingArguments) -> None:
    """DeepSpeed/FSDP would shard the EMA teacher and the generator: refused before Trainer sets anything up."""
    env = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    if args.fsdp or args.deepspeed or any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in env):
        raise ValueError(
            "hf_adautomix supports single-device and DDP training (accelerate launch --multi_gpu, torchrun, CPU "
            "multi-process with --use_cpu); DeepSpeed and FSDP are not supported: drop --fsdp/--deepspeed (or "
            "the accelerate config that enables them)."
        )
