"""Tests of the classic mixers (hf_adautomix/mixers/), torchvision `TestCutMixMixUp` style: one class per
mixer, parametrised over variants. Label weights are checked against the pixels: x[i] is the constant image i + 1, so
the fraction of sample i's own content in x̃[i] is read off the mixed pixels."""

from __future__ import annotations

import copy
import itertools
import sys

import numpy as np
import pytest
import torch
from torch import nn

from hf_adautomix import mixers as C
from hf_adautomix.arguments import MIXUP_CHOICES, MixupArguments
from hf_adautomix.backbones import build_model, wrap_classifier
from hf_adautomix.mixers import base, puzzlemix, smoothmix
from hf_adautomix.mixers import box as box_masks

K = 12  # classes; y = arange(B) so sample i has class i


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add barrier waits (seconds per step on a busy 2-core runner)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def adapter():
    torch.manual_seed(0)
    model = build_model(
        num_labels=K,
        id2label={i: str(i) for i in range(K)},
        model_type="resnet",
        config_overrides="embedding_size=8,hidden_sizes=[8,8,16,16],depths=[1,1,1,1],layer_type=basic",
    )
    return wrap_classifier(model)


def const_batch(batch=6, height=16, width=16, channels=3, dtype=torch.float32):
    """x[i] ≡ i + 1 (so no two samples share a value), y = arange(B)."""
    x = (
        (torch.arange(batch, dtype=dtype) + 1)
        .view(-1, 1, 1, 1)
        .expand(batch, channels, height, width)
        .contiguous()
    )
    return x, torch.arange(batch)


def own_fraction(x_mix, i, j):
    """Fraction of x̃[i]'s content that is sample i's own (x[i] ≡ i + 1, partner x[j] ≡ j + 1), per pixel averaged."""
    return float(((x_mix[i].double() - (j + 1)) / ((i + 1) - (j + 1))).mean())


def check_targets_match_pixels(x_mix, target, perm, smoothing=0.0):
    moved = 0
    for i, j in enumerate(perm.tolist()):
        off = smoothing / K
        expect_own = own_fraction(x_mix, i, j) if i != j else 1.0
        own = (target[i, i].item() - off) / (1 - smoothing)
        assert own == pytest.approx(expect_own, abs=1e-5), (i, j)
        if i != j:
            moved += 1
            assert (target[i, j].item() - off) / (1 - smoothing) == pytest.approx(1 - expect_own, abs=1e-5)
    assert torch.allclose(target.sum(1), torch.ones(len(perm)))
    return moved


def make_args(**kw):
    return MixupArguments(**kw)


class _InputMixerContract:
    """Checks every InputMixer passes; subclasses set `mixer_cls` and may override `make`."""

    mixer_cls: type
    extra: dict = {}

    def make(self, **kw):
        return self.mixer_cls(num_classes=K, **{**self.extra, **kw})

    @pytest.mark.parametrize("seed", range(6))
    @pytest.mark.parametrize("size", [(16, 16), (24, 40)])
    def test_label_weights_equal_pixel_fractions(self, seed, size):
        mixer = self.make()
        x, y = const_batch(6, *size)
        torch.manual_seed(seed)
        params = mixer.get_params(x, y)
        x_mix, target = mixer.apply(x, y, params)
        check_targets_match_pixels(x_mix, target, params["perm"])
        moved = params["perm"] != torch.arange(6)
        if "lam" in params and moved.any():  # the logged λ is the actual own-content fraction
            lam = torch.as_tensor(params["lam"], dtype=torch.float32).expand(6)
            assert torch.allclose(lam[moved], target[torch.arange(6), y][moved], atol=1e-5)

    @pytest.mark.parametrize("smoothing", [0.0, 0.1])
    def test_label_smoothing(self, smoothing):
        mixer = self.make(label_smoothing=smoothing)
        x, y = const_batch(6)
        torch.manual_seed(1)
        params = mixer.get_params(x, y)
        x_mix, target = mixer.apply(x, y, params)
        check_targets_match_pixels(x_mix, target, params["perm"], smoothing)
        assert target.min().item() >= smoothing / K - 1e-7

    @pytest.mark.parametrize("batch, size", [(5, (16, 16)), (1, (16, 16)), (3, (24, 40)), (4, (17, 9))])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_shapes_and_dtypes(self, batch, size, dtype):
        mixer = self.make()
        x = torch.randn(batch, 3, *size, dtype=dtype)
        y = torch.randint(0, K, (batch,))
        torch.manual_seed(0)
        x_mix, target = mixer.apply(x, y, mixer.get_params(x, y))
        assert x_mix.shape == x.shape and x_mix.dtype == dtype
        assert target.shape == (batch, K) and target.dtype == torch.float32
        assert torch.allclose(target.sum(1), torch.ones(batch))

    def test_seeded_runs_are_reproducible(self):
        mixer = self.make()
        x, y = torch.randn(6, 3, 16, 16), torch.randint(0, K, (6,))
        outs = []
        for _ in range(2):
            torch.manual_seed(123)
            outs.append(mixer.apply(x, y, mixer.get_params(x, y)))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
        torch.manual_seed(124)
        other = mixer.apply(x, y, mixer.get_params(x, y))
        assert not torch.equal(outs[0][0], other[0])

    def test_input_not_modified(self):
        mixer = self.make()
        x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
        ref = x.clone()
        torch.manual_seed(0)
        mixer.apply(x, y, mixer.get_params(x, y))
        assert torch.equal(x, ref)

    def test_forward_and_mix_prob(self, adapter):
        x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
        torch.manual_seed(0)
        out = self.make()(x, y, adapter)
        assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
        adapter.eval()  # deterministic logits for the comparison below
        try:
            clean = self.make(mix_prob=0.0)(x, y, adapter)["loss"]
            assert torch.allclose(clean, base.cross_entropy(adapter(x), y))
        finally:
            adapter.train()

    def test_bad_alpha(self):
        for bad in (0, -1.0, float("nan"), "1"):
            with pytest.raises(ValueError, match="alpha"):
                self.make(alpha=bad)

    def test_bad_common_arguments(self):
        with pytest.raises(ValueError, match="num_classes"):
            self.mixer_cls(num_classes=1, **self.extra)
        with pytest.raises(ValueError, match="mix_prob"):
            self.make(mix_prob=1.5)
        with pytest.raises(ValueError, match="label_smoothing"):
            self.make(label_smoothing=1.0)

    def test_rejects_non_image_batches(self):
        mixer = self.make()
        x, y = torch.randn(4, 16), torch.arange(4)
        with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
            torch.manual_seed(0)
            mixer.apply(x, y, mixer.get_params(x, y))


