"""One run at a time in an output folder: an exclusive lock on `output_dir/LOCK_FILE`, which holds the PID of the run.

Two runs writing one `--output_dir` would mix their checkpoints and the second's export would silently replace the
first's. `lock_output_dir` takes an `fcntl.flock` lock on the lock file (the kernel releases it when the process
ends, however it ends, so the lock of a killed run is stale and simply taken over) and writes the PID into it; the
lock file is removed when the process exits normally. A second run refuses with an `OSError` naming the holder's PID.
Under DDP only the main process locks. POSIX only (no `fcntl` elsewhere: no lock there, with a warning).
"""

from __future__ import annotations

import atexit
import logging
import os

logger = logging.getLogger(__name__)

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
