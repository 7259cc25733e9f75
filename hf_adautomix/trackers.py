"""Images to the experiment trackers Trainer reports to (`--report_to`): TensorBoard, trackio and Weights & Biases,
each through its public image API, into the run its transformers callback opened (no second run).

trackio and wandb get the step as `train/global_step`, beside the image, the step axis transformers' callbacks log
for them (their own step counts log calls: an explicit step would shift the Trainer's metrics); TensorBoard gets it
as the event's step.
"""

from __future__ import annotations

import numpy as np


def log_image(callbacks, key: str, grid: np.ndarray, path: str, step: int, caption: str) -> None:
    """Log one image to every tracker among `callbacks` (the trainer's) that has an open run and takes images.

    Args:
        key: the image's name (TensorBoard tag, trackio / wandb key).
        grid: its (H, W, 3) uint8 pixels, for TensorBoard.
        path: the same image saved as a PNG, for trackio (copied as is) and wandb.
        step: the global step.
        caption: shown under it in trackio and wandb.
    """
    from transformers.integrations import TensorBoardCallback, TrackioCallback, WandbCallback

    for callback in callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
            callback.tb_writer.add_image(key, grid, step, dataformats="HWC")
            callback.tb_writer.flush()
        elif isinstance(callback, (TrackioCallback, WandbCallback)):
            # transformers keeps the tracker module and whether it opened the run in private attributes; using
            # them logs into that run, and only once it is open (set up at train begin on the main process).
            module = callback._trackio if isinstance(callback, TrackioCallback) else callback._wandb  # noqa: SLF001
            if module is not None and callback._initialized:  # noqa: SLF001
                module.log({key: module.Image(path, caption=caption), "train/global_step": step})