# ---------------------------------------------------------------------------------------------------------------
class TestMixUp(_InputMixerContract):
    mixer_cls = C.MixUp

    def test_rejects_non_image_batches(self):
        """MixUp is shape-agnostic: it mixes feature vectors too."""
        x, y = torch.randn(4, 16), torch.arange(4)
        x_mix, target = self.make().apply(x, y, {"lam": 0.25, "perm": torch.tensor([1, 2, 3, 0])})
        assert torch.allclose(x_mix, 0.25 * x + 0.75 * x[[1, 2, 3, 0]], atol=1e-6)

    @pytest.mark.parametrize("lam", [0.0, 1.0])
    def test_identity_mixes(self, lam):
        mixer = self.make()
        x, y = const_batch(5)
        perm = torch.tensor([1, 2, 3, 4, 0])
        x_mix, target = mixer.apply(x, y, {"lam": lam, "perm": perm})
        expected = x if lam == 1.0 else x[perm]
        assert torch.equal(x_mix, expected)
        assert torch.equal(target, base.one_hot(y if lam == 1.0 else y[perm], K))

    def test_one_lambda_per_batch(self):
        x, y = const_batch(6)
        torch.manual_seed(3)
        params = self.make().get_params(x, y)
        _, target = self.make().apply(x, y, params)
        moved = params["perm"] != torch.arange(6)
        assert torch.allclose(target[torch.arange(6), y][moved], torch.tensor(params["lam"]))


class TestCutMix(_InputMixerContract):
    mixer_cls = C.CutMix

    @pytest.mark.parametrize("box", [(0, 5, 11, 16), (0, 16, 0, 16), (3, 3, 4, 9)])
    def test_box_clipped_at_border(self, box):
        # centre (1, 15) with an 8x8 cut on a 16x16 image is clipped to rows [0, 5), cols [11, 16)
        assert box_masks._clip_box(1, 15, 8, 8, 16, 16) == (0, 5, 11, 16)
        mixer = self.make()
        x, y = const_batch(4)
        perm = torch.tensor([1, 2, 3, 0])
        x_mix, target = mixer.apply(x, y, {"perm": perm, "box": box})
        y1, y2, x1, x2 = box
        area = (y2 - y1) * (x2 - x1)
        assert target[0, 0].item() == pytest.approx(1 - area / 256)
        assert target[0, 1].item() == pytest.approx(area / 256)
        check_targets_match_pixels(x_mix, target, perm)
        assert (x_mix[0, :, y1:y2, x1:x2] == 2).all()

    @pytest.mark.parametrize("lam", [0.0, 1.0])
    def test_identity_mixes(self, lam):
        mixer = self.make()
        x, y = const_batch(4)
        perm = torch.tensor([1, 2, 3, 0])
        box = (0, 16, 0, 16) if lam == 0.0 else (5, 5, 2, 9)
        x_mix, target = mixer.apply(x, y, {"perm": perm, "box": box, "lam": lam})
        assert torch.equal(x_mix, x if lam == 1.0 else x[perm])
        assert torch.equal(target, base.one_hot(y if lam == 1.0 else y[perm], K))

    def test_sampled_box_is_clipped_and_lam_recomputed(self):
        mixer = self.make(alpha=1.0)
        x, y = const_batch(4, 16, 24)
        for seed in range(20):
            torch.manual_seed(seed)
            p = mixer.get_params(x, y)
            y1, y2, x1, x2 = p["box"]
            assert 0 <= y1 <= y2 <= 16 and 0 <= x1 <= x2 <= 24
            assert p["lam"] == pytest.approx(1 - (y2 - y1) * (x2 - x1) / (16 * 24))

    def test_permutation_avoids_fixed_points(self):
        x, y = const_batch(8)
        fixed = 0
        for seed in range(30):
            torch.manual_seed(seed)
            fixed += int((self.make().get_params(x, y)["perm"] == torch.arange(8)).sum())
        assert fixed == 0


