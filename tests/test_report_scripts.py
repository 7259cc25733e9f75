"""examples/plot_training.py and examples/compare_runs.py on fabricated run folders (the layouts of a real
`run_image_classification.py` run and of `evaluate_robustness`), run as subprocesses like a user would."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADS = ("", "ema_", "mix_head_", "ema_mix_head_")


def _eval_entry(prefix: str, acc: float, step: int, epoch: float) -> dict:
    p = f"eval_{prefix}"
    return {
        f"{p}loss": 2.0 - acc,
        f"{p}accuracy": acc,
        f"{p}top5_accuracy": min(1.0, acc + 0.3),
        f"{p}nll": 2.0 - acc,
        f"{p}ece": 0.5 - acc / 2,
        f"{p}runtime": 1.5,
        f"{p}samples_per_second": 240.0,
        f"{p}steps_per_second": 1.3,
        "epoch": epoch,
        "step": step,
    }


def _train_entry(mixer: str, step: int) -> dict:
    entry = {
        "loss": 3.0 / step,
        "grad_norm": 2.0,
        "learning_rate": 0.1 / step,
        "epoch": step / 8,
        "step": step,
    }
    if mixer == "adautomix":
        entry.update(
            train_adversarial=0.4,
            train_cos_sim=0.89,
            train_lam_1=0.25,
            train_loss_classifier=3.0 / step,
            train_loss_gen=3.5,
            train_loss_one=1.7,
            train_loss_teacher=2.6,
            train_loss_theta=1.5,
            train_loss_van=3.5,
            train_mask_entropy=1.1,
            train_mask_lam_gap=0.09,
            train_mask_mean_1=0.33,
            train_n_mix=3,
            train_loss_total=7.7,
            ema_momentum=0.8,
            generator_lr=0.08 / step,
        )
    elif mixer == "mixup":
        entry.update(train_lam_1=0.4, ema_momentum=0.99)
    return entry


def make_run(folder, mixer: str, acc: float, ema_acc: float | None, robustness: dict | None):
    """A run folder as `run_image_classification.py` leaves it: trainer_state.json, all_results.json,
    hf_adautomix_run.json, and optionally robustness/robustness.json."""
    os.makedirs(folder)
    heads = HEADS[:2] if ema_acc is not None else HEADS[:1]
    if mixer == "adautomix":
        heads = HEADS
    history = []
    for step in (5, 10, 15, 20):
        history.append(_train_entry(mixer, step))
        if step % 10 == 0:
            history += [_eval_entry(h, acc if "ema" not in h else ema_acc, step, step / 8) for h in heads]
    history.append(
        {
            "epoch": 2.5,
            "step": 20,
            "total_flos": 1.0,
            "train_loss": 2.0,
            "train_runtime": 9.0,
            "train_samples_per_second": 50.0,
            "train_steps_per_second": 2.0,
        }
    )
    state = {"best_metric": None, "epoch": 2.5, "global_step": 20, "log_history": history, "max_steps": 20}
    with open(os.path.join(folder, "trainer_state.json"), "w") as f:
        json.dump(state, f)
    results = {"epoch": 2.5, "total_flos": 1.0, "train_loss": 2.0, "train_runtime": 9.0}
    for h in heads:
        e = _eval_entry(h, acc if "ema" not in h else ema_acc, 20, 2.5)
        results.update({k: v for k, v in e.items() if k.startswith("eval_")})
    with open(os.path.join(folder, "all_results.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(folder, "hf_adautomix_run.json"), "w") as f:
        json.dump(
            {
                "mixup": mixer,
                "adautomix_variant": "released",
                "model_name_or_path": None,
                "model_type": "resnet",
                "timm_model": None,
            },
            f,
        )
    if robustness is not None:
        os.makedirs(os.path.join(folder, "robustness"))
        with open(os.path.join(folder, "robustness", "robustness.json"), "w") as f:
            json.dump(robustness, f)


def robustness_results(corr_err: float, fgsm_err: float, occ: dict[str, float]) -> dict:
    """The layout `evaluate_robustness` writes (two corruptions, two severities)."""
    return {
        "model": "out",
        "num_samples": 36,
        "clean": {"accuracy": 0.5, "top5_accuracy": 0.9, "nll": 1.2, "ece": 0.1},
        "corruptions": {
            "params": "cifar",
            "error": {
                "gaussian_noise": {"1": corr_err, "2": corr_err},
                "contrast": {"1": corr_err, "2": corr_err},
            },
            "type_mean_error": {"gaussian_noise": corr_err, "contrast": corr_err},
            "severity_mean_error": {"1": corr_err, "2": corr_err},
            "mean_error": corr_err,
            "mean_accuracy": 1 - corr_err,
        },
        "fgsm": {"epsilon": 8 / 255, "error": fgsm_err, "accuracy": 1 - fgsm_err, "nll": 3.0},
        "occlusion": {"patch_size": 16, "fill": "black", "accuracy": occ},
        "files": {"json": "robustness.json"},
    }


def load_script(name: str):
    """An example script as a module (its `main(argv)`), for the cases that need no fresh interpreter."""
    spec = importlib.util.spec_from_file_location(
        name.removesuffix(".py"), os.path.join(ROOT, "examples", name)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    cmd = [sys.executable, os.path.join(ROOT, "examples", name), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def assert_png(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC, path
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert width > 100 and height > 100


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_run(root / "none", "none", 0.40, None, None)
    make_run(
        root / "mixup",
        "mixup",
        0.50,
        0.52,
        robustness_results(0.45, 0.80, {"0": 0.50, "0.5": 0.30, "0.9": 0.10}),
    )
    make_run(
        root / "adautomix", "adautomix", 0.60, 0.625, robustness_results(0.35, 0.70, {"0": 0.60, "0.5": 0.40})
    )
    return root


class TestTrainingCurves:
    def test_panels_of_adautomix(self, runs):
        from hf_adautomix.plots import training_curves

        with open(runs / "adautomix" / "trainer_state.json") as f:
            panels = training_curves(json.load(f)["log_history"])
        # Training panels first, then one per eval metric; eval loss is the NLL again and not drawn twice.
        assert list(panels) == [
            "training losses",
            "λ",
            "mask statistics",
            "other training statistics",
            "EMA momentum",
            "learning rates",
            "gradient norm",
            "eval top-1 accuracy",
            "eval top-5 accuracy",
            "eval NLL",
            "eval ECE",
        ]
        assert set(panels["eval top-1 accuracy"]) == {"online", "EMA", "mix head", "EMA mix head"}
        assert set(panels["learning rates"]) == {"learning_rate", "generator_lr"}
        assert panels["eval top-1 accuracy"]["EMA"] == ([10.0, 20.0], [0.625, 0.625])
        # The summary entry (train_runtime, train_loss) is not a point of a curve.
        assert panels["training losses"]["loss"][0] == [5.0, 10.0, 15.0, 20.0]
        assert not any("runtime" in n or "per_second" in n for c in panels.values() for n in c)

    def test_no_curve_is_an_error(self):
        from hf_adautomix.plots import save_training_plot

        with pytest.raises(ValueError, match="found none to plot"):
            save_training_plot([{"step": 1, "epoch": 0.1}], "unused.png")

    def test_script(self, runs, tmp_path):
        # As a user runs it: a checkpoint's trainer_state.json, to --out; prints the path.
        out = tmp_path / "sub" / "curves.png"
        proc = run_script(
            "plot_training.py", str(runs / "adautomix" / "trainer_state.json"), "--out", str(out)
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(out)
        assert_png(out)

    def test_plain_run_and_missing_state(self, runs, tmp_path, capsys):
        # A run without mixer terms (no λ, mask or EMA panels): written next to its state.
        path = load_script("plot_training.py").main([str(runs / "none")])
        assert path == str(runs / "none" / "training_curves.png")
        assert capsys.readouterr().out.strip() == path
        assert_png(path)
        with pytest.raises(FileNotFoundError, match="No trainer_state.json"):
            load_script("plot_training.py").main([str(tmp_path / "nowhere")])


def _table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


class TestCompareRuns:
    def test_table_and_figure(self, runs, tmp_path):
        out = tmp_path / "cmp"
        proc = run_script(
            "compare_runs.py",
            str(runs / "none"),
            str(runs / "mixup"),
            str(runs / "adautomix"),
            "--out_dir",
            str(out),
        )
        assert proc.returncode == 0, proc.stderr
        assert_png(out / "comparison.png")
        markdown = (out / "comparison.md").read_text()
        assert _table_rows(markdown) == _table_rows(proc.stdout)[: len(_table_rows(markdown))]
        header, _, *rows = _table_rows(markdown)
        assert [r[0] for r in rows] == ["none", "mixup", "adautomix"]
        table = {r[0]: dict(zip(header, r)) for r in rows}
        assert table["adautomix"]["mixer"] == "adautomix"
        assert table["adautomix"]["model"] == "resnet (random init)"
        assert table["adautomix"]["top-1 (%)"] == "60.00"
        assert table["adautomix"]["EMA top-1 (%)"] == "62.50"
        assert table["adautomix"]["top-5 (%)"] == "90.00"
        assert table["adautomix"]["NLL"] == "1.4000"
        assert table["adautomix"]["ECE (%)"] == "20.00"
        assert table["adautomix"]["corruption error (%)"] == "35.00"
        assert table["adautomix"]["FGSM error (%)"] == "70.00"
        assert table["adautomix"]["occlusion 50% top-1 (%)"] == "40.00"
        assert table["adautomix"]["occlusion 90% top-1 (%)"] == "-"
        assert table["mixup"]["occlusion 90% top-1 (%)"] == "10.00"
        # The run without EMA head or robustness results: dashes, not errors.
        assert table["none"]["top-1 (%)"] == "40.00"
        assert table["none"]["EMA top-1 (%)"] == "-"
        assert table["none"]["corruption error (%)"] == "-" and table["none"]["FGSM error (%)"] == "-"
        data = json.loads((out / "comparison.json").read_text())
        assert [r["name"] for r in data] == ["none", "mixup", "adautomix"]

    def test_robustness_dirs_and_bare_folders(self, runs, tmp_path, capsys):
        # A folder with nothing in it (named by its folder), and robustness taken from --robustness_dirs.
        compare = load_script("compare_runs.py")
        bare = tmp_path / "bare"
        bare.mkdir()
        out = tmp_path / "cmp"
        argv = [str(bare), str(runs / "none"), "--out_dir", str(out)]
        compare.main([*argv, "--robustness_dirs", "-", str(runs / "mixup" / "robustness")])
        assert_png(out / "comparison.png")
        header, _, *rows = _table_rows((out / "comparison.md").read_text())
        table = {r[0]: dict(zip(header, r)) for r in rows}
        assert table["bare"]["mixer"] == "bare" and table["bare"]["top-1 (%)"] == "-"
        assert table["none"]["FGSM error (%)"] == "80.00"
        assert table["none"]["occlusion 90% top-1 (%)"] == "10.00"

        with pytest.raises(SystemExit):
            compare.main([*argv, "--robustness_dirs", "a"])
        assert "one entry per run" in capsys.readouterr().err
        with pytest.raises(FileNotFoundError, match="no robustness.json"):
            compare.main([*argv, "--robustness_dirs", "-", str(tmp_path)])
        with pytest.raises(FileNotFoundError, match="does not exist"):
            compare.main([str(tmp_path / "nowhere")])


def test_figures_keep_their_old_import_path():
    """The figures of metrics moved from `visualize` to `plots`; `hf_adautomix.visualize.<figure>` still works."""
    from hf_adautomix import plots, visualize

    assert visualize.save_training_plot is plots.save_training_plot
    assert visualize.save_reliability_diagram is plots.save_reliability_diagram
    with pytest.raises(AttributeError):
        visualize.no_such_figure  # noqa: B018
