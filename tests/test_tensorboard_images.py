"""Mixed-sample grids logged as images to TensorBoard (report_to tensorboard), the same pixels as the saved PNGs."""

import io

import numpy as np
import PIL.Image
from conftest import make_model
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_trainer import targs, tensor_dataset

from hf_adautomix import AdAutoMixTrainer, MixupArguments


def train(out, report_to):
    model, _ = make_model("hf_resnet")
    trainer = AdAutoMixTrainer(
        model=model,
        args=targs(out, max_steps=3, report_to=report_to),
        mixup_args=MixupArguments(mixup="automix", save_mix_every=2),
        train_dataset=tensor_dataset(),
    )
    trainer.train()
    return trainer


def test_grids_are_logged_at_their_steps_with_the_png_pixels(tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)  # the default: output_dir/runs/<date_host>
    train(tmp_path, ["tensorboard"])
    pngs = {int(p.stem[5:]): p for p in (tmp_path / "mixed_samples").glob("step_*.png")}
    assert sorted(pngs) == [2, 3]  # every 2 steps and at the last one
    (events,) = tmp_path.glob("runs/*/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    accumulator.Reload()
    images = accumulator.Images("mixed_samples")
    assert [image.step for image in images] == [2, 3]
    for image in images:
        png = np.asarray(PIL.Image.open(pngs[image.step]))
        assert (image.height, image.width) == png.shape[:2]
        logged = np.asarray(PIL.Image.open(io.BytesIO(image.encoded_image_string)))
        assert np.array_equal(logged, png), image.step


def test_no_event_files_without_tensorboard_in_report_to(tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    trainer = train(tmp_path, "none")
    assert not [c for c in trainer.callback_handler.callbacks if type(c).__name__ == "TensorBoardCallback"]
    assert len(list((tmp_path / "mixed_samples").glob("step_*.png"))) == 2
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