class TestSaliencyMix(_InputMixerContract):
    mixer_cls = C.SaliencyMix

    def test_missing_opencv_raises_install_hint(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
        with pytest.raises(ImportError, match=r'pip install "hf_adautomix\[saliency\]"'):
            self.make()

    def test_box_centred_on_saliency_peak(self):
        mixer = self.make()
        x = torch.zeros(3, 3, 32, 32) - 1.5  # normalised-looking values
        x[:, :, 20:23, 8:11] = 2.0  # one salient blob in every image
        torch.manual_seed(0)
        cy, cx = mixer.saliency_peak(x[0])
        assert 19 <= cy <= 23 and 7 <= cx <= 11
        params = mixer.get_params(x, torch.arange(3))
        y1, y2, x1, x2 = params["box"]
        assert params["peak"] == (cy, cx)
        assert y1 <= cy <= y2 and x1 <= cx <= x2

    @pytest.mark.parametrize("channels", [1, 3, 4])
    def test_any_channel_count(self, channels):
        x, y = const_batch(3, 16, 16, channels=channels)
        torch.manual_seed(0)
        x_mix, target = self.make().apply(x, y, self.make().get_params(x, y))
        assert x_mix.shape == x.shape


class TestResizeMix(_InputMixerContract):
    mixer_cls = C.ResizeMix

    @pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
    def test_whole_partner_resized_into_box(self, interpolation):
        mixer = self.make(interpolation=interpolation)
        x = torch.zeros(2, 1, 16, 16)
        x[1, :, :8] = 1.0  # partner: top half bright
        perm = torch.tensor([1, 0])
        x_mix, target = mixer.apply(x, torch.arange(2), {"perm": perm, "box": (4, 12, 2, 10)})
        patch = x_mix[0, 0, 4:12, 2:10]
        assert torch.allclose(
            patch, torch.nn.functional.interpolate(x[1:2], size=(8, 8), mode=interpolation)[0, 0]
        )
        assert target[0, 0].item() == pytest.approx(1 - 64 / 256)

    @pytest.mark.parametrize("lam", [0.0, 1.0])
    def test_identity_mixes(self, lam):
        x, y = const_batch(4)
        perm = torch.tensor([1, 2, 3, 0])
        box = (0, 16, 0, 16) if lam == 0.0 else (3, 3, 0, 16)
        x_mix, target = self.make().apply(x, y, {"perm": perm, "box": box})
        assert torch.equal(x_mix, x if lam == 1.0 else x[perm])
        assert torch.equal(target, base.one_hot(y if lam == 1.0 else y[perm], K))

    def test_tau_within_scope(self):
        mixer = self.make(alpha=0.2, scope=(0.3, 0.5))
        x, y = const_batch(2, 32, 32)
        for seed in range(20):
            torch.manual_seed(seed)
            assert 0.3 <= mixer.get_params(x, y)["tau"] <= 0.5

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="scope"):
            self.make(scope=(0.8, 0.1))
        with pytest.raises(ValueError, match="interpolation"):
            self.make(interpolation="bicubic")

    def test_from_args_picks_interpolation_per_family(self, adapter):
        args = make_args(mixup="resizemix")
        assert (
            C.ResizeMix.from_args(args, num_classes=K, label_smoothing=0.0, classifier=adapter).interpolation
            == "nearest"
        )
        vit = type("FakeViT", (), {"is_transformer_like": True})()
        assert (
            C.ResizeMix.from_args(args, num_classes=K, label_smoothing=0.0, classifier=vit).interpolation
            == "bilinear"
        )


class _MaskContract(_InputMixerContract):
    @pytest.mark.parametrize("lam", [0.0, 1.0])
    def test_identity_mixes(self, lam):
        x, y = const_batch(4, 16, 24)
        perm = torch.tensor([1, 2, 3, 0])
        mask = torch.full((1, 1, 16, 24), lam)
        x_mix, target = self.make().apply(x, y, {"perm": perm, "mask": mask})
        assert torch.equal(x_mix, x if lam == 1.0 else x[perm])
        assert torch.equal(target, base.one_hot(y if lam == 1.0 else y[perm], K))


