"""Runs examples/run_image_classification.py in this process with one fault injected, for tests/test_faults.py.

    python tests/fault_runner.py FAULT STEP -- SCRIPT_ARGS...

FAULT is one of:
- `kill_in_step`: SIGKILL this process in the middle of optimizer step STEP (after its backward pass);
- `kill_in_save`: SIGKILL it while checkpoint-STEP is being written (the weights are on disk, the optimizer
  state, RNG states and trainer state are not).
- `disk_full_in_save`: the disk fills while checkpoint-STEP's weights are written: safetensors' writer fails
  the way it does on a full disk (`SafetensorError: ... No space left on device (os error 28)`), after having
  written part of the file.

The kill is a real `kill -9` of the training process: nothing of ours runs after it.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

from transformers import Trainer

from hf_adautomix.trainer import AdAutoMixTrainer

fault, step = sys.argv[1], int(sys.argv[2])
args = sys.argv[sys.argv.index("--") + 1 :]


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if fault == "kill_in_step":
    training_step = AdAutoMixTrainer.training_step

    def killing_training_step(self, *a, **kw):
        loss = training_step(self, *a, **kw)
        if self.state.global_step + 1 == step:
            die()
        return loss

    AdAutoMixTrainer.training_step = killing_training_step
elif fault == "kill_in_save":
    save_optimizer = Trainer._save_optimizer_and_scheduler

    def killing_save(self, output_dir):
        if self.state.global_step == step:
            die()
        return save_optimizer(self, output_dir)

    Trainer._save_optimizer_and_scheduler = killing_save
elif fault == "disk_full_in_save":
    import safetensors.torch
    from safetensors import SafetensorError

    save_file = safetensors.torch.save_file

    def full_disk_save_file(tensors, filename, *a, **kw):
        if f"checkpoint-{step}" in str(filename):
            with open(filename, "wb") as f:
                f.write(b"\0" * 4096)  # what reached the disk before it filled
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return save_file(tensors, filename, *a, **kw)

    safetensors.torch.save_file = full_disk_save_file
else:
    raise SystemExit(f"unknown fault {fault!r}")

script = Path(__file__).resolve().parents[1] / "examples" / "run_image_classification.py"
sys.argv = [str(script), *args]
runpy.run_path(str(script), run_name="__main__")
