"""The benchmark scripts run end to end on tiny settings and report what they claim (they are measured in
docs/benchmarks.md, never asserted for speed here)."""

import importlib.util
import json
import os
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_cost_ratios(tmp_path):
    step_cost = load("step_cost")
    only = ["none", "mixup", "adautomix N=3 per-pass"]
    args = ["--threads", "1", "--only", *only, "--steps", "1", "--rounds", "1", "--warmup", "1"]
    step_cost.main([*args, "--mem_steps", "1", "--batch_size", "4", "--width", "4", "--out", str(tmp_path)])
    rows = {r["variant"]: r for r in json.loads((tmp_path / "step_cost_cpu_only.json").read_text())["rows"]}
    assert set(rows) == set(only)
    assert rows["none"]["flops_x_none"] == 1.0
    assert rows["mixup"]["flops_x_none"] == pytest.approx(1.0, abs=0.02)
    assert 3.5 < rows["adautomix N=3 per-pass"]["flops_x_none"] < 4.5  # three online passes + the teacher's
    assert all(r["ms_per_step"] > 0 and r["peak_mib"] > 0 for r in rows.values())


def test_accuracy_matrix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    accuracy = load("accuracy")
    argv = ["--mixers", "none,mixup", "--seeds", "0", "--jobs", "2", "--threads", "1"]
    argv += ["--runs_dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--"]
    argv += ["--max_train_samples", "64", "--max_eval_samples", "32", "--num_train_epochs", "2"]
    # The last flag wins over the matrix's default batch of 100.
    argv += ["--per_device_train_batch_size", "16"]
    accuracy.main(argv)
    result = json.loads((tmp_path / "out" / "accuracy.json").read_text())
    assert set(result["runs"]) == {"none", "mixup"}
    for rows in result["runs"].values():
        (row,) = rows
        assert 0 <= row["online_top1"] <= 1 and 0 <= row["ema_top1"] <= 1
        state = json.loads((Path(row["output_dir"]) / "trainer_state.json").read_text())
        assert state["global_step"] == 8  # 64 rows / 16, 2 epochs
    table = (tmp_path / "out" / "accuracy.md").read_text()
    assert "| none | 1 |" in table and "| mixup | 1 |" in table
    # Re-running completes the matrix without training again.
    log = tmp_path / "runs" / "none_seed0" / "accuracy_run.log"
    before = os.stat(log).st_mtime_ns
    accuracy.main(argv)
    assert os.stat(log).st_mtime_ns == before


def test_data_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    for name, n in (("train", 120), ("test", 40)):
        images = [PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
        ds = datasets.Dataset.from_dict({"img": images, "label": [i % 10 for i in range(n)]}, features)
        ds.to_parquet(tmp_path / f"{name}.parquet")
    data_path = load("data_path")
    argv = ["--train_file", str(tmp_path / "train.parquet"), "--eval_file", str(tmp_path / "test.parquet")]
    argv += ["--only", "plain loop", "api raw images", 'api with_format("torch")', "--threads", "1"]
    argv += ["--train_samples", "100", "--steps", "2", "--warmup", "1", "--repeats", "1"]
    argv += ["--whole_steps", "0"]
    data_path.main([*argv, "--width", "4", "--batch_size", "20", "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "data_path_cpu.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["plain loop"]["x_plain"] == 1.0
    assert rows["api raw images"]["dataset"] == "InMemoryImages"
    assert rows['api with_format("torch")']["dataset"] == "InMemoryImages"
    assert all(r["ms_per_step"] > 0 for r in rows.values())
    assert rows["api raw images"]["bound_by"] in ("data loader", "model step")
