"""Hub staging and pushing: what one Hub commit of a training run uploads, and the Trainer overrides that push it.

`HubPushMixin` is a base class of `AdAutoMixTrainer` (before `transformers.Trainer`, whose Hub methods it
overrides). Every commit is the current model exported as at the end of training (`export_model`), its model card,
the mixed-sample grids and the run's metrics files, staged in `output_dir/_hub_staging/<name>/`; with hub_strategy
checkpoint/all_checkpoints, also the generator and the checkpoint folder (what resuming needs). A Hub that cannot be
reached fails with `HubPushError`, which says where the model is saved and how to push it later.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import NoReturn

logger = logging.getLogger(__name__)


class HubPushError(OSError):
    """The Hub could not be reached or refused an upload; what was saved locally is whole (the message says where
    and how to push it later)."""


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class HubPushMixin:
    """The Hub side of `AdAutoMixTrainer`: staging, the in-training and final pushes, and the model card."""

    # Besides the export (`export_model`) and its card, a Hub commit carries these files of output_dir when they
    # are there (metrics, the resolved recipe) and its mixed-sample grids; `generator/` only with hub_strategy
    # checkpoint/all_checkpoints, which push what resuming needs (Trainer's semantics).
    HUB_FILES = (
        "all_results.json",
        "train_results.json",
        "eval_results.json",
        "test_results.json",
        "trainer_state.json",
        "hf_adautomix_run.json",  # run_folder.RUN_FILE
    )
    HUB_STAGING = "_hub_staging"  # under output_dir; names starting with "_" are never uploaded from it

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
        `self.card_info` (which `save_model()` uses too; it may also name `validation_dataset`, the source of the
        validation data when it is not the training source's)."""
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
            validation_dataset=info.get("validation_dataset"),
            tags=tags + ["vision"],
        )

    def save_model_card(self, folder: str, card_kwargs: dict | None = None) -> None:
        """Write the model card (`create_model_card`, to output_dir/README.md, where its gallery links point) and,
        for another `folder`, copy it and the mixed-sample grids it shows there."""
        card = self.create_model_card(**(card_kwargs or {}))
        out = self.args.output_dir
        if os.path.abspath(folder) == os.path.abspath(out):
            return
        shutil.copy2(card, os.path.join(folder, "README.md"))
        if os.path.isdir(os.path.join(out, "mixed_samples")):
            shutil.copytree(
                os.path.join(out, "mixed_samples"), os.path.join(folder, "mixed_samples"), dirs_exist_ok=True
            )

    # -- staging ---------------------------------------------------------------------------------------------
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
        self.save_model_card(stage, card_kwargs)
        for file in self.HUB_FILES:
            if os.path.isfile(os.path.join(out, file)):
                shutil.copy2(os.path.join(out, file), os.path.join(stage, file))
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

    # -- Trainer's Hub methods -------------------------------------------------------------------------------
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
        # Override of Trainer's private hook (the only place an in-training push can be changed): Trainer copies
        # the checkpoint's model.safetensors to output_dir and uploads that; here it is the whole wrapper
        # (classifier, teacher, generator, step) without config.json, which nothing can load. Each in-training
        # commit is instead the current model exported as at the end (`_stage_for_hub`), plus, with hub_strategy
        # checkpoint/all_checkpoints, the checkpoint folder (last-checkpoint/ or checkpoint-N/) for resuming. A
        # failed upload is logged and training goes on; the push at the end tries again.
        from transformers.trainer_utils import HubStrategy

        if self.args.hub_strategy == HubStrategy.END:
            return
        if self._hub_pushes_checkpoints():
            # A pushed checkpoint must be resumable: every rank's RNG state written (all ranks get here), then the
            # completion marker that `_save_checkpoint` would only write after this push.
            self.accelerator.wait_for_everyone()
        if not self.is_world_process_zero():
            return
        self._hub_cleanup()
        busy = self.push_in_progress is not None and not self.push_in_progress.is_done()
        if busy and not self.args.hub_always_push:
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        uploads = self._checkpoint_uploads(checkpoint_folder)
        self._track_push(self._start_uploads(uploads), uploads[0]["folder_path"])

    def _checkpoint_uploads(self, checkpoint_folder: str) -> list[dict]:
        """The `upload_folder` arguments of one in-training push: the staged export, and the checkpoint with the
        checkpoint strategies."""
        from transformers.trainer_utils import HubStrategy, SaveStrategy

        from .checkpoints import mark_complete

        args, step = self.args, self.state.global_step
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
        return uploads

    def _start_uploads(self, uploads: list[dict]) -> list:
        """Start the uploads in the background; a failure to start one is logged (the push at the end retries)."""
        from transformers import trainer as hf_trainer

        jobs = []
        try:
            for upload in uploads:
                job = hf_trainer.hf_api().upload_folder(
                    repo_id=self.hub_model_id,
                    token=self.args.hub_token,
                    run_as_future=True,
                    revision=self.args.hub_revision,
                    **upload,
                )
                job.add_done_callback(self._hub_job_done)
                jobs.append(job)
        except Exception as err:
            logger.warning(
                "Could not push step %d to the Hub repo %s (%s); training goes on, and the push at the end of "
                "training tries again.",
                self.state.global_step,
                self.hub_model_id,
                _one_line(err),
            )
        return jobs

    def _track_push(self, jobs: list, stage: str) -> None:
        """Record `jobs` in Trainer's `push_in_progress` (waited for at the end) and their staging folder."""
        # PushInProgress is transformers' own (undocumented) holder of in-flight uploads, which Trainer waits on.
        from transformers.utils.hub import PushInProgress

        self._hub_staged().append((jobs, stage))
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
        # Override of Trainer's private wait for in-training uploads: once they are over, their staging folders go.
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
            self._push_failed(stage, err, private)
        if blocking:
            shutil.rmtree(stage, ignore_errors=True)
            self._hub_cleanup()
        else:
            self._hub_staged().append(([result], stage))
        return result

    def _push_failed(self, stage: str, err: Exception, private: bool | None) -> NoReturn:
        """Clean up after a failed final push and raise `HubPushError` saying where the model is."""
        shutil.rmtree(stage, ignore_errors=True)
        self._hub_cleanup()
        cause = err.__cause__ if isinstance(err, HubPushError) and err.__cause__ else err
        raise HubPushError(
            f"Could not push to the Hub repo {self.hub_model_id or self.args.hub_model_id} "
            f"({_one_line(cause)}). The trained model is saved locally in {self.args.output_dir} (exported "
            f"model, model card, metrics); push it later with: {self._hub_push_later(private=private)}"
        ) from err
