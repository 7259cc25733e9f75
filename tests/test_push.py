"""Pushing to the Hub, offline (hf-ecosystem §8.4): what each commit of every `--hub_strategy` uploads, that every
uploaded model loads and gives the in-memory export's logits, the card round-trips, no token is uploaded, exact
resume from a pushed checkpoint, a clear error when the Hub cannot be reached, `examples/push_to_hub.py`, and the
generator as its own artefact."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import Future
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from conftest import make_model
from huggingface_hub import ModelCard
from test_trainer import targs, tensor_dataset
from transformers import AutoModelForImageClassification, TrainerCallback

import hf_adautomix  # noqa: F401  (registers the CIFAR ResNet for the Auto classes)
from hf_adautomix import AdAutoMixTrainer, MixupArguments
from hf_adautomix.backbones import wrap_classifier
from hf_adautomix.checkpoints import checkpoint_problem
from hf_adautomix.generator_hub import load_generator, save_generator
from hf_adautomix.run_folder import resolve_resume, run_record
from hf_adautomix.trainer import HubPushError

ROOT = Path(__file__).resolve().parents[1]
SECRET = "hf_PLANTEDpushToken1234567890"
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def connect_error(message: str) -> Exception:
    """What huggingface_hub's HTTP client raises when nothing answers (httpx2 in huggingface_hub 2.4, httpx before)."""
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx
    return httpx.ConnectError(message)


class RecordingHub:
    """A stand-in for `HfApi` that keeps each commit: its message, folder in the repo and files (a copy of the
    files, so that every commit can be loaded after the run). `fail` makes every upload raise it."""

    def __init__(self, root: Path, fail: Exception | None = None, fail_in_future: bool = False):
        self.root, self.fail, self.fail_in_future = root, fail, fail_in_future
        self.commits: list[SimpleNamespace] = []
        self.repos: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kw):
        self.repos.append((repo_id, kw))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, ignore_patterns=None, **kw):
        if self.fail is not None:
            if kw.get("run_as_future") and self.fail_in_future:  # what HfApi does: the error is in the Future
                future = Future()
                future.set_exception(self.fail)
                return future
            raise self.fail
        files = sorted(
            str(p.relative_to(folder_path))
            for p in Path(folder_path).rglob("*")
            if p.is_file()
            and not any(fnmatch(str(p.relative_to(folder_path)), pat) for pat in ignore_patterns or ())
        )
        snapshot = self.root / "commits" / str(len(self.commits))
        for f in files:
            (snapshot / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder_path) / f, snapshot / f)
        prefix = f"{path_in_repo}/" if path_in_repo else ""
        self.commits.append(
            SimpleNamespace(
                repo_id=repo_id,
                message=kw.get("commit_message"),
                path_in_repo=path_in_repo,
                files={prefix + f for f in files},
                snapshot=snapshot,
                token=kw.get("token"),
            )
        )
        info = SimpleNamespace(commit_url=f"https://hub/{repo_id}/commit/{len(self.commits)}", oid="0" * 40)
        if kw.get("run_as_future"):
            future = Future()
            future.set_result(info)
            return future
        return info


class ExportLogits(TrainerCallback):
    """The exported model's logits on X each time a push begins (what that commit must hold)."""

    def __init__(self):
        self.logits = []

    def on_push_begin(self, args, state, control, model=None, **kwargs):
        adapter = model.export_adapter("auto")
        was = adapter.training
        adapter.eval()
        with torch.no_grad():
            self.logits.append(adapter(X))
        adapter.train(was)


def trainer_for(out, *, mixup="adautomix", max_steps=2, callbacks=(), **kw):
    model, _ = make_model("hf_resnet")
    args = dict(max_steps=max_steps, save_strategy="steps", save_steps=1, optim="adamw_torch")
    args.update(kw)
    return AdAutoMixTrainer(
        model=model,
        args=targs(out, **args),
        mixup_args=MixupArguments(mixup=mixup, save_mix_every=1),
        train_dataset=tensor_dataset(16),
        eval_dataset=tensor_dataset(8),
        callbacks=list(callbacks),
    )