class TestFMix(_MaskContract):
    mixer_cls = C.FMix

    @pytest.mark.parametrize("size", [(32, 32), (24, 40), (15, 9)])
    def test_binary_mask_with_lambda_pixels(self, size):
        mixer = self.make(alpha=1.0)
        x, y = const_batch(4, *size)
        for seed in range(10):
            torch.manual_seed(seed)
            p = mixer.get_params(x, y)
            mask = p["mask"]
            assert set(mask.unique().tolist()) <= {0.0, 1.0}
            n_pix = size[0] * size[1]
            assert mask.sum().item() == pytest.approx(p["lam"] * n_pix)
            assert p["lam"] * n_pix == pytest.approx(round(p["lam"] * n_pix))  # ⌈λHW⌉ or ⌊λHW⌋ pixels

    def test_low_frequency_mask_is_smooth(self):
        # a 1/f³ image has far fewer mask edges than a random binary mask with the same λ
        torch.manual_seed(0)
        mixer = self.make(alpha=1.0)
        x, y = const_batch(2, 32, 32)
        edges = []
        for seed in range(5):
            torch.manual_seed(seed)
            m = mixer.get_params(x, y)["mask"][0, 0]
            edges.append(((m[1:] != m[:-1]).float().mean() + (m[:, 1:] != m[:, :-1]).float().mean()).item())
        assert max(edges) < 0.25

    def test_bad_decay_power(self):
        with pytest.raises(ValueError, match="decay_power"):
            self.make(decay_power=0)


class TestGridMix(_MaskContract):
    mixer_cls = C.GridMix

    def test_grid_of_holes(self):
        mixer = self.make(alpha=1.0, cut_area_ratio=1.0, cut_aspect_ratio=1.0, n_holes=4)
        x, y = const_batch(2, 32, 32)
        torch.manual_seed(0)
        p = mixer.get_params(x, y)
        holes = 1 - p["mask"][0, 0]
        # the crop is the whole image and 4 cells of 8 px tile each axis: the hole pattern repeats every 8 px
        assert torch.equal(holes[:8, :8], holes[8:16, 8:16]) and torch.equal(holes[:8, :8], holes[24:, 16:24])
        assert 0 < holes.sum() < 32 * 32

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="n_holes"):
            self.make(n_holes=(0, 3))
        with pytest.raises(ValueError, match="cut_area_ratio"):
            self.make(cut_area_ratio=(0.5, 1.5))
        with pytest.raises(ValueError, match="cut_aspect_ratio"):
            self.make(cut_aspect_ratio=(0.0, 2.0))


