"""Shared fixtures: everything offline, tiny random-init models, small data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several workers share the cores: one intra-op thread each (and in the processes they start), instead of every
    # process spinning up a thread per core. Set before torch is imported.
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_RESNET = "embedding_size=8,hidden_sizes=[8,8,16,16],depths=[1,1,1,1],layer_type=basic"
TINY_CONVNEXT = "hidden_sizes=[8,8,16,16],depths=[1,1,1,1]"
TINY_SWIN = "embed_dim=8,depths=[1,1,1,1],num_heads=[1,1,1,1],window_size=2"
TIMM_TINY = {
    "resnet18": "layers=[1,1,1,1]",
    "resnext50_32x4d": "layers=[1,1,1,1]",
    "convnext_atto": "depths=[1,1,1,1],dims=[8,16,32,64]",
    "swin_tiny_patch4_window7_224": "embed_dim=8,depths=[1,1,1,1],num_heads=[1,1,1,1],window_size=2",
}

# (model kwargs for build_model, input size) for every supported family, all tiny.
FAMILIES = {
    "hf_resnet": (dict(model_type="resnet", config_overrides=TINY_RESNET, cifar_stem=True), 32),
    "hf_convnext": (dict(model_type="convnext", config_overrides=TINY_CONVNEXT, cifar_stem=True), 32),
    "hf_swin": (dict(model_type="swin", config_overrides=TINY_SWIN, image_size=64), 64),
    "timm_resnet": (dict(timm_model="resnet18", config_overrides=TIMM_TINY["resnet18"], cifar_stem=True), 32),
    "timm_resnext": (
        dict(timm_model="resnext50_32x4d", config_overrides=TIMM_TINY["resnext50_32x4d"], cifar_stem=True),
        32,
    ),
    "timm_convnext": (
        dict(timm_model="convnext_atto", config_overrides=TIMM_TINY["convnext_atto"], cifar_stem=True),
        32,
    ),
    "timm_swin": (
        dict(
            timm_model="swin_tiny_patch4_window7_224",
            config_overrides=TIMM_TINY["swin_tiny_patch4_window7_224"],
            image_size=64,
        ),
        64,
    ),
}


def make_model(family: str, num_labels: int = 4, seed: int = 0):
    from hf_adautomix.backbones import build_model

    kwargs, size = FAMILIES[family]
    torch.manual_seed(seed)
    return build_model(
        num_labels=num_labels, id2label={i: f"c{i}" for i in range(num_labels)}, **kwargs
    ), size


def tiny_classifier(seed: int = 0, num_labels: int = 4):
    """The tiny transformers ResNet CIFAR variant (stage-3 map 8x8 at 32x32), wrapped in its adapter."""
    from hf_adautomix.backbones import wrap_classifier

    return wrap_classifier(make_model("hf_resnet", num_labels, seed)[0])


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (setup.cfg): 2 workers up to 4 cores, then half the cores, at most 8. Most tests are single-threaded
    or wait on subprocesses that are; the docs run and the 2-process tests start several processes themselves."""
    cores = os.cpu_count() or 1
    return max(2, min(8, cores // 2)) if cores > 4 else 2


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))


def fake_hub_api(hub):
    """An `HfApi` stand-in for `transformers.trainer.hf_api` (hf-ecosystem §8.4): `upload_folder` copies the folder
    (less `ignore_patterns`) to `hub/<repo_id>`; with `run_as_future` it returns a completed Future."""
    import shutil
    from concurrent.futures import Future
    from types import SimpleNamespace

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, run_as_future=False, **kw):
            shutil.copytree(
                folder_path,
                hub / repo_id,
                ignore=shutil.ignore_patterns(*(ignore_patterns or [])),
                dirs_exist_ok=True,
            )
            info = SimpleNamespace(commit_url="https://hub/commit", oid="0" * 40)
            if run_as_future:
                future = Future()
                future.set_result(info)
                return future
            return info

    return FakeApi()