def finish(trainer, **push_kwargs):
    """The end of run_image_classification.py: metrics, state, then the push."""
    train = trainer.train()
    trainer.save_metrics("train", train.metrics)
    trainer.save_state()
    trainer.save_metrics("eval", trainer.evaluate())
    return trainer.push_to_hub(commit_message="End of training", **push_kwargs)


def load_logits(folder):
    model = wrap_classifier(AutoModelForImageClassification.from_pretrained(folder)).eval()
    with torch.no_grad():
        return model(X)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run without pushing: its final wrapper state."""
    trainer = trainer_for(tmp_path_factory.mktemp("ref"))
    trainer.train()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def export_files(tmp_path_factory):
    trainer = trainer_for(tmp_path_factory.mktemp("exp"), max_steps=1, save_strategy="no")
    out = Path(trainer.export_model(str(tmp_path_factory.mktemp("export"))))
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


GENERATOR = {"generator/config.json", "generator/model.safetensors", "generator/README.md"}
# checkpoint-N/ holds the whole training wrapper, for resuming
CHECKPOINT = {
    "model.safetensors",
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "hf_adautomix_complete.json",
}


@pytest.mark.parametrize("strategy", ["end", "every_save", "checkpoint", "all_checkpoints"])
def test_each_commit_uploads_only_loadable_exports(strategy, tmp_path, reference, export_files):
    hub = RecordingHub(tmp_path / "hub")
    out = tmp_path / "out"
    logits = ExportLogits()
    with mock.patch("transformers.trainer.hf_api", return_value=hub):
        trainer = trainer_for(
            out,
            push_to_hub=True,
            hub_model_id="me/tiny-ada",
            hub_strategy=strategy,
            hub_token=SECRET,
            callbacks=[logits],
        )
        resolve_resume(str(out), run_record(trainer.args, trainer.mixup_args), None)  # the script's recipe
        finish(trainer, dataset="tiny")

    # pushing changed nothing in training (exports read the model and leave the RNG alone)
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], reference[k]) for k in reference)

    with_checkpoints = strategy in ("checkpoint", "all_checkpoints")
    grids = {f"mixed_samples/step_{s:06d}.png" for s in (1, 2)}
    model_files = export_files | {"README.md"}
    steps = [] if strategy == "end" else [1, 2]
    expected = []
    for step in steps:
        expected.append(
            (
                f"Training in progress, step {step}",
                model_files
                | ({"hf_adautomix_run.json"})
                | {g for g in grids if int(g[-10:-4]) <= step}
                | (GENERATOR if with_checkpoints else set()),
            )
        )
        if with_checkpoints:
            folder = "last-checkpoint" if strategy == "checkpoint" else f"checkpoint-{step}"
            expected.append(
                (f"Training in progress, step {step}, checkpoint", {f"{folder}/{f}" for f in CHECKPOINT})
            )
    metrics = {"all_results.json", "train_results.json", "eval_results.json", "trainer_state.json"}
    final = (
        model_files | grids | metrics | {"hf_adautomix_run.json"} | (GENERATOR if with_checkpoints else set())
    )
    expected.append(("End of training", final))
    assert [(c.message, c.files) for c in hub.commits] == expected
    assert all(c.repo_id == "me/tiny-ada" and c.token == SECRET for c in hub.commits)

    # every model folder uploaded loads offline and is the model exported at that moment
    model_commits = [c for c in hub.commits if "config.json" in c.files]
    assert len(model_commits) == len(logits.logits) == len(steps) + 1
    for commit, expected_logits in zip(model_commits, logits.logits):
        torch.testing.assert_close(load_logits(commit.snapshot), expected_logits, rtol=0, atol=0)
    final_export = trainer.export_model(str(tmp_path / "final_export"))
    torch.testing.assert_close(load_logits(model_commits[-1].snapshot), load_logits(final_export))

    # pushed checkpoints are complete (resumable); the generator is its own loadable artefact
    for commit in hub.commits:
        if commit.path_in_repo:
            assert checkpoint_problem(str(commit.snapshot)) is None
        if "generator/config.json" in commit.files:
            assert load_generator(str(commit.snapshot / "generator")).config["mix_num"] == 3

    # the card round-trips with its eval results; no token in any uploaded or saved file
    card = ModelCard.load(model_commits[-1].snapshot / "README.md")
    assert card.data.model_name == "me/tiny-ada"
    evals = {k: v for h in trainer.state.log_history for k, v in h.items() if k.startswith("eval_")}
    results = {(r.metric_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert results[("accuracy", "top-1 (EMA teacher)")] == evals["eval_ema_accuracy"]
    files = [p for root in (tmp_path / "hub", out) for p in root.rglob("*") if p.is_file()]
    assert not [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert trainer.args.hub_token == SECRET  # hidden while saving only
    assert not (out / "_hub_staging").exists()  # staging folders are gone
    assert (
        out / "generator" / "config.json"
    ).is_file()  # the generator is exported locally in every strategy

    if strategy == "checkpoint":  # the checkpoint pushed at step 1 resumes to the same model, bit for bit
        pushed = next(c for c in hub.commits if c.path_in_repo == "last-checkpoint").snapshot
        resumed = trainer_for(tmp_path / "resumed")
        resumed.train(resume_from_checkpoint=str(pushed))
        state = resumed.model.state_dict()
        assert all(torch.equal(state[k], reference[k]) for k in reference)


@pytest.mark.parametrize("error", ["oserror", "connect", "connect_in_future"])
def test_unreachable_hub_keeps_the_export_and_says_how_to_push_later(error, tmp_path, caplog):
    if error == "oserror":
        fail = OSError("[Errno 101] Network is unreachable")
    else:
        fail = connect_error("[Errno 111] Connection refused")
    hub = RecordingHub(tmp_path / "hub", fail=fail, fail_in_future=error == "connect_in_future")
    out = tmp_path / "out"
    with mock.patch("transformers.trainer.hf_api", return_value=hub):
        trainer = trainer_for(out, push_to_hub=True, hub_model_id="me/t", hub_strategy="every_save")
        with pytest.raises(HubPushError) as info:
            finish(trainer)
    message = str(info.value)
    assert "\n" not in message and type(fail).__name__ in message
    assert f"saved locally in {out}" in message
    assert f"python examples/push_to_hub.py {out} --hub_model_id me/t" in message
    # the in-training pushes failed, were logged, and training went on
    if error == "connect_in_future":
        assert "An in-training push to the Hub repo me/t failed (ConnectError" in caplog.text
    else:
        assert "Could not push step 1 to the Hub repo me/t" in caplog.text
    torch.testing.assert_close(load_logits(out), load_logits(trainer.export_model(str(tmp_path / "again"))))
    assert ModelCard.load(out / "README.md").data.model_name == "me/t"


def test_unreachable_hub_fails_before_training(tmp_path):
    """With --push_to_hub the repo is created when the Trainer is built: a Hub that cannot be reached stops the run
    there, with what to do instead."""
    hub = RecordingHub(tmp_path / "hub")
    hub.create_repo = mock.Mock(side_effect=connect_error("[Errno 111] Connection refused"))
    with mock.patch("transformers.trainer.hf_api", return_value=hub):
        with pytest.raises(
            HubPushError, match=r"Cannot create the Hub repo me/t \(ConnectError: .*train without "
        ):
            trainer_for(tmp_path / "out", push_to_hub=True, hub_model_id="me/t", hub_private_repo=True)
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_script_ends_with_one_error_line(tmp_path):
    """The real script, its `__main__` block included, with a Hub that refuses connections."""
    out = tmp_path / "out"
    code = textwrap.dedent(
        f"""
        import runpy, sys
        from unittest import mock
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from test_push import RecordingHub, connect_error
        from pathlib import Path
        hub = RecordingHub(Path({str(tmp_path / "hub")!r}), fail=connect_error("[Errno 111] Connection refused"))
        sys.argv = [{str(ROOT / "examples/run_image_classification.py")!r}, *sys.argv[1:]]
        with mock.patch("transformers.trainer.hf_api", return_value=hub):
            runpy.run_path(sys.argv[0], run_name="__main__")
        """
    )
    args = ["--model_type", "resnet", "--cifar_stem", "--config_overrides", TINY_RESNET_OVERRIDES]
    args += ["--max_train_samples", "16", "--max_eval_samples", "8", "--per_device_train_batch_size", "8"]
    args += ["--max_steps", "2", "--use_cpu", "--dataloader_num_workers", "0", "--output_dir", str(out)]
    args += ["--mixup", "adautomix", "--push_to_hub", "--hub_model_id", "me/t", "--hub_token", SECRET]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_ADAUTOMIX_TRACEBACK", None)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Could not push to the Hub repo me/t (ConnectError: [Errno 111]")
    assert f"saved locally in {out}" in last and "examples/push_to_hub.py" in last
    assert "Traceback" not in proc.stderr
    load_logits(out)  # the export is whole
    assert (out / "README.md").is_file() and (out / "train_results.json").is_file()


TINY_RESNET_OVERRIDES = "embedding_size=8,hidden_sizes=[8,8,16,16],depths=[1,1,1,1],layer_type=basic"


# -- examples/push_to_hub.py ------------------------------------------------------------------------------------
def load_push_script():
    spec = importlib.util.spec_from_file_location("push_to_hub", ROOT / "examples" / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run saved without pushing, as run_image_classification.py leaves it (with a checkpoint and staging)."""
    out = tmp_path_factory.mktemp("run") / "out"
    trainer = trainer_for(out, hub_model_id=None)
    trainer.train()
    trainer.evaluate()
    trainer.save_model()
    (out / "_hub_staging").mkdir()
    (out / "_hub_staging" / "x.bin").write_bytes(b"0")
    (out / "last-checkpoint").mkdir()
    (out / "last-checkpoint" / "x.bin").write_bytes(b"0")
    return out, trainer


