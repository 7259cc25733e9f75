"""The model card: Hub metadata, both heads' results, the recipe, the gallery, load snippets; round-trips through
`huggingface_hub.ModelCard.load`; `save_model()` writes it too."""

from conftest import make_model
from huggingface_hub import ModelCard
from test_trainer import targs, tensor_dataset

from hf_adautomix import AdAutoMixTrainer, MixupArguments


def trained(tmp_path, family="hf_resnet", **kw):
    model, size = make_model(family)
    trainer = AdAutoMixTrainer(
        model=model,
        args=targs(tmp_path / "out", hub_model_id="me/tiny-ada", seed=3, **kw),
        mixup_args=MixupArguments(mixup="adautomix", save_mix_every=1),
        train_dataset=tensor_dataset(16, size),
        eval_dataset=tensor_dataset(8, size),
    )
    trainer.train()
    trainer.evaluate()
    return trainer


def test_card_metadata_results_and_round_trip(tmp_path):
    trainer = trained(tmp_path)
    trainer.card_info = {"dataset": "CIFAR-10", "dataset_id": "uoft-cs/cifar10", "finetuned_from": None}
    path = trainer.create_model_card(license="apache-2.0")
    card = ModelCard.load(path)
    data = card.data
    assert data.model_name == "me/tiny-ada" and data.library_name == "transformers"
    assert data.pipeline_tag == "image-classification" and data.license == "apache-2.0"
    assert data.datasets == ["uoft-cs/cifar10"]
    assert {"adautomix", "hf_adautomix", trainer.model.classifier.arch_name} <= set(data.tags)
    results = {(r.metric_type, r.metric_name): r.metric_value for r in data.eval_results}
    assert len(results) == 8  # top-1, top-5, NLL, ECE of the online and the EMA model
    metrics = {k: v for h in trainer.state.log_history for k, v in h.items() if k.startswith("eval_")}
    assert results[("accuracy", "top-1 (EMA teacher)")] == metrics["eval_ema_accuracy"]
    assert results[("ece", "ECE (online)")] == metrics["eval_ece"]
    text = card.text
    assert "| `--mix_num` | 3 |" in text and "| `--adv_weight` | 0.3 |" in text  # the whole recipe
    assert "seed: 3" in text and "= 4" in text  # total batch 4 × 1 × 1
    assert "torch " in text and "transformers " in text and "device: cpu" in text
    assert "![mixed samples](mixed_samples/step_000002.png)" in text
    assert (tmp_path / "out" / "mixed_samples" / "step_000002.png").is_file()
    assert '"me/tiny-ada", trust_remote_code=True' in text  # the CIFAR ResNet's code travels with it
    assert "@inproceedings{qin2024adversarial" in text


def test_save_model_writes_the_card(tmp_path):
    trainer = trained(tmp_path)
    trainer.save_model()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.model_name == "me/tiny-ada" and len(card.data.eval_results) == 8


def test_timm_cifar_card_says_to_import_us(tmp_path):
    trainer = trained(tmp_path, family="timm_resnet")
    trainer.save_model()
    text = (tmp_path / "out" / "README.md").read_text()
    assert "import hf_adautomix  # registers the CIFAR variant (resnet18_cifar)" in text
    assert 'timm.create_model("hf-hub:me/tiny-ada", pretrained=True)' in text


def test_card_names_what_it_measured_and_exported(tmp_path):
    """Issue 17.25 / 17.17: the model-index names the validation source, the exported row is marked, fine-tuned
    runs get base_model, the card has intended uses and limitations, and a --license flag exists."""
    from hf_adautomix.arguments import ModelArguments

    assert ModelArguments(license="mit").license == "mit"
    trainer = trained(tmp_path)
    trainer.card_info = {
        "dataset": "image folder 'data/train'",
        "validation_dataset": "image folder 'data/val'",
        "finetuned_from": "timm/resnet18.tv_in1k",
        "license": "mit",
    }
    card = ModelCard.load(trainer.create_model_card())
    assert card.data.license == "mit" and card.data.base_model == "timm/resnet18.tv_in1k"
    assert {r.dataset_name for r in card.data.eval_results} == {"image folder 'data/val'"}
    assert {r.dataset_split for r in card.data.eval_results} == {"validation"}
    text = card.text
    assert "## Intended uses and limitations" in text
    assert "| **EMA teacher (the exported weights)** |" in text and "| online |" in text
    assert "validation split: image folder 'data/val'" in text
    # a local folder is no Hub id: no base_model
    trainer.card_info = {"dataset": "d", "finetuned_from": str(tmp_path)}
    assert ModelCard.load(trainer.create_model_card()).data.base_model is None


def test_card_snippets_use_the_path_as_given_and_say_what_to_install(tmp_path, monkeypatch):
    """Issue 17.22: without a Hub id the snippets load the output folder as the user gave it, not its base name;
    17.21: the first usage lines say what to install and import, and why, before any snippet."""
    monkeypatch.chdir(tmp_path)
    model, size = make_model("timm_resnet")
    trainer = AdAutoMixTrainer(
        model=model,
        args=targs(tmp_path, output_dir="runs/r18", seed=3),
        mixup_args=MixupArguments(mixup="none"),
        train_dataset=tensor_dataset(8, size),
        eval_dataset=tensor_dataset(4, size),
    )
    trainer.train()
    trainer.save_model()
    text = (tmp_path / "runs" / "r18" / "README.md").read_text()
    assert 'model="runs/r18"' in text and 'model="r18"' not in text
    assert 'timm.create_model("local-dir:runs/r18", pretrained=True)' in text
    usage = text.split("## Load it", 1)[1]
    assert usage.index("pip install hf_adautomix") < usage.index("```")
