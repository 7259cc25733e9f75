"""A warm `python` for tests/test_docs.py: the docs' `python <script>.py ...` commands without the import time.

A smoke run of a documented script takes about 6.5 s on this project's 2-core machine, 4.9 s of it importing torch,
transformers, datasets, accelerate, timm and hf_adautomix. The docs run about forty of them, so the imports alone
would take minutes of the suite's 10. `start_server` starts one process per doc sandbox (with that sandbox's
environment, so import-time settings such as HF_HOME match) that imports them once and then forks a child per
command. `install_shim` puts an executable `python` first on the PATH of the docs' shell. It sends its arguments,
working folder, environment and stdin/stdout/stderr to the server, and exits with the child's exit code. The
child takes over the three streams, the folder, the environment and `sys.argv`. It runs the script as `__main__`,
runs the `atexit` handlers (the output-folder lock) and exits.

Only `python <existing file>.py ...` is forwarded. Anything else (`python -m ...`, `python -c ...`), launchers
(`accelerate launch`, `torchrun`) and the processes the scripts start themselves run the real interpreter.
Without the server (the variable unset), the shim is the real interpreter.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

SOCKET_VAR = "HF_ADAUTOMIX_DOCS_PYTHON"

SHIM = """#!{python} -S
import json, os, socket, struct, sys

REAL = {python!r}
args, sock = sys.argv[1:], os.environ.get({var!r})
if not (sock and args and args[0].endswith(".py") and os.path.isfile(args[0])):
    os.execv(REAL, [REAL, *args])
request = json.dumps({{"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
    s.connect(sock)
    socket.send_fds(s, [struct.pack("!I", len(request)) + request], [0, 1, 2])
    reply = b""
    while len(reply) < 4:
        chunk = s.recv(4 - len(reply))
        if not chunk:
            break
        reply += chunk
sys.exit(struct.unpack("!i", reply)[0] if len(reply) == 4 else 1)
"""

SERVER = r"""
import atexit, json, os, runpy, signal, socket, struct, sys, traceback

import accelerate, datasets, timm, torch, transformers, transformers.trainer  # noqa: F401  the imports to share
import hf_adautomix, hf_adautomix.trainer  # noqa: F401

def recv_exact(conn, n, first=b""):
    data = first
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

def child(conn, fds, head):
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    (size,) = struct.unpack("!I", head[:4])
    request = json.loads(recv_exact(conn, size, head[4:]))
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            code = exit.code or 0
        else:
            print(exit.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        try:
            conn.sendall(struct.pack("!i", code))
        finally:
            os._exit(code)

def serve(path):
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".tmp")
    server.listen(64)
    os.rename(path + ".tmp", path)  # ready
    while True:
        conn, _ = server.accept()
        head, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            server.close()
            child(conn, fds, head)
        for fd in fds:
            os.close(fd)
        conn.close()

serve(sys.argv[1])
"""


def install_shim(folder: Path) -> Path:
    """An executable `python` in `folder` (put it first on PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "python"
    shim.write_text(SHIM.format(python=sys.executable, var=SOCKET_VAR))
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def start_server(sock: Path, env: dict[str, str], log: Path, timeout: float = 180.0) -> subprocess.Popen:
    """The warm interpreter, listening on `sock` once its imports are done (in its own session: kill its group to
    stop it and every command it runs)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(sock)], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the docs' warm python did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def socket_path(base: Path) -> Path:
    """A short path for the socket (AF_UNIX paths are limited to 107 bytes)."""
    path = base / "python.sock"
    if len(str(path)) < 100:
        return path
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"hf_adautomix_docs_{os.getpid()}_{abs(hash(base))}"
    folder.mkdir(exist_ok=True)
    return folder / "python.sock"
