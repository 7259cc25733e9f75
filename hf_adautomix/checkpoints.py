"""Checkpoints that survive a kill, and finding the last one that is whole.

Trainer writes `checkpoint-N/` file by file, so a kill during a save leaves a folder that looks like a checkpoint
but is not. `AdAutoMixTrainer` finishes every save by writing `COMPLETE_FILE` (the name, size and SHA-256 of every
file, written once the files are fsynced, to a temporary name and renamed, so it is there whole or not at all) and
only then deletes older checkpoints. A checkpoint is *complete* when that file is there and every file it lists has
its size and hash.

A save that fails (a full disk) is one `OSError` naming the checkpoint and the last complete one (`save_failed`).
Divergence is `NonFiniteError`, raised by the non-finite guard, which points back to the last complete checkpoint,
and by the export, which never writes non-finite weights. What a re-run does with the checkpoints of its output
folder is `run_folder`'s concern.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re

import torch

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


def checkpoint_to_resume(
    resume: str | bool | None, output_dir: str, model: torch.nn.Module | None = None
) -> str | None:
    """What `train(resume_from_checkpoint=resume)` resumes from: for True the last *complete* checkpoint in
    `output_dir` (skipping, with a warning, any that an interrupted save left), a named checkpoint (or a run
    folder's last one) once `check_resumable` passed it, else None. With `model`, a checkpoint whose weights are
    not that model's (another mixer's) is refused in one line (`check_same_keys`)."""
    if resume is True:
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise ValueError(
                f"resume_from_checkpoint=True: there is no complete checkpoint in {output_dir!r}."
            )
        logger.warning("Resuming from %s.", checkpoint)
    elif resume:
        checkpoint = run_folder_checkpoint(resume) or resume
        check_resumable(checkpoint)
    else:
        return None
    if model is not None:
        check_same_keys(checkpoint, model)
    return checkpoint


def run_folder_checkpoint(path: str) -> str | None:
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


def finished_state(checkpoint: str, output_dir: str):
    """The `TrainerState` and `TrainOutput` of a run that ended at `checkpoint`, for a re-run of it: the run's own
    `output_dir/trainer_state.json` and `train_results.json` when they are of that step (they hold the final log
    entry: train loss, wall time), else the checkpoint's state and its last logged loss."""
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
    final = os.path.join(output_dir, "trainer_state.json")
    if os.path.isfile(final):
        run_state = TrainerState.load_from_json(final)
        if run_state.global_step == state.global_step and len(run_state.log_history) >= len(
            state.log_history
        ):
            state = run_state
    metrics = next((dict(h) for h in reversed(state.log_history) if "train_loss" in h), None)
    if metrics is None:
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        metrics = {"train_loss": losses[-1] if losses else float("nan"), "epoch": state.epoch}
    metrics.pop("step", None)
    return state, TrainOutput(state.global_step, metrics["train_loss"], metrics)


def save_failed(err: BaseException, what: str, output_dir: str) -> OSError:
    """The one-line error for a save of `what` (a checkpoint or export folder) that failed, e.g. on a full disk:
    safetensors raises its own error type there, with the OS error in its text. Names the last complete
    checkpoint of `output_dir`, which a re-run resumes from (the failed one is incomplete and skipped)."""
    reason = " ".join(str(err).split()) or type(err).__name__
    if len(reason) > 200:
        reason = reason[:199] + "…"
    last = last_complete_checkpoint(output_dir, warn=False) if os.path.isdir(output_dir) else None
    resume = f"it resumes from {last}" if last else "it starts over (there is no complete checkpoint yet)"
    return OSError(
        f"Could not write {what} ({reason}). Free space in {output_dir} (or lower --save_total_limit), then re-run "
        f"the command: {resume}; nothing that was complete is lost."
    )


# The wrapper's step count: extra state now, a `step` buffer in checkpoints of earlier versions (both load).
_STEP_KEYS = ("_extra_state", "step")


def _prefixes(keys: set[str]) -> list[str]:
    """The modules (first two name parts) that `keys` belong to."""
    return sorted({".".join(k.split(".")[:2]) for k in keys})


def check_same_keys(checkpoint: str, model: torch.nn.Module) -> None:
    """Refuse, in one line, a checkpoint whose weights are not `model`'s (another --mixup's modules, another
    architecture): Trainer would fail in its key report, or load half of them."""
    path = os.path.join(checkpoint, "model.safetensors")
    if not os.path.isfile(path):
        return  # sharded or .bin checkpoints: Trainer's own loading reports them
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        saved = {k for k in f.keys() if k not in _STEP_KEYS}
    own = {k for k in model.state_dict() if k not in _STEP_KEYS}
    if saved != own:
        raise ValueError(
            f"Cannot resume from {checkpoint}: its weights are not this model's (only there: "
            f"{_prefixes(saved - own)[:4] or '-'}; only here: {_prefixes(own - saved)[:4] or '-'}). It was written by "
            "a run with another --mixup or model; resume with that one, or start from an export with "
            "--model_name_or_path."
        )
