"""The README's Python API example runs as written (with a shorter schedule)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_first_lines_are_the_two_commands():
    lines = README.read_text().splitlines()
    assert lines[0].strip() == 'pip install -e ".[dev]"'
    assert lines[1].strip() == "python -m pytest tests"


def test_python_api_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = next(b for b in blocks if "AdAutoMixTrainer(" in b)
    assert "num_train_epochs=5" in code and 'output_dir="out"' in code
    code = code.replace("num_train_epochs=5", "max_steps=2, use_cpu=True, report_to='none'")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "out" / "config.json").exists()
    assert "eval_ema_accuracy" in namespace["trainer"].evaluate()
