"""Faults injected into real training processes: kill -9 during a step and during a checkpoint save, divergence,
broken checkpoints, re-runs of a command, a read-only or full output folder, a last batch of one, secrets.

Each test asserts the exit code, the one-line error and what is left on disk. Runs go through the real script
(`examples/run_image_classification.py`) on the embedded digits with the default (random crop + flip)
augmentation, so "exact resume" here covers the augmentation pipeline, not only tensors.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli import ROOT, SCRIPT, TINY_RESNET_ARGS

from hf_adautomix.checkpoints import COMPLETE_FILE
from hf_adautomix.run_folder import RUN_FILE

# 6 steps an epoch (48 rows, batch 8); 8 steps cross the epoch boundary, where the default evaluation runs.
RUN = [
    *TINY_RESNET_ARGS,
    "--max_train_samples",
    "48",
    "--max_eval_samples",
    "16",
    "--per_device_train_batch_size",
    "8",
    "--max_steps",
    "8",
    "--save_strategy",
    "steps",
    "--save_steps",
    "3",
    "--logging_steps",
    "1",
    "--disable_tqdm",
    "True",
    "--use_cpu",
    "True",
    "--save_mix_every",
    "0",
    "--seed",
    "7",
]
RUNNER = ROOT / "tests" / "fault_runner.py"
TIMEOUT = 300


def env(tmp: Path, **extra) -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp / "hf"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def run(args, out: Path, *, fault=None, launcher=None, **extra_env) -> subprocess.CompletedProcess:
    if fault is not None:
        cmd = [sys.executable, str(RUNNER), fault[0], str(fault[1]), "--"]
    else:
        cmd = [*(launcher or [sys.executable]), str(SCRIPT)]
    return subprocess.run(
        [*cmd, *args, "--output_dir", str(out)],
        env=env(out.parent, **extra_env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `error: ...` line the script ends with (tqdm may still write after it)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return lines[0]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_FILE).is_file()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted adautomix runs: 8 steps, checkpoints at 3 and 6."""
    out = tmp_path_factory.mktemp("reference") / "out"
    ok(run([*RUN, "--mixup", "adautomix"], out))
    return out


# -- kills ---------------------------------------------------------------------------------------------------------
def test_kill_during_a_step_then_rerun_resumes_bitwise(reference, tmp_path):
    out = tmp_path / "out"
    killed = run([*RUN, "--mixup", "adautomix"], out, fault=("kill_in_step", 5))
    assert killed.returncode == -9
    assert complete(out / "checkpoint-3") and not (out / "model.safetensors").exists()

    rerun = ok(run([*RUN, "--mixup", "adautomix"], out))  # the same command, nothing added
    assert f"Resuming from {out / 'checkpoint-3'}" in rerun.stdout + rerun.stderr
    assert_same_weights(weights(out), weights(reference))


def test_kill_during_a_checkpoint_save_leaves_the_previous_one_whole(reference, tmp_path):
    out = tmp_path / "out"
    killed = run([*RUN, "--mixup", "adautomix", "--save_total_limit", "1"], out, fault=("kill_in_save", 6))
    assert killed.returncode == -9
    # checkpoint-6 was being written: weights on disk, no optimizer state, not marked complete; with
    # --save_total_limit 1 the old checkpoint-3 must still be there, whole.
    assert (out / "checkpoint-6" / "model.safetensors").is_file() and not complete(out / "checkpoint-6")
    assert complete(out / "checkpoint-3")

    explicit = run([*RUN, "--mixup", "adautomix", "--resume_from_checkpoint", str(out / "checkpoint-6")], out)
    assert explicit.returncode == 1
    line = error_line(explicit)
    assert "checkpoint-6" in line and "incomplete" in line and str(out / "checkpoint-3") in line

    rerun = ok(run([*RUN, "--mixup", "adautomix", "--save_total_limit", "1"], out))
    logs = rerun.stdout + rerun.stderr
    assert f"Skipping checkpoint {out / 'checkpoint-6'}: it is incomplete" in logs
    assert f"Resuming from {out / 'checkpoint-3'}" in logs
    assert_same_weights(weights(out), weights(reference))
    # the last save (at max_steps) rotated out everything else
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-8"] and complete(
        out / "checkpoint-8"
    )


