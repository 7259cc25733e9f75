"""A run's output folder: what a re-run of a command does with it (resume, refuse, or nothing when it is finished),
the lock that keeps a second run out of it, and whether the results can be written there at all.

Re-running a command resumes its last complete checkpoint when the arguments that decide what is trained are the
same (`RUN_FILE` records them); an explicit `--resume_from_checkpoint` only warns about changed ones. One run at a
time: `lock_output_dir` takes an `fcntl.flock` lock on `output_dir/LOCK_FILE` (the kernel releases it when the
process ends, however it ends, so the lock of a killed run is stale and simply taken over) and writes the PID into
it; a second run refuses naming that PID. Under DDP only the main process locks; POSIX only (a warning elsewhere).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil

from .checkpoints import (
    COMPLETE_FILE,
    check_resumable,
    checkpoint_dirs,
    finished_at,
    last_complete_checkpoint,
    run_folder_checkpoint,
)

logger = logging.getLogger(__name__)

RUN_FILE = "hf_adautomix_run.json"
# Arguments that may change between a run and its resumption: where things go, how much is logged, secrets.
_FREE_TO_CHANGE = {
    "output_dir",
    "resume_from_checkpoint",
    "run_name",
    "project",
    "report_to",
    "disable_tqdm",
    "log_level",
    "log_level_replica",
    "log_on_each_node",
    "logging_dir",
    "logging_strategy",
    "logging_steps",
    "logging_first_step",
    "logging_nan_inf_filter",
    "push_to_hub",
    "hub_model_id",
    "hub_strategy",
    "hub_token",
    "hub_private_repo",
    "hub_always_push",
    "hub_revision",
    "token",
    "cache_dir",
    "save_total_limit",
    "save_steps",
    "save_strategy",
    "save_on_each_node",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context",
    "per_device_eval_batch_size",
    "eval_strategy",
    "eval_steps",
    "eval_delay",
    "eval_on_start",
    "local_rank",
    "save_mix_every",
    "eval_robustness",
    "eval_robustness_samples",
    "skip_memory_metrics",
    "trackio_space_id",
    "trackio_bucket_id",
    "trackio_static_space_id",
    "ddp_timeout",
    "max_nonfinite_steps",
}


def run_record(*arg_groups) -> dict:
    """The arguments that decide what a run trains, as JSON values (secrets and free-to-change ones left out)."""
    record = {}
    for group in arg_groups:
        values = group.to_dict() if hasattr(group, "to_dict") else dict(vars(group))
        for key, value in values.items():
            if key in _FREE_TO_CHANGE or key.startswith("_") or key.endswith("token"):
                continue
            record[key] = json.loads(json.dumps(getattr(value, "value", value), default=str))
    return record


def resolve_resume(
    output_dir: str, record: dict, resume: str | bool | None, *, main_process: bool = True
) -> str | None:
    """What a (re-)run of a command resumes from, as transformers' example scripts decide, but safely.

    - `resume` is a path: that checkpoint, if it is complete (else an error naming the last complete one).
    - `resume` is True, or None while `output_dir` holds checkpoints: the last complete checkpoint, provided the
      run that wrote it had the same arguments (`RUN_FILE`); otherwise an error listing the differences.
    - `resume` is False: train from scratch; the old `checkpoint-*` folders are deleted first (they would
      otherwise be mixed with the new run's).

    Writes `record` to `output_dir/RUN_FILE` when training is to go ahead. Only the `main_process` deletes and
    writes; every process takes the same decision.
    """
    if isinstance(resume, str) and resume.lower() in ("true", "false"):
        resume = resume.lower() == "true"
    existing = checkpoint_dirs(output_dir)
    checkpoint = None
    if resume is False:
        for path in existing if main_process else []:
            logger.warning("--resume_from_checkpoint False: deleting %s of an earlier run.", path)
            shutil.rmtree(path)
    elif isinstance(resume, str):
        checkpoint = run_folder_checkpoint(resume) or resume
        check_resumable(checkpoint)
        _check_same_mixer(record, checkpoint)
    elif existing:
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None and resume is True:
            raise ValueError(f"--resume_from_checkpoint True: no complete checkpoint in {output_dir!r}.")
        if checkpoint is not None:
            _check_same_mixer(record, checkpoint)
            _check_same_run(output_dir, record, checkpoint, strict=resume is None)
            logger.warning(
                "Resuming from %s (the last complete checkpoint in --output_dir; pass --resume_from_checkpoint "
                "False to start over).",
                checkpoint,
            )
    elif resume is True:
        raise ValueError(f"--resume_from_checkpoint True: there is no checkpoint in {output_dir!r}.")
    if not main_process:
        return checkpoint
    os.makedirs(output_dir, exist_ok=True)
    if _recorded(output_dir) != _as_json(record):  # the same record stays as it is (a re-run changes nothing)
        tmp = os.path.join(output_dir, RUN_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        os.replace(tmp, os.path.join(output_dir, RUN_FILE))
    return checkpoint


def _as_json(record: dict) -> dict:
    return json.loads(json.dumps(record))


def _recorded(output_dir: str) -> dict | None:
    try:
        with open(os.path.join(output_dir, RUN_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _check_same_mixer(record: dict, checkpoint: str) -> None:
    """A checkpoint of another `--mixup` holds other modules (keys): refuse it in one line, naming both mixers."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    path, recorded = os.path.join(folder, RUN_FILE), _recorded(folder)
    before = (
        recorded.get("mixup") if isinstance(recorded, dict) else None
    )  # none: the keys are checked in train()
    if before is not None and "mixup" in record and before != record["mixup"]:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: it was written by a --mixup {before} run ({path}), this run is "
            f"--mixup {record['mixup']}: their model keys differ (mixer modules). Resume with --mixup {before}, or "
            "start from its weights with --model_name_or_path on an export instead."
        )


