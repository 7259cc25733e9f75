"""Checkpoints that survive a kill, and finding the last one that is whole.

Trainer writes `checkpoint-N/` file by file, so a kill during a save leaves a folder that looks like a checkpoint
but is not. `AdAutoMixTrainer` finishes every save by writing `COMPLETE_FILE` (the name, size and SHA-256 of every
file, written once the files are fsynced, to a temporary name and renamed, so it is there whole or not at all) and
only then deletes older checkpoints. A checkpoint is *complete* when that file is there and every file it lists has
its size and hash.

The other faults a run must survive are here too: resuming a re-run command (or refusing it when its arguments
changed), an output folder that cannot hold the results, and divergence (`NonFiniteError`, raised by the non-finite
guard, which points back to the last complete checkpoint, and by the export, which never writes non-finite weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re

logger = logging.getLogger(__name__)

COMPLETE_FILE = "hf_adautomix_complete.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient (or non-finite weights were about to be exported)."""


def checkpoint_dirs(folder: str) -> list[str]:
    """The `checkpoint-N` folders in `folder`, by increasing N."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(folder) if (m := _CHECKPOINT_RE.match(name))]
    return [
        os.path.join(folder, name) for _, name in sorted(found) if os.path.isdir(os.path.join(folder, name))
    ]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask_modes(folder: str) -> None:
    """Give the files of `folder` that were written with a temporary file's mode (0600: safetensors does that) the
    mode the user's umask gives a new file, as `open()` and `save_pretrained`'s other files get; `checkpoint-N`
    subfolders are left to their own save."""
    mask = os.umask(0o077)
    os.umask(mask)
    mode = 0o666 & ~mask
    if mode == 0o600:
        return
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not _CHECKPOINT_RE.match(d)]
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path) and os.stat(path).st_mode & 0o777 == 0o600:
                os.chmod(path, mode)


def mark_complete(checkpoint: str) -> None:
    """Record every file of `checkpoint` with its size and SHA-256, after fsyncing the files and their folders
    (so that the marker never reaches the disk before what it vouches for); atomic (temporary file + rename)."""
    umask_modes(checkpoint)
    files, hashes = {}, {}
    for root, _, names in os.walk(checkpoint):
        for name in names:
            path = os.path.join(root, name)
            if name != COMPLETE_FILE and not name.endswith(".tmp"):
                _fsync(path)
                files[os.path.relpath(path, checkpoint)] = os.path.getsize(path)
                hashes[os.path.relpath(path, checkpoint)] = _sha256(path)
        _fsync(root)
    tmp = os.path.join(checkpoint, COMPLETE_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": files, "sha256": hashes}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(checkpoint, COMPLETE_FILE))
    _fsync(checkpoint)


def checkpoint_problem(checkpoint: str) -> str | None:
    """Why `checkpoint` cannot be resumed from (None when it is complete). Markers of older versions hold sizes
    only: their files are checked by size."""
    marker = os.path.join(checkpoint, COMPLETE_FILE)
    if not os.path.isfile(marker):
        return "it is incomplete (the save that wrote it was interrupted)"
    try:
        with open(marker) as f:
            record = json.load(f)
        files, hashes = record["files"], record.get("sha256", {})
    except (OSError, ValueError, KeyError, AttributeError) as err:
        return f"its {COMPLETE_FILE} is unreadable ({err})"
    for name, size in files.items():
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} is {os.path.getsize(path)} bytes, {size} were written (truncated or changed)"
        if name in hashes and _sha256(path) != hashes[name]:
            return f"{name} does not have the SHA-256 it was written with (its bytes changed on disk)"
        if name.endswith(".safetensors") and not _header_ok(path):
            return f"{name} has a damaged safetensors header"
    return None


def _header_ok(path: str) -> bool:
    """Whether the safetensors file at `path` starts with a readable header (an 8-byte length, then JSON)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= os.path.getsize(path) - 8:
                return False
            return isinstance(json.loads(f.read(size)), dict)
    except (OSError, ValueError):
        return False


