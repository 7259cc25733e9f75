"""Multi-process training (2 CPU processes, gloo DDP), gradient accumulation, bf16 autocast, and the DeepSpeed /
FSDP refusal.

The 2-process runs start tests/dist_worker.py under `python -m torch.distributed.run` or `accelerate launch
--multi_gpu` with `--use_cpu` (without it each rank silently trains alone on a GPU-less machine, hf-ecosystem
§3.2). Each rank writes its full `MixupModel.state_dict()` and what it saw to <out>/rank{r}.*; the tests compare
them. Tiny HF ResNet (conftest.TINY_RESNET, CIFAR stem), 32 in-memory samples, per-device batch 4.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_model
from test_trainer import targs, tensor_dataset
from transformers.testing_utils import get_torch_dist_unique_port

from hf_adautomix import AdAutoMixTrainer, MixupArguments

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "dist_worker.py"
TIMEOUT = 240
NUM_SAMPLES = 32
COMMON = [
    "--use_cpu",
    "True",
    "--per_device_train_batch_size",
    "4",
    "--max_steps",
    "4",
    "--logging_steps",
    "1",
    "--learning_rate",
    "0.05",
    "--report_to",
    "none",
    "--disable_tqdm",
    "True",
    "--seed",
    "0",
    "--dataloader_num_workers",
    "0",
]
REFUSAL = "DeepSpeed and FSDP are not supported"
# 4 steps with checkpoint-2 and checkpoint-4 saved on the way (AdamW + cosine: resume must restore both).
CHECKPOINTED = [
    *COMMON,
    "--save_strategy",
    "steps",
    "--save_steps",
    "2",
    "--optim",
    "adamw_torch",
    "--lr_scheduler_type",
    "cosine",
]


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        HF_HOME=str(tmp / "hf_home"),
    )
    return env


def _launch(launcher: list[str], out: Path, args: list[str]) -> Path:
    proc = subprocess.run(
        [*launcher, str(WORKER), "--output_dir", str(out), *args],
        cwd=ROOT,
        env=_env(out.parent),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"workers failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    )
    return out


def torchrun(out: Path, args: list[str]) -> Path:
    port = str(get_torch_dist_unique_port())
    return _launch(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port],
        out,
        args,
    )


def accelerate_launch(out: Path, args: list[str]) -> Path:
    port = str(get_torch_dist_unique_port())
    return _launch(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--main_process_port",
            port,
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ],
        out,
        args,
    )


def load_rank(out: Path, rank: int) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    return load_file(str(out / f"rank{rank}.safetensors")), json.loads((out / f"rank{rank}.json").read_text())


def is_bn_running_stat(key: str) -> bool:
    return key.endswith(("running_mean", "running_var"))


# Evaluations at steps 2 and 4 (16 rows: 8 per rank).
EVALUATED = ["--eval_strategy", "steps", "--eval_steps", "2", "--num_eval_samples", "16"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """torchrun, 2 CPU processes, 4 steps of adautomix, checkpoint-2 and checkpoint-4 saved and the model evaluated
    at steps 2 and 4 on the way."""
    out = tmp_path_factory.mktemp("ddp") / "full"
    return torchrun(out, [*CHECKPOINTED, *EVALUATED])


# -- 1. ranks stay in sync and train on different data -----------------------------------------------------------
def test_torchrun_two_cpu_processes_keep_parameters_identical(ddp_run):
    (sd0, info0), (sd1, info1) = load_rank(ddp_run, 0), load_rank(ddp_run, 1)
    for info in (info0, info1):  # the worker also asserted these, and that the model was DDP-wrapped
        assert info["world_size"] == 2 and info["distributed_type"] == "DistributedType.MULTI_CPU"
        assert info["global_step"] == 4 and info["model_step"] == 4
    assert sd0.keys() == sd1.keys()
    prefixes = {k.split(".")[0] if not k.startswith("mixer.") else ".".join(k.split(".")[:2]) for k in sd0}
    assert {
        "classifier",
        "teacher",
        "mixer.generator",
        "mixer.mix_head",
        "mixer.mix_head_teacher",
        "_extra_state",
    } <= prefixes
    assert int(sd0["_extra_state"]) == int(sd1["_extra_state"]) == 4  # MixupModel.step
    differing = [k for k in sd0 if not torch.equal(sd0[k], sd1[k])]
    # Every parameter (online, generator, mix head, both EMA teachers), the step, num_batches_tracked: bitwise equal.
    # Only BN running statistics may differ (see the next test).
    assert all(is_bn_running_stat(k) for k in differing), differing


def test_torchrun_every_buffer_identical_after_training(ddp_run):
    (sd0, _), (sd1, _) = load_rank(ddp_run, 0), load_rank(ddp_run, 1)
    differing = [k for k in sd0 if not torch.equal(sd0[k], sd1[k])]
    assert not differing, f"{len(differing)} tensors differ across ranks, e.g. {differing[:3]}"


def test_every_rank_evaluates_with_the_same_buffers(ddp_run):
    """Each rank evaluates its half of the eval set: with rank 0's BN statistics (of the classifier, the teacher
    and the mix heads), synced before the evaluation."""
    from safetensors.torch import load_file

    for step in (2, 4):
        b0, b1 = (load_file(str(ddp_run / f"rank{r}_eval{step}.safetensors")) for r in (0, 1))
        assert b0.keys() == b1.keys() and any(is_bn_running_stat(k) for k in b0)
        differing = [k for k in b0 if not torch.equal(b0[k], b1[k])]
        assert not differing, f"step {step}: {len(differing)} buffers differ, e.g. {differing[:3]}"


def test_buffers_are_not_broadcast_at_every_step(ddp_run):
    """DDP itself sends rank 0's buffers at each training forward, so the trainer syncs them only where the ranks
    use their own: before each evaluation and at the end of training, one collective each (not one per buffer per
    optimizer step: ≈ 120 per step for a ResNet-18 and its teacher)."""
    for rank in (0, 1):
        _, info = load_rank(ddp_run, rank)
        assert info["broadcasts_per_step"] == [0, 0, 0, 0]
        assert info["broadcasts"] == 3  # evaluations at steps 2 and 4, end of training


def test_ranks_train_on_different_data(ddp_run):
    (_, info0), (_, info1) = load_rank(ddp_run, 0), load_rank(ddp_run, 1)
    seen0 = [i for r in info0["records"] for i in r["sample_ids"]]
    seen1 = [i for r in info1["records"] for i in r["sample_ids"]]
    # 4 steps x 4 samples x 2 ranks = one epoch: the ranks see disjoint halves of the data.
    assert not set(seen0) & set(seen1)
    assert sorted(seen0 + seen1) == list(range(NUM_SAMPLES))
    # Each rank mixes its own batch, so the per-rank losses and generated masks differ. (λ and N themselves are
    # equal on both ranks: Trainer seeds every rank with the same seed, as the release does.)
    assert [r["loss_one"] for r in info0["records"]] != [r["loss_one"] for r in info1["records"]]
    assert [r["mask_mean_1"] for r in info0["records"]] != [r["mask_mean_1"] for r in info1["records"]]
    assert [r["adversarial"] for r in info0["records"]] == [1.0, 0.0, 1.0, 0.0]


# -- 2. exact resume with 2 processes ----------------------------------------------------------------------------
def test_two_process_resume_is_exact(ddp_run):
    resumed = torchrun(
        ddp_run.parent / "resumed",
        [*CHECKPOINTED, *EVALUATED, "--resume_from_checkpoint", str(ddp_run / "checkpoint-2")],
    )
    for rank in (0, 1):
        (full, full_info), (res, res_info) = load_rank(ddp_run, rank), load_rank(resumed, rank)
        assert full.keys() == res.keys()
        differing = [k for k in full if not torch.equal(full[k], res[k])]
        assert not differing, f"rank {rank}: {differing[:5]}"
        # The resumed run trained steps 2 and 3 on the same samples as the uninterrupted one.
        assert res_info["records"] == full_info["records"][2:]
        assert res_info["model_step"] == 4


# -- 1 + 3. accelerate launch variant, with gradient accumulation under DDP -------------------------------------
def test_accelerate_launch_multi_cpu_with_gradient_accumulation(tmp_path):
    out = accelerate_launch(
        tmp_path / "acc",
        [*COMMON, "--gradient_accumulation_steps", "2", "--optim", "sgd", "--save_strategy", "no"],
    )
    (sd0, info0), (sd1, info1) = load_rank(out, 0), load_rank(out, 1)
    assert [k for k in sd0 if not torch.equal(sd0[k], sd1[k]) and not is_bn_running_stat(k)] == []
    for info in (info0, info1):
        assert info["world_size"] == 2 and info["distributed_type"] == "DistributedType.MULTI_CPU"
        assert [r["step"] for r in info["records"]] == [0, 0, 1, 1, 2, 2, 3, 3]
        assert [r["adversarial"] for r in info["records"]] == [1, 1, 0, 0, 1, 1, 0, 0]
        assert info["model_step"] == info["global_step"] == 4
    for epoch in (slice(0, 4), slice(4, 8)):  # 2 micro-batches x 2 steps x 4 samples x 2 ranks = one epoch
        seen0 = [i for r in info0["records"][epoch] for i in r["sample_ids"]]
        seen1 = [i for r in info1["records"][epoch] for i in r["sample_ids"]]
        assert sorted(seen0 + seen1) == list(range(NUM_SAMPLES))  # disjoint halves of the data


# -- 3. gradient accumulation: the alternation advances once per optimizer step ---------------------------------
class _RecordingTrainer(AdAutoMixTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        self.seen.append((int(self.model.step), int(outputs["adversarial"])))  # the train forward's terms
        return (loss, outputs) if return_outputs else loss


def test_grad_accumulation_alternation_advances_per_optimizer_step(tmp_path):
    model, _ = make_model("hf_resnet")
    trainer = _RecordingTrainer(
        model=model,
        args=targs(tmp_path, max_steps=3, gradient_accumulation_steps=2),
        mixup_args=MixupArguments(mixup="adautomix", save_mix_every=0),
        train_dataset=tensor_dataset(24),
    )
    trainer.seen = []
    trainer.train()
    assert [s for s, _ in trainer.seen] == [0, 0, 1, 1, 2, 2]
    assert [a for _, a in trainer.seen] == [1, 1, 0, 0, 1, 1]
    assert int(trainer.model.step) == trainer.state.global_step == 3


# -- 4. bf16 autocast -------------------------------------------------------------------------------------------
BF16_RTOL = 2e-2  # measured here: 4.4e-4, 1.5e-4, 9.9e-4 relative on the 3 logged losses


def test_bf16_losses_track_fp32(tmp_path):
    losses, dtypes = {}, {}
    for bf16 in (False, True):
        model, _ = make_model("hf_resnet")
        trainer = AdAutoMixTrainer(
            model=model,
            args=targs(tmp_path / str(bf16), max_steps=3, bf16=bf16, optim="adamw_torch", learning_rate=0.01),
            mixup_args=MixupArguments(mixup="adautomix", save_mix_every=0),
            train_dataset=tensor_dataset(24),
        )
        seen = dtypes[bf16] = {}
        conv = next(m for m in trainer.model.classifier.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, i, o, seen=seen: seen.setdefault("conv", o.dtype) and None)
        trainer.model.mixer.generator.register_forward_hook(
            lambda m, i, o, seen=seen: seen.setdefault("masks", o.dtype) and None
        )
        trainer.train()
        assert trainer.accelerator.mixed_precision == ("bf16" if bf16 else "no")
        losses[bf16] = np.array([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert dtypes[True] == {"conv": torch.bfloat16, "masks": torch.float32}  # autocast on, generator in fp32
    assert dtypes[False] == {"conv": torch.float32, "masks": torch.float32}
    assert len(losses[True]) == len(losses[False]) == 3
    assert np.all(np.isfinite(losses[True]))
    np.testing.assert_allclose(losses[True], losses[False], rtol=BF16_RTOL, atol=0)
    assert not np.array_equal(losses[True], losses[False])  # bf16 really changed the arithmetic


def test_adaptive_mask_is_fp32_and_sums_to_one_under_autocast():
    from hf_adautomix.mixers.generator import AdaptiveMask

    torch.manual_seed(0)
    gen = AdaptiveMask(16)
    feats = torch.randn(3, 2, 16, 4, 4).bfloat16()  # (N, B, C, h, w), as a bf16 backbone would give
    lam = torch.tensor([0.5, 0.3, 0.2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masks = gen(feats, lam, (32, 32))
        assert (
            torch.nn.functional.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 1, 1)).dtype
            == torch.bfloat16
        )
    assert masks.dtype == torch.float32 and masks.shape == (2, 3, 32, 32)
    torch.testing.assert_close(masks.sum(1), torch.ones(2, 32, 32), atol=1e-6, rtol=0)
    assert (masks >= 0).all()


# -- 5. DeepSpeed / FSDP are refused ----------------------------------------------------------------------------
@pytest.fixture
def restore_environ():
    saved = dict(os.environ)  # TrainingArguments(fsdp=...) writes FSDP_* variables into os.environ
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_fsdp_is_refused_with_clear_message(tmp_path, restore_environ):
    args = targs(tmp_path, fsdp=True)  # constructs fine on CPU, one process
    assert args.fsdp
    model, _ = make_model("hf_resnet")
    with pytest.raises(ValueError, match=REFUSAL):
        AdAutoMixTrainer(model=model, args=args, mixup_args=MixupArguments(mixup="adautomix"))


def test_fsdp_is_refused_under_two_cpu_processes(tmp_path):
    out = torchrun(tmp_path / "fsdp", ["--check", "fsdp", "--fsdp", "full_shard", *COMMON])
    for rank in (0, 1):
        error = json.loads((out / f"rank{rank}.json").read_text())["error"]
        assert error is not None and REFUSAL in error, error


def test_deepspeed_is_refused(tmp_path, monkeypatch):
    # `accelerate launch --use_deepspeed` / an accelerate config with DeepSpeed set this variable; the refusal
    # reads the request, so the deepspeed package need not be installed for it.
    args = targs(tmp_path)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    model, _ = make_model("hf_resnet")
    with pytest.raises(ValueError, match=REFUSAL):
        AdAutoMixTrainer(model=model, args=args, mixup_args=MixupArguments(mixup="adautomix"))
