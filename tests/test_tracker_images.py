"""Mixed-sample grids logged as images to trackio (a real offline run, read back from its local SQLite store) and
wandb (a fake module in `WandbCallback`'s place: no wandb install, no network), with the global step beside them."""

import json
import sqlite3
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import make_model
from test_trainer import targs, tensor_dataset
from transformers.integrations import WandbCallback

from hf_adautomix import AdAutoMixTrainer, MixupArguments
from hf_adautomix.callbacks import MixGridCallback


@pytest.fixture
def trackio_dir(tmp_path, monkeypatch):
    """trackio, freshly imported with TRACKIO_DIR in tmp_path (it reads the variable once, at import)."""
    folder = tmp_path / "trackio"
    monkeypatch.setenv("TRACKIO_DIR", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "trackio"}
    import trackio.utils

    assert trackio.utils.TRACKIO_DIR == folder
    yield folder
    for k in [k for k in sys.modules if k.split(".")[0] == "trackio"]:
        del sys.modules[k]
    sys.modules.update(before)


def test_grids_are_logged_to_trackio_at_their_steps(tmp_path, trackio_dir):
    model, _ = make_model("hf_resnet")
    out = tmp_path / "out"
    trainer = AdAutoMixTrainer(
        model=model,
        args=targs(out, max_steps=3, report_to=["trackio"], project="mixgrid", run_name="r"),
        mixup_args=MixupArguments(mixup="automix", save_mix_every=2),
        train_dataset=tensor_dataset(),
    )
    trainer.train()
    pngs = {int(p.stem[5:]): p for p in (out / "mixed_samples").glob("step_*.png")}
    assert sorted(pngs) == [2, 3]  # every 2 steps and at the last one
    with sqlite3.connect(trackio_dir / "mixgrid.db") as db:
        rows = [(s, json.loads(m)) for s, m in db.execute("SELECT step, metrics FROM metrics ORDER BY id")]
    assert [s for s, _ in rows] == list(range(len(rows)))  # the Trainer's own trackio steps are not shifted
    images = [m for _, m in rows if "mixed_samples" in m]
    assert [m["train/global_step"] for m in images] == [2, 3]
    for m in images:
        step, image = m["train/global_step"], m["mixed_samples"]
        assert image["_type"] == "trackio.image"
        assert image["caption"].startswith(f"step {step}, λ = ")
        assert (trackio_dir / "media" / image["file_path"]).read_bytes() == pngs[step].read_bytes()


class FakeWandb:
    """The two public calls the grid uses: `wandb.Image(path, caption=...)` and `wandb.log(dict)`."""

    def __init__(self):
        self.logged = []

    @staticmethod
    def Image(path, caption=None):  # wandb's name
        return ("image", path, caption)

    def log(self, data):
        self.logged.append(data)


def grid_step(tmp_path, tracker, main=True, step=4):
    """One `MixGridCallback.on_step_end` that saves a grid, with `tracker` as the trainer's only reporter."""
    mix = {
        "sources": torch.rand(2, 4, 3, 8, 8),
        "mixes": torch.rand(4, 3, 8, 8),
        "lam": torch.tensor([0.25, 0.75]),
    }
    model = SimpleNamespace(mixer=SimpleNamespace(capture=True, last_mix=mix))
    state = SimpleNamespace(global_step=step, is_world_process_zero=main)
    callback = MixGridCallback(2, None, SimpleNamespace(callbacks=[tracker]))
    callback.on_step_end(SimpleNamespace(output_dir=str(tmp_path)), state, None, model=model)
    return tmp_path / "mixed_samples" / f"step_{step:06d}.png"


def fake_wandb_callback(initialized=True):
    callback = WandbCallback.__new__(WandbCallback)  # its __init__ needs wandb installed
    callback._wandb, callback._initialized = FakeWandb(), initialized
    return callback


def test_grid_goes_to_the_open_wandb_run_with_its_step(tmp_path):
    callback = fake_wandb_callback()
    png = grid_step(tmp_path, callback)
    assert png.exists()
    assert callback._wandb.logged == [
        {"mixed_samples": ("image", str(png), "step 4, λ = 0.25, 0.75"), "train/global_step": 4}
    ]


@pytest.mark.parametrize("initialized, main", [(False, True), (True, False)], ids=["no_run", "not_main"])
def test_no_wandb_image_without_an_open_run_or_off_the_main_process(tmp_path, initialized, main):
    callback = fake_wandb_callback(initialized)
    grid_step(tmp_path, callback, main=main)
    assert callback._wandb.logged == []