def last_complete_checkpoint(folder: str, *, warn: bool = True) -> str | None:
    """The complete checkpoint with the highest step in `folder`; newer broken ones are skipped with a warning."""
    for checkpoint in reversed(checkpoint_dirs(folder)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        if warn:
            logger.warning("Skipping checkpoint %s: %s.", checkpoint, problem)
    return None


def check_resumable(checkpoint: str) -> None:
    """Raise a ValueError naming what is wrong with `checkpoint` and the last complete one before it."""
    if not os.path.isdir(checkpoint):
        raise ValueError(f"--resume_from_checkpoint {checkpoint!r} is not a folder.")
    problem = checkpoint_problem(checkpoint)
    if problem is None:
        return
    parent = os.path.dirname(os.path.abspath(checkpoint))
    earlier = [
        c for c in checkpoint_dirs(parent) if _step(c) < _step(checkpoint) and checkpoint_problem(c) is None
    ]
    hint = (
        f" The last complete checkpoint before it is {earlier[-1]}: resume from that one."
        if earlier
        else " There is no complete checkpoint before it."
    )
    raise ValueError(f"Cannot resume from {checkpoint}: {problem}.{hint}")


def _step(checkpoint: str) -> int:
    m = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(checkpoint)))
    return int(m.group(1)) if m else -1


def checkpoint_to_resume(resume: str | bool | None, output_dir: str) -> str | None:
    """What `train(resume_from_checkpoint=resume)` resumes from: for True the last *complete* checkpoint in
    `output_dir` (skipping, with a warning, any that an interrupted save left), a named checkpoint once
    `check_resumable` passed it, else None."""
    if resume is True:
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise ValueError(
                f"resume_from_checkpoint=True: there is no complete checkpoint in {output_dir!r}."
            )
        logger.warning("Resuming from %s.", checkpoint)
        return checkpoint
    if resume:
        resume = _run_folder_checkpoint(resume) or resume
        check_resumable(resume)
    return resume or None


def finished_at(checkpoint: str, max_steps: int, num_train_epochs: float) -> bool:
    """Whether `checkpoint` was taken at the end of training: `max_steps` steps when > 0, else the whole run of
    `num_train_epochs` epochs it was saved in (its `trainer_state.json`)."""
    path = os.path.join(checkpoint, "trainer_state.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        state = json.load(f)
    step = state.get("global_step", 0)
    if max_steps > 0:
        return step >= max_steps
    return step >= state.get("max_steps", 0) and state.get("num_train_epochs", 0) == num_train_epochs


# ---------------------------------------------------------------------------------------------------------------
# Re-running a command: resume, or refuse when the arguments changed
# ---------------------------------------------------------------------------------------------------------------
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
            import shutil

            shutil.rmtree(path)
    elif isinstance(resume, str):
        checkpoint = _run_folder_checkpoint(resume) or resume
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
    tmp = os.path.join(output_dir, RUN_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(output_dir, RUN_FILE))
    return checkpoint


def _check_same_mixer(record: dict, checkpoint: str) -> None:
    """A checkpoint of another `--mixup` holds other modules (keys): refuse it in one line, naming both mixers."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), RUN_FILE)
    try:
        with open(path) as f:
            before = json.load(f).get("mixup")
    except (OSError, ValueError, AttributeError):
        return  # no record of the run that wrote it: Trainer's own loading checks the keys
    if before is not None and "mixup" in record and before != record["mixup"]:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: it was written by a --mixup {before} run ({path}), this run is "
            f"--mixup {record['mixup']}: their model keys differ (mixer modules). Resume with --mixup {before}, or "
            "start from its weights with --model_name_or_path on an export instead."
        )


def _run_folder_checkpoint(path: str) -> str | None:
    """`--resume_from_checkpoint RUN_FOLDER` (a folder of `checkpoint-N`, not one): its last complete checkpoint."""
    if not os.path.isdir(path) or _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(path))):
        return None
    if os.path.isfile(os.path.join(path, COMPLETE_FILE)) or not checkpoint_dirs(path):
        return None
    checkpoint = last_complete_checkpoint(path)
    if checkpoint is None:
        raise ValueError(f"--resume_from_checkpoint {path!r}: that run folder holds no complete checkpoint.")
    logger.warning("--resume_from_checkpoint %s is a run folder: resuming from %s.", path, checkpoint)
    return checkpoint


def _check_same_run(output_dir: str, record: dict, checkpoint: str, *, strict: bool = True) -> None:
    """Refuse (`strict`: the implicit re-run of a command) or warn (an explicit --resume_from_checkpoint True:
    extending a run with more steps is the common case) when the arguments differ from those of the run."""
    path = os.path.join(output_dir, RUN_FILE)
    if not os.path.isfile(path):
        logger.warning(
            "%s has no %s: cannot check that it was trained with the same arguments.", output_dir, RUN_FILE
        )
        return
    with open(path) as f:
        before = json.load(f)
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


# ---------------------------------------------------------------------------------------------------------------
# Before training: can the results be written at all?
# ---------------------------------------------------------------------------------------------------------------
def check_output_dir(output_dir: str, needed_bytes: int) -> None:
    """Raise a clear OSError now, rather than after training, when `output_dir` cannot be written or lacks
    `needed_bytes` of free space."""
    import shutil
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
