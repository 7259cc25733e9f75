"""Classifier adapters: every model family, stage taps, heads, native export, bad input."""

import json

import pytest
import torch
from conftest import FAMILIES, make_model
from torch import nn

from hf_adautomix.backbones import build_model, parse_config_overrides, wrap_classifier


@pytest.mark.parametrize("family", sorted(FAMILIES))
class TestAdapters:
    def test_stage_map_is_nchw_and_strided(self, family):
        model, size = make_model(family)
        adapter = wrap_classifier(model).eval()
        x = torch.randn(2, 3, size, size)
        feats = adapter.forward_features(x, stage=3)
        assert feats.logits.shape == (2, 4)
        assert feats.stage_map.ndim == 4 and feats.stage_map.shape[0] == 2
        assert feats.stage_map.shape[1] == adapter.stage_channels(3)
        h, w = feats.stage_map.shape[-2:]
        assert size % h == 0 and size // h == size // w  # the mask upsampling factor is the feature stride
        # the head applied to the pooled features gives the model's own logits
        torch.testing.assert_close(adapter.head(feats.pooled), feats.logits)
        torch.testing.assert_close(adapter(x), feats.logits)

    def test_new_head_matches_shape_and_is_fresh(self, family):
        model, size = make_model(family)
        adapter = wrap_classifier(model)
        head = adapter.new_head()
        linear = [m for m in head.modules() if isinstance(m, nn.Linear)][0]
        assert linear.weight.std() < 0.02 and torch.all(linear.bias == 0)
        pooled = adapter.forward_features(torch.randn(2, 3, size, size)).pooled
        assert head(pooled).shape == (2, 4)

    def test_native_export_round_trip(self, family, tmp_path):
        import timm
        from transformers import AutoModelForImageClassification

        model, size = make_model(family)
        adapter = wrap_classifier(model).eval()
        adapter.save_native(str(tmp_path), label_names=["a", "b", "c", "d"])
        if adapter.family == "timm":
            loaded = timm.create_model("local-dir:" + str(tmp_path), pretrained=True)
            assert json.loads((tmp_path / "config.json").read_text())["label_names"] == ["a", "b", "c", "d"]
        else:
            loaded = AutoModelForImageClassification.from_pretrained(str(tmp_path))
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(wrap_classifier(loaded).eval()(x), adapter(x))

    def test_mix_at_stage_hook(self, family):
        model, size = make_model(family)
        adapter = wrap_classifier(model).eval()
        x = torch.randn(3, 3, size, size)
        base = adapter(x)
        with adapter.mix_at_stage(1, lambda h: h * 0):
            zeroed = adapter(x)
        assert not torch.allclose(base, zeroed)
        torch.testing.assert_close(adapter(x), base)  # the hook is gone afterwards


def test_cifar_stem_keeps_resolution():
    model, _ = make_model("timm_resnet")
    fmap = wrap_classifier(model).forward_features(torch.randn(2, 3, 32, 32), stage=3).stage_map
    assert fmap.shape[-2:] == (8, 8)  # layer3 of the CIFAR variant at 32x32, as in the paper
    model, _ = make_model("hf_resnet")
    fmap = wrap_classifier(model).forward_features(torch.randn(2, 3, 32, 32), stage=3).stage_map
    assert fmap.shape[-2:] == (8, 8)


def test_hf_cifar_resnet_exports_remote_code_free_with_package(tmp_path):
    from transformers import AutoConfig

    model, _ = make_model("hf_resnet")
    wrap_classifier(model).save_native(str(tmp_path))
    assert AutoConfig.from_pretrained(str(tmp_path)).model_type == "cifar_resnet"
    # the architecture's code travels with the checkpoint, for users without hf_adautomix
    assert (tmp_path / "cifar_models.py").exists()
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "cifar_models.CifarResNetForImageClassification"


def test_soft_labels_never_reach_hf_model():
    model, _ = make_model("hf_resnet")
    wrap_classifier(model)(torch.randn(2, 3, 32, 32))
    assert model.config.problem_type == "single_label_classification"


class TestBadInput:
    def test_exactly_one_model_source(self):
        with pytest.raises(ValueError, match="exactly one of --model_name_or_path"):
            build_model(
                num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, model_type="resnet", timm_model="resnet18"
            )

    def test_unknown_timm_arch(self):
        with pytest.raises(ValueError, match="timm has no architecture 'not_a_model'"):
            build_model(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, timm_model="not_a_model")

    def test_unknown_model_type(self):
        with pytest.raises(ValueError, match="--model_type 'nope'"):
            build_model(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, model_type="nope")

    def test_offline_hub_id_is_one_paragraph(self):
        with pytest.raises(ValueError, match="Could not load model 'someone/unknown-model'.*--model_type"):
            build_model(
                num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, model_name_or_path="someone/unknown-model"
            )

    def test_bad_stage(self):
        model, _ = make_model("hf_resnet")
        with pytest.raises(ValueError, match="Stage 7 does not exist.*--mix_layer"):
            wrap_classifier(model).forward_features(torch.randn(1, 3, 32, 32), stage=7)

    def test_unsupported_model(self):
        with pytest.raises(TypeError, match="Unsupported model type Linear"):
            wrap_classifier(nn.Linear(3, 3))

    def test_timm_model_without_feature_info(self):
        model = nn.Linear(3, 3)
        model.pretrained_cfg, model.forward_head = {}, None
        with pytest.raises(ValueError, match="feature_info"):
            wrap_classifier(model)

    def test_config_overrides(self):
        assert parse_config_overrides("a=1,b=[1,2],c=basic,d=true") == {
            "a": 1,
            "b": [1, 2],
            "c": "basic",
            "d": True,
        }
        with pytest.raises(ValueError, match="key=value"):
            parse_config_overrides("a=1,oops")


