"""Worker for tests/test_distributed.py, started under `torch.distributed.run` or `accelerate launch` (2 CPU
processes, gloo). Not a test module itself.

It trains a tiny HF ResNet (conftest.TINY_RESNET, CIFAR stem) with `--mixup adautomix` on an in-memory tensor
dataset, then each rank writes
  <output_dir>/rank{r}.safetensors  its full `trainer.model.state_dict()` (classifier, generator, mix head, EMA
                                    teacher, mix-head teacher, step) after training,
  <output_dir>/rank{r}.json         world size, distributed type, the samples it saw (one id per sample), per
                                    micro-batch the model step and the mixer's λ₁ / adversarial flag / losses, and
                                    the calls of `torch.distributed.broadcast` (per optimizer step, and in all),
  <output_dir>/rank{r}_eval{step}.safetensors  with `--eval_strategy steps` and `--num_eval_samples`: every buffer
                                    as the evaluation at that step sees it.
With `--check fsdp` it only builds the trainer (TrainingArguments should carry `--fsdp ...`) and writes the
error it raised to <output_dir>/rank{r}.json.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/dist_worker.py --output_dir OUT --use_cpu ...
(any TrainingArguments flag; `--use_cpu` is required on a GPU-less machine, hf-ecosystem §3.2).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest (tiny model configs)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # hf_adautomix when not installed

from conftest import make_model  # noqa: E402

from hf_adautomix import AdAutoMixTrainer, MixupArguments  # noqa: E402


@dataclass
class WorkerArguments:
    check: str = field(default="train", metadata={"help": "train | fsdp"})
    num_samples: int = field(default=32, metadata={"help": "Size of the tensor dataset."})
    num_eval_samples: int = field(default=0, metadata={"help": "Size of the eval dataset (0: none)."})


def tensor_dataset(n: int, size: int = 32, num_labels: int = 4, seed: int = 0):
    """Same data as tests/test_trainer.tensor_dataset, plus a `pixel_values[:, 0, 0, 0]` that identifies each
    sample (its index), so the worker can tell which samples a rank saw."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    pixels[:, 0, 0, 0] = np.arange(n, dtype=np.float32)
    return Dataset.from_dict(
        {"pixel_values": pixels, "labels": (np.arange(n) % num_labels).astype(np.int64)}
    ).with_format("torch")


class RecordingTrainer(AdAutoMixTrainer):
    """Records, per micro-batch, the model step the mixer saw, its terms, and the ids of the samples."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        self.outputs = outputs  # the train forward's {"loss", **terms}
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(self, *args, **kwargs):
        # inside `evaluate`, after its buffer sync: the buffers this rank evaluates with
        from safetensors.torch import save_file

        buffers = {k: v.detach().clone() for k, v in self.model.named_buffers()}
        save_file(
            buffers,
            os.path.join(
                self.args.output_dir,
                f"rank{self.args.process_index}_eval{self.state.global_step}.safetensors",
            ),
        )
        return super().evaluation_loop(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        step = int(self.model.step)
        loss = super().training_step(model, inputs, num_items_in_batch)
        terms = self.outputs
        self.records.append(
            {
                "step": step,
                "sample_ids": [int(v) for v in inputs["pixel_values"][:, 0, 0, 0].round().tolist()],
                "labels": inputs["labels"].tolist(),
                "adversarial": float(terms["adversarial"]),
                "lam_1": float(terms["lam_1"]),
                "loss_one": float(terms["loss_one"]),
                "mask_mean_1": float(terms["mask_mean_1"]),
                "loss": float(loss),
            }
        )
        return loss


def count_broadcasts() -> dict:
    """Counts the calls of `torch.distributed.broadcast` from here on (DDP's own buffer sync at each forward is a
    coalesced broadcast in C++, not counted)."""
    seen = {"calls": 0}
    broadcast = torch.distributed.broadcast

    def counting(*args, **kwargs):
        seen["calls"] += 1
        return broadcast(*args, **kwargs)

    torch.distributed.broadcast = counting
    return seen


class BroadcastsPerStep(TrainerCallback):
    """The broadcasts between the start and the end of each optimizer step (forward, backward, optimizer step, EMA
    update and their callbacks)."""

    def __init__(self, seen: dict):
        self.seen, self.per_step, self.start = seen, [], 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = self.seen["calls"]

    def on_step_end(self, args, state, control, **kwargs):
        self.per_step.append(self.seen["calls"] - self.start)


def main(argv=None) -> None:
    training_args, worker_args = HfArgumentParser(
        (TrainingArguments, WorkerArguments)
    ).parse_args_into_dataclasses(argv)
    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    model, size = make_model("hf_resnet")
    mixup_args = MixupArguments(mixup="adautomix", save_mix_every=0)

    if worker_args.check == "fsdp":
        try:
            RecordingTrainer(
                model=model,
                args=training_args,
                mixup_args=mixup_args,
                train_dataset=tensor_dataset(worker_args.num_samples, size),
            )
            error = None
        except Exception as e:  # the test inspects the message
            error = f"{type(e).__name__}: {e}"
        (out / f"rank{rank}.json").write_text(json.dumps({"error": error}))
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        return

    broadcasts = count_broadcasts()
    per_step = BroadcastsPerStep(broadcasts)
    trainer = RecordingTrainer(
        model=model,
        args=training_args,
        mixup_args=mixup_args,
        train_dataset=tensor_dataset(worker_args.num_samples, size),
        eval_dataset=tensor_dataset(worker_args.num_eval_samples, size, seed=1)
        if worker_args.num_eval_samples
        else None,
        callbacks=[per_step],
    )
    trainer.records = []
    from accelerate.utils import DistributedType

    assert trainer.args.world_size == 2, trainer.args.world_size
    assert trainer.accelerator.distributed_type == DistributedType.MULTI_CPU, (
        trainer.accelerator.distributed_type
    )
    assert trainer.accelerator.process_index == rank
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)  # --resume_from_checkpoint
    assert type(trainer.model_wrapped).__name__ == "DistributedDataParallel", type(trainer.model_wrapped)

    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))
    info = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "global_step": trainer.state.global_step,
        "model_step": int(trainer.model.step),
        "records": trainer.records,
        "broadcasts": broadcasts["calls"],
        "broadcasts_per_step": per_step.per_step,
        "log_history": [h for h in trainer.state.log_history if "loss" in h],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):
        trainer.end()  # finishes trackers, destroys the process group (transformers 5.x)
    elif torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
