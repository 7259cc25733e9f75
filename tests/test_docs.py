"""The shell commands of README.md and docs/*.md: portable paths, flags the scripts accept, honest provenance.

Every fenced ```bash block is parsed (continuation lines joined, `for` loops unrolled to their body); each
`python <script>` / `accelerate launch <script>` command's `--flags` are checked against the script's own `--help`
(arguments after `--` in `benchmarks/accuracy.py` go to `examples/run_image_classification.py`), so a renamed or
mistyped flag in any doc fails here. The blocks are not executed (see the docs run's report: executing them within
the suite's time budget is still open).
"""

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TRAIN = "examples/run_image_classification.py"


def bash_commands(text: str) -> list[str]:
    """The commands of every ```bash block, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"^(for .*?; do|done)\s*", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


@functools.cache
def script_flags(script: str) -> frozenset[str]:
    out = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"{script} --help failed: {out.stderr[-500:]}"
    return frozenset(re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", out.stdout))


def bad_flags(command: str) -> list[str]:
    """'script: --flag' for every flag of `command` that its script does not accept."""
    words = shlex.split(command.replace("{", "").replace("}", ""))
    scripts = [i for i, w in enumerate(words) if w.endswith(".py") and (ROOT / w).exists()]
    if not scripts:
        return []
    start = scripts[0]
    parts = [(words[start], words[start + 1 :])]
    if "--" in parts[0][1]:
        cut = parts[0][1].index("--")
        parts = [(words[start], parts[0][1][:cut]), (TRAIN, parts[0][1][cut + 1 :])]
    bad = []
    for script, args in parts:
        known = script_flags(script)
        bad += [
            f"{script}: {a.split('=')[0]}"
            for a in args
            if a.startswith("--") and a.split("=")[0] not in known
        ]
    return bad


def test_doc_commands_use_relative_paths():
    for doc in DOCS:
        for command in bash_commands(doc.read_text()):
            assert not re.search(r"(?<![\w.])/(work|home|tmp|root|mnt)/", command), f"{doc.name}: {command}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_command_flags_exist(doc):
    bad = [b for c in bash_commands(doc.read_text()) for b in bad_flags(c)]
    assert not bad, f"{doc.name}: unknown flags {bad}"


def test_a_planted_broken_flag_is_caught():
    text = (
        (ROOT / "docs" / "robustness.md")
        .read_text()
        .replace("--max_eval_samples 500", "--max_eval_sampels 500")
    )
    assert any("--max_eval_sampels" in b for c in bash_commands(text) for b in bad_flags(c))
    text = (ROOT / "README.md").read_text().replace("--mixup adautomix", "--mixup_kind adautomix", 1)
    assert any("--mixup_kind" in b for c in bash_commands(text) for b in bad_flags(c))


def test_quickstart_table_says_how_it_was_measured():
    text = (ROOT / "README.md").read_text()
    intro = text[: text.index("| `--mixup` | wall time")].rstrip().rsplit("\n\n", 1)[-1]
    for fact in ("2026-12-03", "2-core", "OMP_NUM_THREADS=1", "one run each", "other work"):
        assert fact in intro, fact


def test_push_without_network_is_described_as_it_happens():
    text = " ".join((ROOT / "README.md").read_text().split())
    assert "before any training" in text and "Cannot create the Hub repo" in text
    assert "Cannot create the Hub repo" in (ROOT / "hf_adautomix" / "hub_push.py").read_text()