class TestSmoothMix(_MaskContract):
    mixer_cls = C.SmoothMix

    @pytest.mark.parametrize("size", [(32, 32), (24, 40)])
    def test_label_order_is_own_content(self, monkeypatch, size):
        """§11 B8: x̃ = (1 − G) ⊙ x + G ⊙ x[perm], so the weight of y is mean(1 − G), not mean(G) (OpenMixup)."""
        height, width = size
        # pin the geometry: centre of the image, σ = 0.25 · side
        monkeypatch.setattr(smoothmix, "_randint", lambda lo, hi: hi // 2)
        monkeypatch.setattr(smoothmix, "_uniform", lambda lo, hi: 0.25)
        rows = torch.arange(height, dtype=torch.float32).view(-1, 1) - (height - 1) / 2
        cols = torch.arange(width, dtype=torch.float32).view(1, -1) - (width - 1) / 2
        gauss = torch.exp(-(rows**2 / (2 * (0.25 * height) ** 2) + cols**2 / (2 * (0.25 * width) ** 2)))
        mixer = self.make()
        x, y = const_batch(4, height, width)
        p = mixer.get_params(x, y)
        p["perm"] = perm = torch.tensor([1, 2, 3, 0])
        x_mix, target = mixer.apply(x, y, p)
        assert torch.allclose(p["mask"][0, 0], 1 - gauss, atol=1e-6)
        r, c = height // 2, width // 2  # at the Gaussian's peak the partner dominates
        assert own_fraction(x_mix[:, :, r : r + 1, c : c + 1], 0, 1) < 0.01
        assert own_fraction(x_mix[:, :, :1, :1], 0, 1) > 0.5  # the corners are mostly x's own
        assert target[0, 0].item() == pytest.approx(float((1 - gauss).mean()), abs=1e-6)
        assert target[0, 1].item() == pytest.approx(float(gauss.mean()), abs=1e-6)
        assert float(gauss.mean()) < 0.4  # the swapped order would be visible
        check_targets_match_pixels(x_mix, target, perm)

    def test_bad_alpha(self):
        with pytest.raises(TypeError, match="alpha"):  # SmoothMix has no α (its ratio comes from σ)
            C.SmoothMix(alpha=1.0, num_classes=K)

    def test_mix_alpha_warns_it_has_no_effect(self, caplog):
        with caplog.at_level("WARNING"):
            C.SmoothMix.from_args(
                make_args(mixup="smoothmix", mix_alpha=0.5),
                num_classes=K,
                label_smoothing=0.0,
                classifier=None,
            )
        assert "no effect" in caplog.text

    def test_bad_sigma(self):
        with pytest.raises(ValueError, match="sigma_range"):
            self.make(sigma_range=(0.0, 0.5))


# ---------------------------------------------------------------------------------------------------------------
class TestManifoldMix:
    def make(self, **kw):
        return C.ManifoldMix(num_classes=K, **kw)

    @pytest.mark.parametrize("layer", [1, 2])
    def test_hook_fires_at_chosen_stage(self, adapter, layer):
        adapter.eval()
        try:
            x, y = torch.randn(5, 3, 16, 16), torch.arange(5)
            clean = {}
            handle = adapter.stage_module(layer).register_forward_hook(
                lambda m, i, o: clean.setdefault("h", o)
            )
            with torch.no_grad():
                adapter(x)
            handle.remove()
            h = clean["h"][0] if isinstance(clean["h"], tuple) else clean["h"]
            seen = []
            handle = adapter.stage_module(layer + 1).register_forward_pre_hook(
                lambda m, args: seen.append(args[0])
            )
            params = {"lam": 0.3, "perm": torch.tensor([4, 0, 1, 2, 3]), "layer": layer}
            with torch.no_grad():
                logits, target = self.make().mixed_logits(x, y, adapter, params)
            handle.remove()
            assert len(seen) == 1
            assert torch.allclose(seen[0], 0.3 * h + 0.7 * h[params["perm"]], atol=1e-6)
            assert torch.allclose(target, base.mix_target(y, params["perm"], 0.3, K))
            assert torch.allclose(target[0, 0], torch.tensor(0.3)) and torch.allclose(
                target[0, 4], torch.tensor(0.7)
            )
        finally:
            adapter.train()

    def test_layer_zero_mixes_the_input(self, adapter):
        x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
        seen = []
        handle = adapter.model.register_forward_pre_hook(
            lambda m, args, kwargs: seen.append(kwargs.get("pixel_values", args[0] if args else None)),
            with_kwargs=True,
        )
        params = {"lam": 0.25, "perm": torch.tensor([1, 2, 3, 0]), "layer": 0}
        try:
            _, target = self.make().mixed_logits(x, y, adapter, params)
        finally:
            handle.remove()
        assert torch.allclose(seen[0], 0.25 * x + 0.75 * x[params["perm"]], atol=1e-6)
        assert torch.allclose(target[:, :4].diagonal(), torch.full((4,), 0.25))

    @pytest.mark.parametrize("layer", [0, 1, 2])
    def test_lambda_one_is_clean(self, adapter, layer):
        adapter.eval()
        try:
            x, y = torch.randn(3, 3, 24, 40), torch.arange(3)
            with torch.no_grad():
                logits, target = self.make().mixed_logits(
                    x, y, adapter, {"lam": 1.0, "perm": torch.tensor([2, 0, 1]), "layer": layer}
                )
                assert torch.allclose(logits, adapter(x), atol=1e-6)
            assert torch.equal(target, base.one_hot(y, K))
        finally:
            adapter.train()

    def test_forward_draws_layer_and_is_reproducible(self, adapter):
        mixer = self.make(alpha=2.0)
        x, y = torch.randn(5, 3, 16, 16), torch.arange(5)
        layers = set()
        for seed in range(12):
            torch.manual_seed(seed)
            layers.add(mixer.get_params(x, y)["layer"])
        assert layers == {0, 1, 2}
        losses = []
        for _ in range(2):
            torch.manual_seed(7)
            losses.append(mixer(x, y, adapter)["loss"])
        assert torch.equal(losses[0], losses[1])
        losses[0].backward()

    def test_from_args_default_alpha(self, adapter):
        m = C.ManifoldMix.from_args(
            make_args(mixup="manifoldmix"), num_classes=K, label_smoothing=0.1, classifier=adapter
        )
        assert m.alpha == 2.0 and m.layers == (0, 1, 2) and m.label_smoothing == 0.1

    def test_needs_adapter_for_hidden_layers(self):
        plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, K))
        x, y = torch.randn(2, 3, 8, 8), torch.arange(2)
        with pytest.raises(TypeError, match="mix_at_stage"):
            self.make().mixed_logits(x, y, plain, {"lam": 0.5, "perm": torch.tensor([1, 0]), "layer": 1})

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="alpha"):
            self.make(alpha=0.0)
        with pytest.raises(ValueError, match="layers"):
            self.make(layers=())
        with pytest.raises(ValueError, match="layers"):
            self.make(layers=(0, -1))


