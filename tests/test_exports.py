"""Exports load in every loader their library offers, with the trained weights, the data's class names and the eval
preprocessing: transformers exports in `AutoModelForImageClassification` and `pipeline`; timm exports in
`timm.create_model("local-dir:...")` / `"hf-hub:..."` and in transformers' `TimmWrapper` (`AutoModelForImageClassification`,
`AutoImageProcessor`, `pipeline`). Every snippet `adapter.load_snippets` prints is run, and the exports that must load
without hf_adautomix are loaded in a Python that cannot import it."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import FAMILIES, TIMM_TINY, TINY_RESNET, make_model
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from test_trainer import targs

from hf_adautomix import AdAutoMixTrainer, MixupArguments
from hf_adautomix.backbones import build_model, parse_config_overrides

NAMES = ["cat", "dog", "frog", "ship"]
HUB_NAME = "me/tiny-ada"
EMA = {"hf_resnet_cifar", "hf_swin", "timm_resnet", "timm_convnext"}  # exported: the EMA teacher
FAMILY_NAMES = [
    "hf_resnet_cifar",
    "hf_resnet",
    "hf_convnext",
    "hf_swin",
    "timm_resnet",
    "timm_convnext",
    "timm_swin",
    "timm_resnext",
]


def new_model(family):
    """Tiny models; `hf_resnet` (default `LABEL_i` names) and `timm_swin` (plain `timm.create_model`) are built as a
    Python-API user would, without class names; the others carry names that the data's replace."""
    if family == "hf_resnet":
        torch.manual_seed(0)
        return build_model(
            num_labels=4,
            id2label={i: f"LABEL_{i}" for i in range(4)},
            model_type="resnet",
            config_overrides=TINY_RESNET,
        )
    if family == "timm_swin":
        import timm

        torch.manual_seed(0)
        kwargs = parse_config_overrides(TIMM_TINY["swin_tiny_patch4_window7_224"])
        return timm.create_model("swin_tiny_patch4_window7_224", num_classes=4, img_size=64, **kwargs)
    return make_model({"hf_resnet_cifar": "hf_resnet"}.get(family, family))[0]


def raw_dataset(n=8, seed=0):
    rng = np.random.default_rng(seed)
    images = [PILImage.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
    features = Features({"image": Image(), "label": ClassLabel(names=NAMES)})
    return Dataset.from_dict({"image": images, "label": [i % 4 for i in range(n)]}, features=features)


def sample_image():
    """Not square, so that the resize/crop geometry matters."""
    rng = np.random.default_rng(7)
    return PILImage.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """family -> (trainer, export folder, in-memory exported adapter); trained once per family, on first use."""
    cache = {}

    def get(family):
        if family not in cache:
            out = tmp_path_factory.mktemp(family) / "out"
            mix = (
                MixupArguments(mixup="mixup", ema=True)
                if family in EMA
                else MixupArguments(mixup="cutmix", ema=False)
            )
            trainer = AdAutoMixTrainer(
                model=new_model(family),
                args=targs(out, max_steps=1, hub_model_id=HUB_NAME),
                mixup_args=mix,
                train_dataset=raw_dataset(),
            )
            trainer.train()
            trainer.save_model()
            adapter = trainer.model.export_adapter("auto").eval()
            assert (adapter is trainer.model.teacher) == (family in EMA)
            cache[family] = (trainer, str(out), adapter)
        return cache[family]

    return get


def logits_of(adapter, x):
    with torch.no_grad():
        return adapter(x)


def check_pipeline(classifier, adapter, x):
    """The pipeline's scores are the softmax of the in-memory model's logits on the processor's pixels."""
    probs = torch.softmax(logits_of(adapter, x)[0], -1)
    result = classifier(sample_image(), top_k=4)
    assert sorted(r["label"] for r in result) == sorted(NAMES)
    assert result[0]["label"] == NAMES[int(probs.argmax())]
    for r in result:
        assert r["score"] == pytest.approx(float(probs[NAMES.index(r["label"])]), abs=1e-5)


def timm_expected_config(trainer):
    info = trainer.transform_info
    crop = info.eval_crop_pct if hasattr(info, "eval_crop_pct") else None
    return {
        "input_size": (3, info.size, info.size),
        "mean": pytest.approx(tuple(info.mean)),
        "std": pytest.approx(tuple(info.std)),
        "crop_pct": 1.0 if crop is None else crop,
        "crop_mode": "squash" if crop is None else "center",
        "interpolation": getattr(info, "interpolation", "bilinear"),
    }


def timm_checks(trainer, adapter, model, config=None, transform=None):
    """A timm model loaded from the export: its data config is the training's eval preprocessing, its labels the
    data's, its logits the in-memory model's on the same pixels."""
    import timm

    config = config or timm.data.resolve_data_config(model=model)
    assert {k: config[k] for k in timm_expected_config(trainer)} == timm_expected_config(trainer)
    assert list(model.pretrained_cfg["label_names"]) == NAMES
    transform = transform or timm.data.create_transform(**config)
    x = transform(sample_image()).unsqueeze(0)
    assert x.shape[-1] == config["input_size"][-1]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), logits_of(adapter, x), atol=1e-5, rtol=0)