def test_push_later_uploads_the_export_under_the_new_name(finished_run, tmp_path):
    src, trainer = finished_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    assert ModelCard.load(out / "README.md").data.model_name == "out"
    hub = RecordingHub(tmp_path / "hub")
    argv = [
        str(out),
        "--hub_model_id",
        "me/later",
        "--private",
        "--commit_message",
        "later",
        "--token",
        SECRET,
    ]
    load_push_script().main(argv, api=hub)
    assert hub.repos == [("me/later", {"token": SECRET, "private": True, "exist_ok": True})]
    (commit,) = hub.commits
    assert commit.message == "later" and commit.repo_id == "me/later"
    assert {"config.json", "model.safetensors", "README.md"} <= commit.files
    assert not any(f.startswith(("checkpoint-", "_", "last-checkpoint")) for f in commit.files)
    card = ModelCard.load(commit.snapshot / "README.md")
    assert card.data.model_name == "me/later" and len(card.data.eval_results) == 8
    assert (
        card.data.eval_results[0].metric_value
        == ModelCard.load(src / "README.md").data.eval_results[0].metric_value
    )
    assert '"me/later", trust_remote_code=True' in card.text and '"out"' not in card.text
    assert "# me/later\n" in card.text
    torch.testing.assert_close(load_logits(commit.snapshot), load_logits(src))