# -- exact resume with the default augmentation ---------------------------------------------------------------------
def test_resume_at_the_epoch_boundary_is_bitwise(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    ok(run([*RUN, "--mixup", "adautomix", "--resume_from_checkpoint", str(out / "checkpoint-6")], out))
    assert_same_weights(weights(out), weights(reference))


@pytest.mark.parametrize("mixup,resume", [("none", ["--resume_from_checkpoint", "True"]), ("cutmix", [])])
def test_resume_mid_epoch_is_bitwise(mixup, resume, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    ok(run([*RUN, "--mixup", mixup], ref))
    shutil.copytree(ref, out)
    for later in ("checkpoint-6", "checkpoint-8", "model.safetensors"):
        shutil.rmtree(out / later) if (out / later).is_dir() else (out / later).unlink()
    proc = ok(run([*RUN, "--mixup", mixup, *resume], out))  # the last complete checkpoint is checkpoint-3
    assert f"Resuming from {out / 'checkpoint-3'}" in proc.stdout + proc.stderr
    assert_same_weights(weights(out), weights(ref))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerunning_a_finished_command_changes_nothing(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = _files(out)
    proc = ok(run([*RUN, "--mixup", "adautomix"], out))
    assert "holds this command's finished run" in proc.stdout + proc.stderr
    # Was: the same weights, but log_history emptied, "train_loss": NaN in the results, no wall time in the card.
    assert _files(out) == before


def test_rerunning_a_finished_command_without_checkpoints_changes_nothing(tmp_path):
    """The script's default saves no checkpoint: a re-run of the same command is still a no-op (it used to train
    the whole run again and rewrite every file), while other arguments train again."""
    drop = {"--save_strategy", "--save_steps", "--max_steps"}
    pairs = [RUN[i : i + 2] for i in range(len(TINY_RESNET_ARGS), len(RUN), 2)]
    args = [*TINY_RESNET_ARGS, *(a for pair in pairs if pair[0] not in drop for a in pair)]
    args += ["--save_strategy", "no", "--max_steps", "4", "--mixup", "none"]
    out = tmp_path / "out"
    ok(run(args, out))
    before = _files(out)
    assert not list(out.glob("checkpoint-*")) and before
    proc = ok(run(args, out))
    assert "holds this command's finished run" in proc.stdout + proc.stderr
    assert _files(out) == before
    proc = ok(run([*args, "--learning_rate", "0.01"], out))
    assert "holds this command's finished run" not in proc.stdout + proc.stderr
    assert json.loads((out / "hf_adautomix_run.json").read_text())["learning_rate"] == 0.01


def test_rerun_after_a_kill_between_the_last_checkpoint_and_the_export_finishes_the_run(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    for name in ("all_results.json", "eval_results.json", "README.md", "config.json", "model.safetensors"):
        (out / name).unlink()  # as if killed after checkpoint-8 was marked complete
    proc = ok(run([*RUN, "--mixup", "adautomix"], out))
    assert "is the end of training: nothing left to train" in proc.stdout + proc.stderr
    assert_same_weights(weights(out), weights(reference))
    results = json.loads((out / "all_results.json").read_text())
    expected = json.loads((reference / "all_results.json").read_text())
    assert results["train_loss"] == expected["train_loss"] and math.isfinite(results["train_loss"])
    assert results["train_runtime"] == expected["train_runtime"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert (
        state["log_history"]
        and state["log_history"][:-1]
        == json.loads((reference / "trainer_state.json").read_text())["log_history"][:-1]
    )
    card = (out / "README.md").read_text()
    assert f"training wall time {expected['train_runtime']:.0f} s" in card


def test_disk_full_during_a_checkpoint_save_is_one_line_and_the_rerun_resumes(reference, tmp_path):
    out = tmp_path / "out"
    full = run([*RUN, "--mixup", "adautomix"], out, fault=("disk_full_in_save", 6))
    assert full.returncode == 1
    line = error_line(full)  # was a 39-line SafetensorError traceback
    assert f"Could not write {out / 'checkpoint-6'}" in line and "No space left on device" in line
    assert f"it resumes from {out / 'checkpoint-3'}" in line
    assert complete(out / "checkpoint-3") and not complete(out / "checkpoint-6")
    rerun = ok(run([*RUN, "--mixup", "adautomix"], out))
    assert f"Resuming from {out / 'checkpoint-3'}" in rerun.stdout + rerun.stderr
    assert_same_weights(weights(out), weights(reference))


def test_resume_is_bitwise_with_two_processes(tmp_path):
    from transformers.testing_utils import get_torch_dist_unique_port

    def torchrun():
        port = str(get_torch_dist_unique_port())
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]

    args = [*RUN, "--mixup", "adautomix", "--max_train_samples", "96", "--dataloader_num_workers", "0"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    ok(run(args, ref, launcher=torchrun()))
    shutil.copytree(ref, out)
    ok(run([*args, "--resume_from_checkpoint", str(out / "checkpoint-3")], out, launcher=torchrun()))
    assert_same_weights(weights(out), weights(ref))


# -- broken checkpoints and re-runs ---------------------------------------------------------------------------------
def test_truncated_checkpoint_is_named_and_skipped(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "checkpoint-8")  # as if the run had been killed after step 6
    model_file = out / "checkpoint-6" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:1000])

    explicit = run([*RUN, "--mixup", "adautomix", "--resume_from_checkpoint", str(out / "checkpoint-6")], out)
    assert explicit.returncode == 1
    line = error_line(explicit)
    assert (
        "model.safetensors is 1000 bytes" in line and f"{out / 'checkpoint-3'}: resume from that one" in line
    )

    rerun = ok(run([*RUN, "--mixup", "adautomix"], out))
    assert (
        f"Skipping checkpoint {out / 'checkpoint-6'}: model.safetensors is 1000 bytes"
        in rerun.stdout + rerun.stderr
    )
    assert_same_weights(weights(out), weights(reference))


def test_rerun_with_other_arguments_is_refused(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = sorted(p.name for p in out.iterdir())
    proc = run([*RUN, "--mixup", "adautomix", "--learning_rate", "0.05"], out)
    assert proc.returncode == 1
    line = error_line(proc)
    assert "--learning_rate 0.1 there, 0.05 now" in line and "--resume_from_checkpoint False" in line
    assert sorted(p.name for p in out.iterdir()) == before  # nothing touched


def test_resume_true_without_checkpoints_is_an_error(tmp_path):
    proc = run([*RUN, "--resume_from_checkpoint", "True"], tmp_path / "out")
    assert proc.returncode == 1
    assert "no checkpoint" in error_line(proc)


def test_resume_false_starts_over(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "checkpoint-6" / "optimizer.pt").unlink()  # would fail a resume
    proc = ok(run([*RUN, "--mixup", "adautomix", "--resume_from_checkpoint", "False"], out))
    assert "deleting" in proc.stdout + proc.stderr
    assert_same_weights(weights(out), weights(reference))  # from scratch, same seed: the same model


# -- divergence -----------------------------------------------------------------------------------------------------
def test_divergence_stops_with_one_line_and_exports_nothing(tmp_path):
    out = tmp_path / "out"
    args = [*RUN, "--mixup", "adautomix", "--learning_rate", "1e6", "--max_steps", "12", "--save_steps", "2"]
    proc = run(args, out)
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.startswith("error: Training diverged at step ") and "non-finite" in line
    assert f"The last good checkpoint is {out / 'checkpoint-2'}" in line and "--max_nonfinite_steps" in line
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    for checkpoint in out.glob("checkpoint-*"):  # every checkpoint left holds finite weights
        assert complete(checkpoint)
        assert all(t.isfinite().all() for t in load_file(str(checkpoint / "model.safetensors")).values())


# -- output folder --------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_mount(tmp_path):
    """A 256 KiB tmpfs (root in CI and here: mounts are allowed); remounted read-only on request."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_read_only_output_folder_fails_before_training(tiny_mount, tmp_path):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_mount)], check=True)
    proc = run([*RUN, "--mixup", "mixup"], tiny_mount / "out")
    assert proc.returncode == 1
    line = error_line(proc)
    assert "is not writable" in line and "Read-only file system" in line
    assert "'loss'" not in proc.stdout  # not one training step


def test_full_disk_fails_before_training(tiny_mount, tmp_path):
    proc = run([*RUN, "--mixup", "mixup"], tiny_mount / "out")
    assert proc.returncode == 1
    line = error_line(proc)
    assert "MiB free" in line and "needs about" in line
    assert "'loss'" not in proc.stdout


# -- data -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mixup", ["none", "adautomix"])
def test_a_last_batch_of_one_is_dropped(mixup, tmp_path):
    out = tmp_path / "out"
    args = [
        *RUN,
        "--mixup",
        mixup,
        "--max_train_samples",
        "33",
        "--max_steps",
        "-1",
        "--num_train_epochs",
        "1",
    ]
    ok(run([*args, "--save_strategy", "epoch"], out))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # 33 rows, batch 8: 4 full batches, the 1-row one dropped


# -- secrets --------------------------------------------------------------------------------------------------------
def test_hub_token_never_reaches_disk(tmp_path, monkeypatch):
    """A planted --hub_token and HF_TOKEN appear in no file of the output folder, checkpoints or upload."""
    from unittest import mock

    from conftest import fake_hub_api
    from test_cli import load_script

    secret, env_secret = "hf_PLANTEDtoken1234567890", "hf_PLANTEDenv0987654321"
    monkeypatch.setenv("HF_TOKEN", env_secret)
    hub = tmp_path / "hub"
    out = tmp_path / "out"
    args = [*RUN, "--mixup", "adautomix", "--max_steps", "3", "--output_dir", str(out)]
    args += ["--push_to_hub", "True", "--hub_model_id", "me/tiny", "--hub_token", secret]
    args += ["--hub_strategy", "checkpoint", "--report_to", "none"]
    with mock.patch("transformers.trainer.hf_api", return_value=fake_hub_api(hub)):
        load_script().main(args)
    files = [p for root in (out, hub) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and (out / "checkpoint-3").is_dir()
    leaking = [
        str(p) for p in files if secret.encode() in p.read_bytes() or env_secret.encode() in p.read_bytes()
    ]
    assert not leaking
    assert torch.load(out / "training_args.bin", weights_only=False).hub_token is None
    assert json.loads((out / RUN_FILE).read_text()).get("hub_token") is None


# -- the Python API -------------------------------------------------------------------------------------------------
class TestNonFiniteInTheAPI:
    """`NonFiniteGuard` with NaN injected into the loss of chosen steps (1-based optimizer steps)."""

    def trainer(self, tmp_path, bad_steps, max_skips, mixup="adautomix", max_steps=6, **args):
        from conftest import make_model
        from test_trainer import targs, tensor_dataset

        from hf_adautomix import AdAutoMixTrainer, MixupArguments

        model, _ = make_model("hf_resnet")
        trainer = AdAutoMixTrainer(
            model=model,
            args=targs(
                tmp_path,
                max_steps=max_steps,
                optim="sgd",
                optim_args="momentum=0.9",
                weight_decay=1e-3,
                **args,
            ),
            mixup_args=MixupArguments(mixup=mixup, save_mix_every=0, max_nonfinite_steps=max_skips),
            train_dataset=tensor_dataset(16),
        )
        wrapper, forward = trainer.model, trainer.model.forward
        self.snapshots = {}

        def poisoned(pixel_values, labels=None):
            step = trainer.state.global_step + 1
            if wrapper.training and step in bad_steps:
                self.snapshots.setdefault(step, {k: v.clone() for k, v in wrapper.state_dict().items()})
            out = forward(pixel_values, labels)
            if wrapper.training and step in bad_steps:
                out["loss"] = out["loss"] * float("nan")
            return out

        wrapper.forward = poisoned
        return trainer

    def test_skipped_steps_change_nothing_and_are_logged(self, tmp_path):
        trainer = self.trainer(tmp_path, bad_steps={2, 4}, max_skips=2)
        seen = {}

        class After:  # state right after each optimizer step's callbacks
            def on_step_end(self, args, state, control, model=None, **kw):
                seen[state.global_step] = {k: v.clone() for k, v in model.state_dict().items()}

        from transformers import TrainerCallback

        trainer.add_callback(type("After", (After, TrainerCallback), {})())
        trainer.train()
        assert trainer.nonfinite_guard.skipped == 2
        logged = [
            h["nonfinite_steps_skipped"] for h in trainer.state.log_history if "nonfinite_steps_skipped" in h
        ]
        assert logged[-1] == 2
        # Trainer's NaN filter of the logged loss, applied on the device: every logged total loss is finite.
        history = trainer.state.log_history
        losses = [h["train_loss_total"] for h in history if "train_loss_total" in h] + [
            history[-1]["train_loss"]
        ]
        assert len(losses) > 1 and all(math.isfinite(v) for v in losses)
        assert trainer.args.logging_nan_inf_filter  # the user's flag, as it was before train()
        for step in (2, 4):
            before, after = self.snapshots[step], seen[step]
            # the classifier, the generator, the mix head and every BN statistic are as before the step; only
            # the EMA teacher (towards unchanged weights) and the step counter move on
            moved = {k for k in before if not torch.equal(before[k], after[k])}
            assert moved and all(
                k.startswith(("teacher.", "mixer.mix_head_teacher.")) or k == "_extra_state" for k in moved
            ), moved
        assert all(t.isfinite().all() for t in trainer.model.state_dict().values() if t.is_floating_point())
        trainer.save_model()  # finite: exports

    def test_one_more_than_allowed_stops_with_the_step_and_term(self, tmp_path):
        from hf_adautomix.trainer import NonFiniteError

        trainer = self.trainer(tmp_path, bad_steps={2, 3}, max_skips=1)
        with pytest.raises(NonFiniteError, match=r"diverged at step 3: non-finite loss.*no checkpoint"):
            trainer.train()

    def test_default_stops_at_the_first(self, tmp_path):
        from hf_adautomix.trainer import NonFiniteError

        trainer = self.trainer(tmp_path, bad_steps={3}, max_skips=0, mixup="none")
        with pytest.raises(NonFiniteError, match=r"diverged at step 3"):
            trainer.train()
        assert trainer.state.global_step == 2

    @pytest.mark.parametrize("restore", [False, True], ids=["default", "restore_callback_states"])
    def test_skip_count_survives_a_resume(self, tmp_path, restore):
        """--max_nonfinite_steps counts over the whole run: with 1 allowed and step 2 skipped before checkpoint-3,
        a bad step 5 after resuming from checkpoint-3 stops the run (whether or not Trainer restores callbacks)."""
        from hf_adautomix.trainer import NonFiniteError

        args = dict(save_strategy="steps", save_steps=3, restore_callback_states_from_checkpoint=restore)
        first = self.trainer(tmp_path / "first", bad_steps={2}, max_skips=1, **args)
        first.train()
        assert first.nonfinite_guard.skipped == 1
        resumed = self.trainer(tmp_path / "resumed", bad_steps={5}, max_skips=1, **args)
        with pytest.raises(NonFiniteError, match=r"diverged at step 5: non-finite loss"):
            resumed.train(resume_from_checkpoint=str(tmp_path / "first" / "checkpoint-3"))
        assert resumed.nonfinite_guard.skipped == 1
        logged = [
            h["nonfinite_steps_skipped"] for h in resumed.state.log_history if "nonfinite_steps_skipped" in h
        ]
        assert logged[-1] == 1  # the resumed run's logs continue the count

    def test_non_finite_weights_are_never_exported(self, tmp_path):
        from hf_adautomix.trainer import NonFiniteError

        trainer = self.trainer(tmp_path, bad_steps=set(), max_skips=0, mixup="none")
        with torch.no_grad():
            next(trainer.model.classifier.parameters()).fill_(float("inf"))
        with pytest.raises(NonFiniteError, match="Refusing to export the online model"):
            trainer.save_model()
        assert not (tmp_path / "model.safetensors").exists()


def test_api_labels_out_of_range_are_one_clear_error(tmp_path):
    from conftest import make_model
    from test_trainer import targs, tensor_dataset

    from hf_adautomix import AdAutoMixTrainer

    model, _ = make_model("hf_resnet", num_labels=3)  # the data has 4 classes
    with pytest.raises(ValueError, match=r"outside 0..2 \(the model has 3 classes\)"):
        AdAutoMixTrainer(model=model, args=targs(tmp_path), train_dataset=tensor_dataset(8))


def test_generator_lr_zero_freezes_the_generator(tmp_path):
    from conftest import make_model
    from test_trainer import targs, tensor_dataset

    from hf_adautomix import AdAutoMixTrainer, MixupArguments

    model, _ = make_model("hf_resnet")
    trainer = AdAutoMixTrainer(
        model=model,
        args=targs(tmp_path, max_steps=3, weight_decay=0.0),
        mixup_args=MixupArguments(
            mixup="adautomix", save_mix_every=0, generator_lr=0.0, generator_min_lr=0.0
        ),
        train_dataset=tensor_dataset(16),
    )
    before = {k: v.clone() for k, v in trainer.model.mixer.generator.state_dict().items()}
    trainer.train()
    assert trainer.optimizer.param_groups[trainer._generator_group]["initial_lr"] == 0.0
    after = trainer.model.mixer.generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_decode_error_in_a_dataloader_worker_is_one_line(tmp_path):
    """A corrupt *training* image met by a worker process during training (the up-front checks only read the
    validation images and the images sampled for the mean/std, here none: ImageNet recipe)."""
    from PIL import Image

    root = tmp_path / "data"
    for split, n in (("train", 12), ("val", 4)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (32, 32), (40 * i % 255, 90 if c == "a" else 200, 10)).save(
                    root / split / c / f"{i}.png"
                )
    bad = root / "train" / "b" / "3.png"
    bad.write_bytes(bad.read_bytes()[:60])
    args = [*TINY_RESNET_ARGS, "--train_dir", str(root / "train"), "--validation_dir", str(root / "val")]
    args += ["--transform_recipe", "imagenet", "--image_size", "32", "--dataloader_num_workers", "1"]
    args += [
        "--per_device_train_batch_size",
        "8",
        "--max_steps",
        "6",
        "--use_cpu",
        "True",
        "--disable_tqdm",
        "True",
    ]
    proc = run(args, tmp_path / "out")
    assert proc.returncode == 1
    line = error_line(proc)
    assert "Could not decode image" in line and "3.png" in line and "Caught" not in line
    assert not (tmp_path / "out" / "model.safetensors").exists()


# -- checkpoint integrity and file modes (issue 17: 1, 18) ----------------------------------------------------------
def test_same_size_damage_to_a_checkpoint_is_named_and_skipped(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "checkpoint-8")  # as if the run had been killed after step 6
    model_file = out / "checkpoint-6" / "model.safetensors"
    data = bytearray(model_file.read_bytes())
    data[-4096:] = bytes(4096)  # zeros over the last tensors' bytes: same size, header intact
    model_file.write_bytes(bytes(data))

    explicit = run([*RUN, "--mixup", "adautomix", "--resume_from_checkpoint", str(out / "checkpoint-6")], out)
    assert explicit.returncode == 1
    line = error_line(explicit)
    assert (
        "model.safetensors does not have the SHA-256" in line
        and f"{out / 'checkpoint-3'}: resume from" in line
    )

    rerun = ok(run([*RUN, "--mixup", "adautomix"], out))
    assert f"Skipping checkpoint {out / 'checkpoint-6'}: model.safetensors does not have the SHA-256" in (
        rerun.stdout + rerun.stderr
    )
    assert_same_weights(weights(out), weights(reference))


def test_markers_with_sizes_only_are_still_accepted(tmp_path):
    from hf_adautomix.checkpoints import checkpoint_problem, mark_complete

    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    (checkpoint / "optimizer.pt").write_bytes(b"x" * 100)
    mark_complete(str(checkpoint))
    record = json.loads((checkpoint / COMPLETE_FILE).read_text())
    assert len(record["sha256"]["optimizer.pt"]) == 64
    (checkpoint / COMPLETE_FILE).write_text(json.dumps({"files": record["files"]}))  # as written before
    assert checkpoint_problem(str(checkpoint)) is None
    (checkpoint / "optimizer.pt").write_bytes(b"x" * 99)
    assert "99 bytes" in checkpoint_problem(str(checkpoint))


def test_export_and_checkpoint_files_follow_the_umask(tmp_path):
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        ok(run([*RUN, "--mixup", "adautomix", "--max_steps", "3"], out))
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
    assert "model.safetensors" in modes and "checkpoint-3/model.safetensors" in modes
    assert "generator/model.safetensors" in modes
    assert {m for m in modes.values()} == {"0o644"}, modes


# -- two runs into one output folder (issue 17: 3) -----------------------------------------------------------------
def test_a_second_run_into_a_busy_output_folder_refuses_and_a_stale_lock_is_taken_over(tmp_path):
    import signal
    import time

    from hf_adautomix.run_folder import LOCK_FILE

    out = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, str(SCRIPT), *RUN, "--mixup", "mixup", "--max_steps", "99999", "--output_dir", out],
        env=env(tmp_path),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_FILE).is_file() or not (out / LOCK_FILE).read_text().strip():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        second = run([*RUN, "--mixup", "mixup", "--max_steps", "3"], out)
        assert second.returncode == 1
        assert f"is in use by another run (PID {first.pid}" in error_line(second)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / LOCK_FILE).read_text().strip() == str(first.pid)  # left behind by the killed run: stale
    ok(run([*RUN, "--mixup", "mixup", "--max_steps", "3", "--resume_from_checkpoint", "False"], out))
    assert (out / "model.safetensors").is_file() and not (out / LOCK_FILE).exists()


def test_damaged_safetensors_header_is_one_line_naming_the_checkpoint(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "checkpoint-8")
    model_file = out / "checkpoint-6" / "model.safetensors"
    data = bytearray(model_file.read_bytes())
    data[8:24] = b"#not json header"  # the JSON header, same size
    model_file.write_bytes(bytes(data))
    marker = out / "checkpoint-6" / COMPLETE_FILE  # as written before (sizes only): no hash to fail first
    marker.write_text(json.dumps({"files": json.loads(marker.read_text())["files"]}))

    explicit = run([*RUN, "--mixup", "adautomix", "--resume_from_checkpoint", str(out / "checkpoint-6")], out)
    assert explicit.returncode == 1
    line = error_line(explicit)
    assert f"{out / 'checkpoint-6'}: model.safetensors has a damaged safetensors header" in line
    assert f"{out / 'checkpoint-3'}: resume from that one" in line

    rerun = ok(run([*RUN, "--mixup", "adautomix"], out))
    logs = rerun.stdout + rerun.stderr
    assert f"Skipping checkpoint {out / 'checkpoint-6'}: model.safetensors has a damaged" in logs
    assert_same_weights(weights(out), weights(reference))


# -- explicit resumes (issue 17, items 8 and 9) ----------------------------------------------------------------------
def test_explicit_resume_with_more_steps_warns_instead_of_refusing(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    args = [*RUN, "--mixup", "adautomix", "--max_steps", "10", "--resume_from_checkpoint", "True"]
    proc = ok(run(args, out))
    log = proc.stdout + proc.stderr
    assert "changed arguments" in log and "--max_steps 8 there, 10 now" in log
    assert (out / "checkpoint-9").is_dir()  # trained on past the old run's end


def test_resume_from_the_run_folder_means_its_last_complete_checkpoint(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    proc = ok(run([*RUN, "--mixup", "adautomix", "--resume_from_checkpoint", str(out)], out))
    assert "is a run folder: resuming from" in proc.stdout + proc.stderr
    assert_same_weights(weights(out), weights(reference))


# -- the error is the last thing on the screen (issue 17, item 13) ---------------------------------------------------
def test_divergence_error_is_the_last_line_with_progress_bars(tmp_path):
    out = tmp_path / "out"
    args = [*RUN, "--mixup", "adautomix", "--learning_rate", "1e6", "--disable_tqdm", "False"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--output_dir", str(out)],
        env=env(tmp_path),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stdout.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "diverged" in lines[-1], lines[-3:]


# -- --do_train False: evaluation only (issue 17, item 23) -----------------------------------------------------------
def test_do_train_false_evaluates_only(tmp_path):
    out = tmp_path / "out"
    ok(run([*RUN, "--mixup", "adautomix", "--do_train", "False", "--do_eval", "True"], out))
    assert (out / "eval_results.json").is_file()
    assert not (out / "train_results.json").exists() and not (out / "model.safetensors").exists()
    assert not list(out.glob("checkpoint-*"))


# -- a checkpoint of another mixer (issue 17, item 10) ---------------------------------------------------------------
def test_resume_from_a_checkpoint_of_another_mixer_is_one_line(tmp_path):
    cutmix = tmp_path / "cutmix" / "out"
    ok(run([*RUN, "--mixup", "cutmix", "--max_steps", "3"], cutmix))
    proc = run(
        [*RUN, "--mixup", "adautomix", "--resume_from_checkpoint", str(cutmix / "checkpoint-3")],
        tmp_path / "out",
    )
    assert proc.returncode == 1
    line = error_line(proc)
    assert "--mixup cutmix run" in line and "--mixup adautomix" in line and "keys differ" in line