def test_token_model_without_spatial_stages_gets_a_clear_error():
    from transformers import ViTConfig, ViTForImageClassification

    from hf_adautomix.arguments import MixupArguments
    from hf_adautomix.mixers import build_mixer

    vit = ViTForImageClassification(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=3,
        )
    )
    adapter = wrap_classifier(vit)
    assert adapter.num_stages == 3
    with pytest.raises(ValueError, match=r"spatial \(B, C, H, W\) map"):
        build_mixer(MixupArguments(mixup="adautomix"), num_classes=3, label_smoothing=0.0, classifier=adapter)


def test_other_hf_families_with_stages_work():
    from transformers import RegNetConfig, RegNetForImageClassification

    model = RegNetForImageClassification(
        RegNetConfig(
            embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], groups_width=8, num_labels=3
        )
    )
    feats = wrap_classifier(model).forward_features(torch.randn(2, 3, 64, 64), stage=3)
    assert feats.stage_map.ndim == 4 and feats.logits.shape == (2, 3)


class TestSwinTap:
    """reference §3: the released Swin-T taps stage 3 *after* its patch merging (768 x 7 x 7 at 224 px, 8·embed_dim
    channels at stride 32), as transformers' Swin does; timm merges at the start of the next stage."""

    EMBED, SIZE = 8, 224

    def models(self):
        import timm
        from transformers import SwinConfig, SwinForImageClassification

        torch.manual_seed(0)
        kw = dict(embed_dim=self.EMBED, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7)
        hf = SwinForImageClassification(SwinConfig(image_size=self.SIZE, num_labels=4, **kw))
        tm = timm.create_model("swin_tiny_patch4_window7_224", num_classes=4, **kw)
        return wrap_classifier(hf).eval(), wrap_classifier(tm).eval()

    def test_stage_maps_match_across_libraries(self):
        hf, tm = self.models()
        x = torch.randn(2, 3, self.SIZE, self.SIZE)
        for stage in range(1, 5):
            hf_map = hf.forward_features(x, stage=stage).stage_map
            tm_map = tm.forward_features(x, stage=stage).stage_map
            assert hf_map.shape == tm_map.shape, stage
            assert tm.stage_channels(stage) == hf.stage_channels(stage) == hf_map.shape[1]
        assert tm.forward_features(x, stage=3).stage_map.shape == (2, 8 * self.EMBED, 7, 7)

    def test_timm_stage_3_is_the_merged_map(self):
        _, tm = self.models()
        x = torch.randn(2, 3, self.SIZE, self.SIZE)
        feats = tm.forward_features(x, stage=3)
        _, (pre_merge,) = tm.model.forward_intermediates(x, indices=[2], norm=False)  # timm's own stage 3
        assert pre_merge.shape == (2, 4 * self.EMBED, 14, 14)
        merged = tm.model.layers[3].downsample(pre_merge.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(feats.stage_map, merged)
        torch.testing.assert_close(feats.logits, tm.model(x))  # the tap does not change the forward
        assert tm.stage_module(3) is tm.model.layers[3].downsample

    def test_adautomix_generator_sees_the_merged_map(self):
        from hf_adautomix.arguments import MixupArguments
        from hf_adautomix.mixers import build_mixer

        for adapter in self.models():
            mixer = build_mixer(
                MixupArguments(mixup="adautomix", mix_layer=3),
                num_classes=4,
                label_smoothing=0.0,
                classifier=adapter,
            )
            first_conv = next(m for m in mixer.modules() if isinstance(m, nn.Conv2d))
            assert first_conv.in_channels in (8 * self.EMBED, 8 * self.EMBED + 1)  # + the λ channel


def test_timm_hub_ids_get_the_hf_hub_prefix(monkeypatch):
    """`timm/<id>` (the Hub's name of timm models) is `hf-hub:timm/<id>` (issue 17.20): offline, the error is the
    download's, not timm's name check ('has no source prefix')."""
    from hf_adautomix.backbones.build import timm_model_id

    assert timm_model_id("timm/resnet18.tv_in1k") == "hf-hub:timm/resnet18.tv_in1k"
    assert timm_model_id("resnet18") == "resnet18"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError) as err:
        build_model(num_labels=2, id2label={0: "a", 1: "b"}, model_name_or_path="timm/no-such-model.x_in1k")
    assert "source prefix" not in str(err.value) and "hf-hub:timm/no-such-model.x_in1k" in str(err.value)


def test_scratch_timm_export_carries_no_weights_metadata(tmp_path):
    """A timm model trained from scratch (here the --cifar_stem variant) does not carry the ImageNet weights'
    pretrained_cfg facts (tag, paper_ids, license, origin_url, hub id) into its export (issue 17.17)."""
    model = build_model(
        num_labels=2, id2label={0: "a", 1: "b"}, timm_model="resnet18", cifar_stem=True,
        config_overrides="layers=[1,1,1,1]",
    )  # fmt: skip
    wrap_classifier(model).export(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())["pretrained_cfg"]
    assert not {"tag", "paper_ids", "license", "origin_url", "hf_hub_id"} & set(cfg), cfg