def test_push_later_through_huggingface_hub_HfApi(finished_run, tmp_path):
    from huggingface_hub import HfApi

    src, _ = finished_run
    hub = RecordingHub(tmp_path / "hub")
    with (
        mock.patch.object(HfApi, "create_repo", lambda self, repo_id, **kw: hub.create_repo(repo_id, **kw)),
        mock.patch.object(HfApi, "upload_folder", lambda self, **kw: hub.upload_folder(**kw)),
    ):
        shutil.copytree(src, tmp_path / "out")
        load_push_script().main([str(tmp_path / "out"), "--hub_model_id", "me/x"])
    assert hub.repos[0][1]["private"] is False and "config.json" in hub.commits[0].files


def test_push_later_refuses_what_is_not_an_export(finished_run, tmp_path):
    src, _ = finished_run
    script = load_push_script()
    with pytest.raises(ValueError, match="is a training checkpoint"):
        script.push(str(src / "checkpoint-2"), "me/x", api=RecordingHub(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no exported model: config.json and weights missing"):
        script.push(str(tmp_path / "empty"), "me/x", api=RecordingHub(tmp_path))
    with pytest.raises(ValueError, match="is not a folder"):
        script.push(str(tmp_path / "nope"), "me/x", api=RecordingHub(tmp_path))
    shutil.copytree(src, tmp_path / "out")
    with pytest.raises(OSError, match=r"Could not push .* \(ConnectError: refused\)\. Nothing in"):
        script.push(str(tmp_path / "out"), "me/x", api=RecordingHub(tmp_path, fail=connect_error("refused")))


# -- the generator as its own artefact ------------------------------------------------------------------------------
@pytest.mark.parametrize("mixup", ["adautomix", "automix"])
def test_generator_round_trip_gives_the_same_masks(mixup, finished_run, tmp_path):
    trainer = finished_run[1] if mixup == "adautomix" else trainer_for(tmp_path / "t", mixup=mixup)
    generator = trainer.model.mixer.generator
    rng = torch.get_rng_state()
    folder = trainer.save_generator(str(tmp_path / "g"))
    assert torch.equal(rng, torch.get_rng_state())  # saving mid-training keeps a resumed run exact
    assert folder == str(tmp_path / "g" / "generator")
    config = json.loads((Path(folder) / "config.json").read_text())
    n = 3 if mixup == "adautomix" else 2
    channels = trainer.model.classifier.stage_channels(3)
    assert config["mix_layer"] == 3 and config["mix_num"] == n and config["in_channels"] == channels
    assert config["backbone"] == {
        "family": "transformers",
        "arch": trainer.model.classifier.arch_name,
        "num_classes": 4,
        "input_size": list(trainer.model.classifier.input_size),
        "stage": 3,
        "stage_channels": channels,
    }
    loaded = load_generator(folder)
    assert type(loaded.generator) is type(generator) and not loaded.training
    with torch.no_grad():
        for p in (
            generator.parameters()
        ):  # make the weights distinctive (trained ones are near the N(0, .01) init)
            p.add_(torch.randn_like(p) * 0.1)
        folder = save_generator(trainer, str(tmp_path / "g2"))
        loaded = load_generator(folder)
        feats = torch.randn(n, 5, channels, 8, 8)
        lam = torch.distributions.Dirichlet(torch.ones(n)).sample()
        torch.testing.assert_close(
            loaded(feats, lam, (32, 32)), generator(feats, lam, (32, 32)), rtol=0, atol=0
        )


def test_generator_refuses_mixers_without_one(tmp_path):
    trainer = trainer_for(tmp_path, mixup="mixup", max_steps=1)
    assert trainer.save_generator(str(tmp_path)) is None
    with pytest.raises(ValueError, match="has no learned generator"):
        save_generator(trainer, str(tmp_path / "g"))
    with pytest.raises(ValueError, match="config.json is missing"):
        load_generator(str(tmp_path))