def transformers_checks(adapter, processor, model):
    """A transformers-side load (native or TimmWrapper): the data's labels and the in-memory logits."""
    assert [model.config.id2label[i] for i in range(4)] == NAMES
    x = processor(sample_image(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(pixel_values=x).logits, logits_of(adapter, x), atol=1e-5, rtol=0
        )
    return x


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_export_loads_in_every_loader(family, exports):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    trainer, out, adapter = exports(family)
    assert adapter.family == family.split("_")[0].replace("hf", "transformers")
    processor = AutoImageProcessor.from_pretrained(out)
    model = AutoModelForImageClassification.from_pretrained(out)
    x = transformers_checks(adapter, processor, model)
    check_pipeline(pipeline("image-classification", model=out), adapter, x)
    if adapter.family == "transformers":
        info = trainer.transform_info
        assert list(processor.image_mean) == pytest.approx(list(info.mean))
        assert x.shape[-2:] == (info.size, info.size)
        return
    import timm

    # timm's own loader; transformers' TimmWrapper reads the same config.json (no preprocessor_config.json).
    assert not os.path.exists(os.path.join(out, "preprocessor_config.json"))
    assert type(model).__name__ == "TimmWrapperForImageClassification"
    config = json.loads(open(os.path.join(out, "config.json")).read())
    assert "num_classes" not in config.get("model_args", {}) and config["label_names"] == NAMES
    loaded = timm.create_model("local-dir:" + out, pretrained=True)
    timm_checks(trainer, adapter, loaded)
    as_tuples = lambda cfg: {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}  # noqa: E731
    assert as_tuples(processor.data_config) == as_tuples(timm.data.resolve_data_config(model=loaded))
    pixels = timm.data.create_transform(**processor.data_config)(sample_image()).unsqueeze(0)
    torch.testing.assert_close(x, pixels)


@pytest.fixture
def fake_timm_hub(monkeypatch):
    """`hf-hub:<repo>` served from local folders (timm downloads through `timm.models._hub.hf_hub_download`)."""
    import timm.models._hub as timm_hub

    repos = {}

    def download(repo_id, filename, **_kw):
        path = os.path.join(repos[repo_id], filename)
        if not os.path.exists(path):
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(f"{repo_id} has no {filename}")
        return path

    monkeypatch.setattr(timm_hub, "hf_hub_download", download)
    return repos


def python_blocks(markdown):
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_load_snippet_runs(family, exports, fake_timm_hub):
    """The model card's snippets, as printed: "hf-hub:" names through a fake Hub for timm, the repo id replaced by the
    export folder for transformers (which has no offline stand-in for a Hub repo)."""
    from transformers import AutoImageProcessor

    trainer, out, adapter = exports(family)
    text = adapter.load_snippets(HUB_NAME)
    assert text in open(os.path.join(out, "README.md")).read()
    blocks = python_blocks(text)
    assert len(blocks) == 3 if adapter.family == "timm" else 2
    fake_timm_hub[HUB_NAME] = out
    x = AutoImageProcessor.from_pretrained(out)(sample_image(), return_tensors="pt")["pixel_values"]
    for block in blocks:
        namespace = {}
        exec(block.replace(f'"{HUB_NAME}"', repr(out)), namespace)  # noqa: S102
        if "transform" in namespace:  # timm.create_model("hf-hub:...")
            assert f'"hf-hub:{HUB_NAME}"' in block
            timm_checks(trainer, adapter, namespace["model"], namespace["config"], namespace["transform"])
        elif "classifier" in namespace:
            check_pipeline(namespace["classifier"], adapter, x)
        else:
            transformers_checks(adapter, namespace["processor"], namespace["model"])


NO_PACKAGE_SCRIPT = """
import json, sys
sys.modules["hf_adautomix"] = None  # an installed (editable) hf_adautomix must not be importable either
try:
    import hf_adautomix
    raise SystemExit("hf_adautomix is importable")
except ImportError:
    pass
assert not any(p and "{repo}" == p.rstrip("/") for p in sys.path), sys.path
import timm, torch
from transformers import AutoModelForImageClassification, pipeline

jobs = json.load(open("jobs.json"))
results = {{}}
for job in jobs:
    ref = torch.load(job["ref"], weights_only=True)
    try:
        if job["loader"] == "timm":
            model = timm.create_model("local-dir:" + job["dir"], pretrained=True).eval()
            labels = list(model.pretrained_cfg["label_names"])
            logits = model(ref["x"])
        elif job["loader"] == "snippet":
            namespace = {{}}
            exec(job["code"], namespace)
            if "classifier" in namespace:  # top label and score on the test image, against the in-memory ones
                top = namespace["classifier"](job["image"], top_k=1)[0]
                labels, logits = [top["label"]], torch.tensor([top["score"]])
            else:
                model = namespace["model"].eval()
                labels = [model.config.id2label[i] for i in range(4)]
                logits = model(pixel_values=ref["x"]).logits
        else:
            model = AutoModelForImageClassification.from_pretrained(job["dir"]).eval()
            labels = [model.config.id2label[i] for i in range(4)]
            logits = model(pixel_values=ref["x"]).logits
    except Exception as err:
        results[job["name"]] = {{"error": f"{{type(err).__name__}}: {{err}}"}}
        continue
    diff = None if logits is None else float((logits - ref["logits"]).abs().max())
    results[job["name"]] = {{"labels": labels, "diff": diff}}
print(json.dumps(results))
"""


def test_exports_load_without_hf_adautomix(exports, tmp_path):
    """In a Python that cannot import hf_adautomix: the transformers CIFAR ResNet loads with trust_remote_code (its
    code file travels with it), stock architectures load in timm and TimmWrapper, and a timm CIFAR variant does not
    (which is why its snippets start with `import hf_adautomix`)."""
    jobs = []

    from transformers import AutoImageProcessor

    image = str(tmp_path / "image.png")
    sample_image().save(image)  # lossless: the same pixels in both processes

    def add(name, family, loader, code=None, expected=None):
        _, out, adapter = exports(family)
        size = FAMILIES[{"hf_resnet_cifar": "hf_resnet"}.get(family, family)][1]
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        ref = str(tmp_path / f"{name}.pt")
        torch.save({"x": x, "logits": logits_of(adapter, x) if expected is None else expected}, ref)
        jobs.append(dict(name=name, dir=out, loader=loader, ref=ref, code=code, image=image))

    _, cifar_out, cifar_adapter = exports("hf_resnet_cifar")
    pixels = AutoImageProcessor.from_pretrained(cifar_out)(sample_image(), return_tensors="pt")[
        "pixel_values"
    ]
    top = torch.softmax(logits_of(cifar_adapter, pixels)[0], -1).max().reshape(1)
    for i, block in enumerate(python_blocks(cifar_adapter.load_snippets(HUB_NAME))):
        code = block.replace(f'"{HUB_NAME}"', repr(cifar_out))
        assert "trust_remote_code=True" in code
        add(f"cifar_snippet_{i}", "hf_resnet_cifar", "snippet", code, top if "pipeline(" in code else None)
    add("hf_resnet", "hf_resnet", "auto")
    add("timm_swin", "timm_swin", "timm")
    add("timm_swin_wrapper", "timm_swin", "auto")
    add("timm_resnet_cifar", "timm_resnet", "timm")
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(NO_PACKAGE_SCRIPT.format(repo=repo)))
    proc = subprocess.run(
        [sys.executable, "-I", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("cifar_snippet_0", "cifar_snippet_1", "hf_resnet", "timm_swin", "timm_swin_wrapper"):
        assert "error" not in results[name], (name, results[name])
        assert results[name]["diff"] < 1e-5, (name, results[name])
        if name != "cifar_snippet_0":  # the pipeline's top label only
            assert results[name]["labels"] == NAMES, (name, results[name])
    pixels_top = NAMES[int(logits_of(cifar_adapter, pixels).argmax())]
    assert results["cifar_snippet_0"]["labels"] == [pixels_top]
    assert "Unknown model (resnet18_cifar)" in results["timm_resnet_cifar"]["error"]


@pytest.mark.parametrize("family", ["hf_resnet_cifar", "timm_resnet"])
def test_save_model_to_another_folder_is_the_export(family, exports, tmp_path):
    """`save_model(dir)` writes the same native export (weights, config, processor, card) to any folder, not only to
    output_dir (issue 16, defect 2: another folder got the training wrapper's state dict, which nothing loads)."""
    from transformers import AutoModelForImageClassification

    trainer, out, adapter = exports(family)
    other = str(tmp_path / "another_dir")
    trainer.save_model(other)
    names = ["config.json", "model.safetensors", "README.md"]
    names += ["preprocessor_config.json"] if adapter.family == "transformers" else []
    for name in names:
        with open(os.path.join(other, name), "rb") as a, open(os.path.join(out, name), "rb") as b:
            assert a.read() == b.read(), name
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = AutoModelForImageClassification.from_pretrained(other).eval()
    assert [model.config.id2label[i] for i in range(4)] == NAMES
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, logits_of(adapter, x), atol=1e-5, rtol=0)
