"""The habits that keep the package one concern per module (issue 16), checked on every test run: ruff (with
private-access and complexity rules), the import-linter layer contracts, the module size budget, no family
branches outside `backbones/`, and lazy submodule imports."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_adautomix"
MAX_LINES = 400
ALLOWED_LONGER: dict[str, int] = {}  # none: visualize.py (mixes) and plots.py (metrics) were split


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_ruff_clean():
    ruff = shutil.which("ruff")
    assert ruff, "ruff is part of the [dev] extra: pip install -e '.[dev]'"
    out = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_layers():
    linter = shutil.which("lint-imports")
    assert linter, "import-linter is part of the [dev] extra: pip install -e '.[dev]'"
    out = subprocess.run([linter], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_small_and_says_its_concern(path):
    lines = path.read_text().count("\n")
    assert lines <= ALLOWED_LONGER.get(path.name, MAX_LINES), f"{path.name}: {lines} lines"
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path.name} has no opening docstring"


FAMILY_BRANCH = re.compile(
    r"family\s*[!=]=|isinstance\([^)]*\b(PreTrainedModel|TimmWrapper\w*|timm\.|transformers\.)"
    r"|hasattr\([^)]*['\"](pretrained_cfg|forward_head|timm_model)['\"]"
)


def test_no_family_branches_outside_backbones():
    offending = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in _modules()
        if "backbones" not in path.parts
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if FAMILY_BRANCH.search(line)
    ]
    assert not offending, "model-family knowledge outside backbones/:\n" + "\n".join(offending)


def test_family_grep_catches_a_planted_branch():
    assert FAMILY_BRANCH.search('if adapter.family == "timm":')
    assert FAMILY_BRANCH.search("if isinstance(model, PreTrainedModel):")
    assert FAMILY_BRANCH.search('if hasattr(model, "pretrained_cfg"):')
    assert not FAMILY_BRANCH.search("family=adapter.family,")


def test_mixers_import_without_trainer_or_datasets():
    code = (
        "import sys, hf_adautomix.mixers\n"
        "heavy = [m for m in ('transformers.trainer', 'datasets') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import hf_adautomix.mixers pulled in {out.stdout.strip()}"


def test_package_import_registers_cifar_variants():
    code = "import timm, hf_adautomix\nprint(timm.is_model('resnet18_cifar'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