# ---------------------------------------------------------------------------------------------------------------
SOLVERS = ["swap"] + (["gco"] if puzzlemix._import_gco() is not None else [])


class TestPuzzleMix:
    def make(self, **kw):
        return C.PuzzleMix(num_classes=K, **kw)

    def test_saliency_leaves_no_parameter_grads_and_restores_modes(self, adapter):
        adapter.train()
        adapter.zero_grad(set_to_none=True)
        bn_stats = [b.clone() for n, b in adapter.named_buffers() if "running_mean" in n]
        x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
        sal = C.PuzzleMix.saliency(x, y, adapter)
        assert sal.shape == (4, 16, 16) and (sal >= 0).all() and sal.sum() > 0
        assert all(p.grad is None for p in adapter.parameters())
        assert all(m.training for m in adapter.modules())
        # eval mode: the saliency pass does not move BN statistics
        assert all(
            torch.equal(a, b)
            for a, b in zip(bn_stats, [b for n, b in adapter.named_buffers() if "running_mean" in n])
        )

    @pytest.mark.parametrize("graph_cut", SOLVERS)
    def test_mixer_call_leaves_no_grads_but_loss_backward_does(self, adapter, graph_cut):
        adapter.zero_grad(set_to_none=True)
        x, y = torch.randn(5, 3, 16, 16), torch.arange(5)
        torch.manual_seed(0)
        out = self.make(graph_cut=graph_cut)(x, y, adapter)
        assert all(p.grad is None for p in adapter.parameters())
        assert 0.0 <= out["lam"].item() <= 1.0
        out["loss"].backward()
        assert all(p.grad is not None for p in adapter.parameters() if p.requires_grad)
        adapter.zero_grad(set_to_none=True)

    @pytest.mark.parametrize("graph_cut", SOLVERS)
    @pytest.mark.parametrize("transport", [False, True])
    @pytest.mark.parametrize("size", [(16, 16), (24, 40)])
    def test_mask_levels_and_per_sample_lambda(self, graph_cut, transport, size):
        mixer = self.make(graph_cut=graph_cut, transport=transport)
        x, y = const_batch(5, *size)
        saliency = torch.rand(5, *size) ** 4
        lams = []
        for seed in range(4):
            torch.manual_seed(seed)
            p = mixer.get_params(x, y, saliency=saliency)
            mask = p["mask"]
            assert mask.shape == (5, 1, *size)
            assert set(mask.unique().tolist()) <= {0.0, 0.5, 1.0}
            assert torch.allclose(p["lam"], mask.mean(dim=(1, 2, 3)))
            x_mix, target = mixer.apply(x, y, p)
            perm = p["perm"]
            moved = perm != torch.arange(5)
            assert torch.allclose(target[torch.arange(5), y][moved], p["lam"][moved])
            if not transport:  # without block moves the pixels are exactly the mask mix
                check_targets_match_pixels(x_mix, target, perm)
            lams.append(p["lam"])
        assert torch.cat(lams).std() > 0  # λ varies per sample / per batch

    def test_transport_moves_each_cell_at_most_once(self):
        mixer = self.make(graph_cut=SOLVERS[-1])
        x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
        for seed in range(4):
            torch.manual_seed(seed)
            p = mixer.get_params(x, y, saliency=torch.rand(4, 32, 32))
            n = p["grid"][0] * p["grid"][1]
            for src in (p["src1"], p["src2"]):
                assert src.shape == (4, n) and src.min() >= -1 and src.max() < n
                for row in src:
                    used = row[row >= 0]
                    assert used.unique().numel() == used.numel()  # a partial permutation
        # the identity assignment leaves images unchanged; −1 leaves a cell empty
        ident = torch.arange(64).expand(4, 64).clone()
        assert torch.equal(C.transport_image(x, ident, (8, 8)), x)
        ident[:, 0] = -1
        assert (C.transport_image(x, ident, (8, 8))[:, :, :4, :4] == 0).all()

    def test_transport_matches_dense_reference(self):
        """The authors' dense (B, n, n) greedy plan, written out, gives the same assignment (ties included)."""

        def dense(mask, sal, eps):
            b, h, w = mask.shape
            n = h * w
            cost = eps * puzzlemix._transport_cost(h, w).unsqueeze(0) - sal.reshape(b, n, 1) * (
                mask > 0
            ).float().reshape(b, 1, n)
            for _ in range(max(h, w)):
                plan = torch.zeros_like(cost).scatter_(-1, cost.argmin(-1, keepdim=True), 1)
                win = torch.zeros_like(cost).scatter_(-2, (plan * cost).argmin(-2, keepdim=True), 1) * plan
                cost += (1 - win) * plan
            return torch.where(win.sum(1) > 0, win.argmax(1), -1)

        g = torch.Generator().manual_seed(0)
        for h, w in [(2, 2), (4, 4), (8, 8), (6, 10)]:
            mask = (torch.rand(5, h, w, generator=g) * 3).floor() / 2  # {0, 0.5, 1}
            sal = torch.rand(5, h, w, generator=g) ** 3
            sal = sal / sal.sum((1, 2), keepdim=True)
            for m in (mask, 1 - mask, torch.zeros_like(mask), torch.ones_like(mask)):
                assert torch.equal(C.mask_transport(m, sal, 0.8), dense(m, sal, 0.8))

    def test_transport_moves_salient_block_into_visible_area(self):
        # image 1 is visible only in the left half; its salient block sits on the right: transport brings it over
        mask = torch.zeros(1, 4, 4)
        mask[:, :, :2] = 1.0
        sal = torch.zeros(1, 4, 4)
        sal[0, 1, 3] = 1.0
        sources = C.mask_transport(mask, sal, eps=0.8)[0]
        dst = int((sources == 1 * 4 + 3).nonzero())
        assert mask[0].flatten()[dst] == 1

    @pytest.mark.parametrize("lam", [0.0, 1.0])
    def test_identity_mixes(self, lam):
        x, y = const_batch(4)
        perm = torch.tensor([1, 2, 3, 0])
        mask = torch.full((4, 1, 16, 16), lam)
        x_mix, target = self.make().apply(x, y, {"perm": perm, "mask": mask})
        assert torch.equal(x_mix, x if lam == 1.0 else x[perm])
        assert torch.equal(target, base.one_hot(y if lam == 1.0 else y[perm], K))

    @pytest.mark.parametrize("batch, size", [(3, (16, 16)), (1, (8, 8)), (2, (24, 40))])
    def test_shapes_odd_batches_and_reproducible(self, batch, size):
        mixer = self.make()
        x, y, sal = torch.randn(batch, 3, *size), torch.randint(0, K, (batch,)), torch.rand(batch, *size)
        outs = []
        for _ in range(2):
            torch.manual_seed(5)
            outs.append(mixer.apply(x, y, mixer.get_params(x, y, saliency=sal)))
        assert outs[0][0].shape == x.shape and outs[0][1].shape == (batch, K)
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])

    def test_swap_solver_is_exact_on_binary_problems(self):
        rng = np.random.default_rng(0)
        pairwise = np.array([[0, 1], [1, 0]], dtype=np.int32)
        for _ in range(10):
            unary = rng.integers(0, 50, size=(3, 3, 2)).astype(np.int32)
            cv, ch = rng.integers(0, 30, size=(2, 3)), rng.integers(0, 30, size=(3, 2))
            best = min(
                C.grid_energy(np.array(lab).reshape(3, 3), unary, pairwise, cv, ch)
                for lab in itertools.product((0, 1), repeat=9)
            )
            got = C.alpha_beta_swap(unary, pairwise, cv, ch)
            assert C.grid_energy(got, unary, pairwise, cv, ch) == best

    def test_swap_solver_matches_gco(self):
        gco = puzzlemix._import_gco()
        rng = np.random.default_rng(1)
        for n, n_labels in [(2, 3), (4, 3), (8, 3), (8, 4), (16, 3)]:
            unary = rng.integers(0, 2000, size=(n, n, n_labels)).astype(np.int32)
            pairwise = (np.subtract.outer(np.arange(n_labels), np.arange(n_labels)) ** 2).astype(np.int32)
            cv = rng.integers(0, 300, size=(n - 1, n)).astype(np.int32)
            ch = rng.integers(0, 300, size=(n, n - 1)).astype(np.int32)
            ours = C.alpha_beta_swap(unary, pairwise, cv, ch)
            theirs = np.asarray(gco.cut_grid_graph(unary, pairwise, cv, ch, algorithm="swap")).reshape(n, n)
            assert np.array_equal(ours, theirs)

    def test_explicit_gco_without_it_names_the_extra(self, monkeypatch):
        monkeypatch.setattr(puzzlemix, "_import_gco", lambda: None)
        with pytest.raises(ImportError, match=r"hf_adautomix\[puzzlemix\]"):
            self.make(graph_cut="gco")
        assert self.make(graph_cut="auto").graph_cut == "swap"

    def test_bad_arguments(self):
        for kw, name in [
            ({"alpha": 0}, "alpha"),
            ({"n_labels": 5}, "n_labels"),
            ({"block_nums": (1,)}, "block_nums"),
            ({"t_eps": 0}, "t_eps"),
            ({"t_size": 0}, "t_size"),
            ({"graph_cut": "maxflow"}, "graph_cut"),
            ({"beta": -1}, "beta"),
            ({"image_std": (0.2, 0.2)}, "image_std"),
        ]:
            with pytest.raises(ValueError, match=name):
                self.make(**kw)
        x, y = torch.randn(2, 3, 8, 8), torch.arange(2)
        with pytest.raises(ValueError, match="saliency"):
            self.make().get_params(x, y)


