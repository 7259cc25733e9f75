"""The example notebooks run top to bottom (nbclient, a fresh kernel), with their parameters cell overridden as
papermill does: a short schedule, a tiny model and, for the fine-tuning notebook, local stand-ins for the Hub model
and dataset and a fake Hub to push to."""

import ast
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "examples" / "notebooks"
TESTS = Path(__file__).resolve().parent
CELL_TIMEOUT = 300  # seconds per cell; the tiny runs take a few seconds on 2 cores
CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def parameters_index(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def run_notebook(name: str, overrides: dict, cwd: Path, monkeypatch, setup: str = ""):
    """Execute a notebook with `overrides` in a cell injected after the `parameters` cell (papermill's layout)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    lines = [f"{k} = {v!r}" for k, v in overrides.items()]
    injected = nbformat.v4.new_code_cell(
        "# Parameters (injected by the test)\n" + "\n".join(lines) + "\n" + setup
    )
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(parameters_index(nb) + 1, injected)
    # The kernel inherits this environment: offline, HF_HOME of the test, this interpreter (the kernelspec runs
    # "python") and this checkout of the package.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", str(TESTS.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    start = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError (with the traceback) on the first failing cell
    finally:
        nbformat.write(nb, cwd / f"executed-{name}")  # to look at after a failure
    print(f"{name}: executed in {time.perf_counter() - start:.1f} s")
    return nb


def cell_with(nb, text: str):
    matches = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    assert matches, f"no code cell contains {text!r}"
    return matches[0]


def result_text(cell) -> str:
    """The cell's value (`execute_result`), as text."""
    results = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert results, f"cell has no result: {cell.source[:80]!r}"
    return results[-1].data["text/plain"]


def all_output(cell) -> str:
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.extend(str(v) for v in out.data.values())
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["quickstart.ipynb", "finetune_pretrained.ipynb"])
def test_committed_notebook_is_clean(name):
    """Committed without outputs or execution counts, valid, with one `parameters` cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"stored output in {cell.source[:60]!r}"
    parameters_index(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    out = tmp_path / "quickstart_out"
    overrides = dict(
        OUTPUT_DIR=str(out),
        MAX_STEPS=4,
        BATCH_SIZE=16,
        SAVE_MIX_EVERY=2,
        HIDDEN_SIZES=[8, 8, 16, 16],
        EMBEDDING_SIZE=8,
    )
    nb = run_notebook("quickstart.ipynb", overrides, tmp_path, monkeypatch)

    # The mixes: shown during training (one display per saved grid) and all together afterwards.
    assert sorted(p.name for p in (out / "mixed_samples").glob("*.png")) == [
        "step_000002.png",
        "step_000004.png",
    ]
    live = [
        o for o in cell_with(nb, "trainer.train()").outputs if "data:image/png;base64" in str(o.get("data"))
    ]
    assert len(live) == 2
    assert all_output(cell_with(nb, "show_mixes(OUTPUT_DIR)")).count("data:image/png;base64") == 2

    # Online vs EMA evaluation: both heads in the table.
    table = result_text(cell_with(nb, "trainer.evaluate()"))
    assert "online" in table and "EMA teacher" in table and "accuracy" in table

    # Export and reload: native files, and the pipeline's top label is one of the digits.
    files = ast.literal_eval(result_text(cell_with(nb, "trainer.save_model()")))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(files)
    predictions = ast.literal_eval(result_text(cell_with(nb, 'pipeline("image-classification"')))
    assert len(predictions) == 3 and predictions[0]["label"] in [str(d) for d in range(10)]

    # The card is shown, and it is ours.
    card_cell = all_output(cell_with(nb, "ModelCard.load"))
    assert "adautomix" in card_cell and "EMA teacher" in card_cell and "handwritten digits" in card_cell
    assert "handwritten digits" in (out / "README.md").read_text()


@pytest.fixture
def hub_stand_ins(tmp_path):
    """A saved tiny random-init ResNet with an image processor (for `microsoft/resnet-18`) and a `save_to_disk`
    DatasetDict of 60 32x32 images in CIFAR-10's layout (for `uoft-cs/cifar10`)."""
    import datasets
    from PIL import Image
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    model_dir = tmp_path / "resnet-tiny"
    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], layer_type="basic", num_labels=3
    )
    ResNetForImageClassification(config).save_pretrained(model_dir)
    # microsoft/resnet-18's processor: ImageNet mean/std, short side 224 / 0.875, centre crop.
    ConvNextImageProcessor(
        size={"shortest_edge": 224},
        crop_pct=0.875,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(model_dir)

    rng = np.random.default_rng(0)
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR10_LABELS)}
    )

    def split(n):
        images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict(
            {"img": images, "label": [i % 10 for i in range(n)]}, features=features
        )

    data_dir = tmp_path / "cifar10-tiny"
    datasets.DatasetDict({"train": split(40), "test": split(20)}).save_to_disk(data_dir)
    return model_dir, data_dir


def test_finetune_pretrained_notebook_runs_and_pushes(tmp_path, hub_stand_ins, monkeypatch):
    model_dir, data_dir = hub_stand_ins
    hub = tmp_path / "hub"
    repo = "me/tiny-resnet-cifar10-adautomix"
    overrides = dict(
        MODEL_ID=str(model_dir),
        DATASET_ID=str(data_dir),
        MAX_TRAIN_SAMPLES=None,
        MAX_EVAL_SAMPLES=None,
        IMAGE_SIZE=64,
        MAX_STEPS=3,
        BATCH_SIZE=8,
        OUTPUT_ROOT=str(tmp_path / "finetune_out"),
        PUSH=True,
        HUB_MODEL_ID=repo,
        USE_CPU=True,
    )
    # The Hub: `transformers.trainer.hf_api` patched with conftest's fake, which copies uploads to `hub/<repo>`.
    setup = (
        "import sys\n"
        "from unittest import mock\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from conftest import fake_hub_api\n"
        "from pathlib import Path\n"
        f"_hub = mock.patch('transformers.trainer.hf_api', return_value=fake_hub_api(Path({str(hub)!r}))).start()\n"
    )
    nb = run_notebook("finetune_pretrained.ipynb", overrides, tmp_path, monkeypatch, setup=setup)

    assert "airplane" in all_output(cell_with(nb, "load_image_datasets("))  # the classes are listed
    comparison = all_output(cell_with(nb, "comparison = "))
    assert "adautomix" in comparison and "mixup" in comparison and "better exported model" in comparison
    for method in ("adautomix", "mixup"):
        saved = tmp_path / "finetune_out" / method
        assert (saved / "model.safetensors").is_file() and (saved / "README.md").is_file()

    # The push reached the (fake) Hub with the native model and our card.
    pushed = hub / repo
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in pushed.iterdir()
    }
    assert "pushed" in all_output(cell_with(nb, "push_to_hub("))
    card = (pushed / "README.md").read_text()
    assert "hf_adautomix" in card and str(model_dir) in card  # base model recorded
    config = json.loads((pushed / "config.json").read_text())
    assert config["id2label"]["0"] == "airplane" and len(config["id2label"]) == 10

    predictions = ast.literal_eval(result_text(cell_with(nb, 'pipeline("image-classification"')))
    assert predictions[0]["label"] in CIFAR10_LABELS