def _check_same_run(output_dir: str, record: dict, checkpoint: str, *, strict: bool = True) -> None:
    """Refuse (`strict`: the implicit re-run of a command) or warn (an explicit --resume_from_checkpoint True:
    extending a run with more steps is the common case) when the arguments differ from those of the run."""
    before = _recorded(output_dir)
    if not isinstance(before, dict):
        logger.warning(
            "%s has no readable %s: cannot check that it was trained with the same arguments.",
            output_dir,
            RUN_FILE,
        )
        return
    changed = sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k))
    diffs = "; ".join(f"--{k} {before.get(k)!r} there, {record.get(k)!r} now" for k in changed[:8])
    if changed and not strict:
        logger.warning("Resuming from %s with changed arguments: %s.", checkpoint, diffs)
    elif changed:
        raise ValueError(
            f"--output_dir {output_dir!r} holds checkpoints (last complete: {checkpoint}) of a run with other "
            f"arguments: {diffs}{' …' if len(changed) > 8 else ''}. Re-run with the same arguments to resume it, "
            "pass --resume_from_checkpoint False to start over (its checkpoints are deleted), or use another "
            "--output_dir."
        )


def finished_results(
    output_dir: str,
    checkpoint: str | None,
    max_steps: int,
    num_train_epochs: float,
    record: dict | None = None,
) -> dict | None:
    """The metrics (`all_results.json`) of a finished run of this command in `output_dir`, when there is one, else
    None (there is something left to do). With `checkpoint`, what the re-run would resume from: it is the last step,
    and the export, card and evaluation were all written after it. Without one (a run that saved no checkpoint)
    and with `record`, this command's arguments: `RUN_FILE` holds them (written at the run's start), the folder's
    `trainer_state.json` is at the last step, and the export, card and evaluation were written after `RUN_FILE`."""
    if checkpoint is not None:
        if not finished_at(checkpoint, max_steps, num_train_epochs):
            return None
        since = os.path.getmtime(os.path.join(checkpoint, COMPLETE_FILE))
    elif record is not None and not checkpoint_dirs(output_dir) and _recorded(output_dir) == _as_json(record):
        if not finished_at(output_dir, max_steps, num_train_epochs):
            return None
        since = os.path.getmtime(os.path.join(output_dir, RUN_FILE))
    else:
        return None
    results = os.path.join(output_dir, "all_results.json")
    written = [results, *(os.path.join(output_dir, name) for name in ("config.json", "README.md"))]
    if not all(os.path.isfile(p) and os.path.getmtime(p) >= since for p in written):
        return None
    try:
        with open(results) as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return None
    done = (
        isinstance(metrics, dict) and "train_loss" in metrics and any(k.startswith("eval_") for k in metrics)
    )
    return metrics if done else None


# ---------------------------------------------------------------------------------------------------------------
# Before training: can the results be written at all?
# ---------------------------------------------------------------------------------------------------------------
def check_output_dir(output_dir: str, needed_bytes: int) -> None:
    """Raise a clear OSError now, rather than after training, when `output_dir` cannot be written or lacks
    `needed_bytes` of free space."""
    import tempfile

    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write_test_") as f:
            f.write(b"0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise OSError(
            f"--output_dir {output_dir!r} is not writable ({err.strerror or err}); the trained model could not "
            "be saved there. Choose a writable --output_dir."
        ) from err
    free = shutil.disk_usage(output_dir).free
    if free < needed_bytes:
        raise OSError(
            f"--output_dir {output_dir!r} has {free / 2**20:.1f} MiB free; saving this run needs about "
            f"{needed_bytes / 2**20:.1f} MiB (the exported model and checkpoints). Free some space or choose "
            "another --output_dir."
        )


# ---------------------------------------------------------------------------------------------------------------
# One run at a time
# ---------------------------------------------------------------------------------------------------------------
LOCK_FILE = ".hf_adautomix.lock"


def lock_output_dir(output_dir: str) -> int | None:
    """Lock `output_dir` for this process until it exits (the file descriptor, kept open, is returned).

    Raises:
        OSError: another live process holds the lock (its PID is named).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        logger.warning("No fcntl here: --output_dir %r is not locked against a second run.", output_dir)
        return None
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OSError(
                f"--output_dir {output_dir!r} is in use by another run (PID {holder}, lock file {path}); wait for "
                "it to end, or choose another --output_dir."
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    atexit.register(_release, path, fd)
    return fd


def _release(path: str, fd: int) -> None:
    try:
        os.unlink(path)  # while still locked: a run waiting on this file locks the new one instead
    except OSError:
        pass
    os.close(fd)