# ---------------------------------------------------------------------------------------------------------------
class TestTimmMixup:
    def make(self, **kw):
        return C.TimmMixup(num_classes=K, **kw)

    def test_odd_batch_is_a_clear_error(self, adapter):
        x, y = torch.randn(5, 3, 16, 16), torch.arange(5)
        with pytest.raises(ValueError, match="dataloader_drop_last"):
            self.make()(x, y, adapter)

    @pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
    @pytest.mark.parametrize("smoothing", [0.0, 0.1])
    def test_matches_timm(self, mode, smoothing):
        from timm.data import Mixup

        x, y = torch.randn(6, 3, 24, 40), torch.randint(0, K, (6,))
        np.random.seed(0)
        ours = self.make(mode=mode, label_smoothing=smoothing).mix(x, y)
        np.random.seed(0)
        theirs = Mixup(
            mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, label_smoothing=smoothing, num_classes=K
        )(x.clone(), y)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
        assert ours[1].min() >= smoothing / K - 1e-7

    @pytest.mark.parametrize("seed", range(4))
    def test_cutmix_weights_equal_pixel_fractions(self, seed):
        mixer = self.make(mixup_alpha=0.0, cutmix_alpha=1.0)
        x, y = const_batch(6, 24, 40)
        np.random.seed(seed)
        x_mix, target = mixer.mix(x, y)
        check_targets_match_pixels(x_mix, target, torch.arange(6).flip(0))
        assert torch.equal(x, const_batch(6, 24, 40)[0])  # input untouched

    def test_from_args_and_loss(self, adapter):
        args = make_args(mixup="timm", timm_cutmix_minmax="0.2,0.8", mix_prob=0.5)
        mixer = C.TimmMixup.from_args(args, num_classes=K, label_smoothing=0.1, classifier=adapter)
        assert mixer.mixup.cutmix_minmax == (0.2, 0.8) and mixer.mixup.mix_prob == 0.5
        assert mixer.mixup.label_smoothing == 0.1 and mixer.mixup.num_classes == K
        np.random.seed(0)
        out = mixer(torch.randn(4, 3, 16, 16), torch.arange(4), adapter)
        assert torch.isfinite(out["loss"])

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="timm_cutmix_minmax"):
            C.TimmMixup.from_args(
                make_args(mixup="timm", timm_cutmix_minmax="0.5"),
                num_classes=K,
                label_smoothing=0.0,
                classifier=None,
            )
        with pytest.raises(ValueError, match="mode"):
            self.make(mode="token")
        with pytest.raises(ValueError, match="mixup_alpha"):
            self.make(mixup_alpha=-1)
        with pytest.raises(ValueError, match="switch_prob"):
            self.make(switch_prob=2)


