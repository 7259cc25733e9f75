"""Smoke runs of the documented scripts: `HF_ADAUTOMIX_SMOKE=1` caps their work, for the test that runs the docs.

`tests/test_docs.py` executes every shell block of README.md and docs/*.md as written. To fit that into the test
suite, each script of `examples/` and `benchmarks/` passes its command line through `smoke_argv` with the caps
that make it cheap (a few steps, a few samples, one round, two corruptions); with the variable set, the caps are
appended to the command line, so they win over the same flags given earlier (argparse and `HfArgumentParser` keep
the last value of a repeated flag) and every other flag is parsed, checked and used as given. A smoke run says so
in one warning line; its numbers mean nothing. Without the variable (users never set it), nothing changes.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Sequence

ENV = "HF_ADAUTOMIX_SMOKE"

logger = logging.getLogger(__name__)


def smoke_run() -> bool:
    """Whether `HF_ADAUTOMIX_SMOKE` asks for smoke runs (set and not 0/false/no/empty)."""
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def smoke_argv(argv: Sequence[str], caps: Sequence[str], script: str = "this script") -> list[str]:
    """`argv` with `caps` (flags and values) appended in a smoke run, else `argv` unchanged."""
    argv = list(argv)
    if not smoke_run():
        return argv
    logger.warning(
        "%s=1: smoke run of %s (capped by %s); its results mean nothing.", ENV, script, shlex.join(caps)
    )
    return argv + list(caps)