# ---------------------------------------------------------------------------------------------------------------
class TestRegistryAndDefaults:
    def test_registry_names(self):
        assert set(C.CLASSIC_MIXERS) == set(MIXUP_CHOICES) - {"none", "adautomix", "automix"}
        assert set(C.CLASSIC_MIXERS) <= set(MIXUP_CHOICES)
        assert all(issubclass(c, base.Mixer) for c in C.CLASSIC_MIXERS.values())

    @pytest.mark.parametrize("name", sorted(C.CLASSIC_MIXERS))
    def test_from_args_builds_and_trains_one_step(self, adapter, name):
        mixer = C.CLASSIC_MIXERS[name].from_args(
            make_args(mixup=name), num_classes=K, label_smoothing=0.1, classifier=adapter
        )
        assert mixer.num_classes == K and mixer.label_smoothing == 0.1
        if name in C.DEFAULT_ALPHA:
            assert mixer.alpha == C.DEFAULT_ALPHA[name][0]  # a ResNet: the CNN column
        assert type(copy.deepcopy(mixer)) is type(mixer) and repr(mixer)
        torch.manual_seed(0)
        np.random.seed(0)
        out = mixer(torch.randn(4, 3, 16, 16), torch.randint(0, K, (4,)), adapter)
        out["loss"].backward()
        adapter.zero_grad(set_to_none=True)

    @pytest.mark.parametrize(
        "name, cnn, vit",
        [
            ("mixup", 1.0, 0.8),
            ("cutmix", 0.2, 2.0),
            ("fmix", 0.2, 1.0),
            ("puzzlemix", 1.0, 2.0),
            ("resizemix", 1.0, 1.0),
        ],
    )
    def test_default_alpha_per_family_and_override(self, adapter, name, cnn, vit):
        vit_like = type("FakeViT", (), {"is_transformer_like": True})()
        assert C.default_alpha(name, adapter) == cnn
        assert C.default_alpha(name, vit_like) == vit
        mixer = C.CLASSIC_MIXERS[name].from_args(
            make_args(mixup=name, mix_alpha=0.3), num_classes=K, label_smoothing=0.0, classifier=vit_like
        )
        assert mixer.alpha == 0.3
        with pytest.raises(ValueError, match="alpha"):
            C.default_alpha("smoothmix")
