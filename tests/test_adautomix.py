"""AdAutoMix and AutoMix: every property of reference/adautomix-algorithm.md §12 (items 1-3, 5) plus the
loss bookkeeping of §2.3-§2.4 and AutoMix's §7. Tiny CIFAR-stem ResNet (stage-3 map 8×8 on 32×32), CPU."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_classifier
from torch.testing import assert_close

from hf_adautomix.arguments import MixupArguments
from hf_adautomix.mixers import AdaptiveMask, AdAutoMix, AutoMix, PixelMixBlock, build_mixer
from hf_adautomix.mixers import adautomix as adautomix_module
from hf_adautomix.mixers import generator as generator_module
from hf_adautomix.modeling import MixupModel

NUM_CLASSES = 4
TINY_RESNET = "embedding_size=8,hidden_sizes=[8,8,16,16],depths=[1,1,1,1],layer_type=basic"


# -- helpers ----------------------------------------------------------------------------------------------------


def learned_model(cls=AdAutoMix, seed=0, **kwargs):
    """MixupModel(tiny ResNet, cls(...)) in train mode."""
    clf = tiny_classifier(seed)
    mixer = cls(num_classes=NUM_CLASSES, in_channels=clf.stage_channels(3), mix_head=clf.new_head(), **kwargs)
    return MixupModel(clf, mixer).train()


def batch(b=8, size=(32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, *size, generator=g), torch.arange(b) % NUM_CLASSES


def run(model, x, y, *, step, seed, **kwargs):
    """One mixer iteration on the model's parts, from a fixed torch RNG state (same seed: same N, λ, sets)."""
    torch.manual_seed(seed)
    return model.mixer(x, y, model.classifier, teacher=model.teacher, step=step, **kwargs)


def randomise(module, std=0.3, seed=0):
    """Non-trivial weights, so masks are far from uniform (the released init gives M ≈ 1/N)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def features(n, b=2, c=8, h=4, w=4, seed=0):
    return torch.randn(n, b, c, h, w, generator=torch.Generator().manual_seed(seed))


def grads(loss, params):
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def all_zero(gs):
    return all(g is None or torch.count_nonzero(g) == 0 for g in gs)


def reference_logits(gen, feats, lam):
    """§3 written as a loop: S_n = Σ_{j≠n} Q_nᵀK_j / √d, A_n = softmax over keys, m_n = A_n V_n."""
    n, b, c, h, w = feats.shape
    d = c // 2
    z = [feats[i] for i in range(n)]
    if gen.lam_concat:
        z = [torch.cat([z[i], torch.full((b, 1, h, w), float(lam[i]))], dim=1) for i in range(n)]
    q = [F.relu(gen.query(zi)).flatten(2) for zi in z]  # (B, d, hw)
    k = [F.relu(gen.key(zi)).flatten(2) for zi in z]
    v = [gen.value(zi).flatten(2) for zi in z]  # (B, 1, hw)
    out = []
    for i in range(n):
        s = sum(q[i].transpose(1, 2) @ k[j] for j in range(n) if j != i) / math.sqrt(d)  # (B, hw_q, hw_k)
        out.append((s.softmax(dim=-1) @ v[i].transpose(1, 2)).view(b, h, w))
    return torch.stack(out, dim=1)


def release_masks(gen, feats, lam, size, dtype=torch.float32):
    """The release's generator as §3 writes it, one image at a time: S_n = Σ_{j≠n} Q_nᵀK_j (the N−1 products
    summed), clamped to ±1e25 everywhere when it holds ±inf, then / √d; softmax over keys; m_n = A_n V_n; logits
    upsampled (bilinear), then softmax over images. `dtype` float64 is the release's NaN fallback."""
    n, b, c, h, w = feats.shape
    z = [feats[i].to(dtype) for i in range(n)]
    if gen.lam_concat:
        z = [torch.cat([z[i], torch.full((b, 1, h, w), float(lam[i]), dtype=dtype)], dim=1) for i in range(n)]

    def conv(m, t):
        return F.conv2d(t, m.weight.to(dtype), m.bias.to(dtype))

    q = [F.relu(conv(gen.query, t)).flatten(2) for t in z]
    k = [F.relu(conv(gen.key, t)).flatten(2) for t in z]
    v = [conv(gen.value, t).flatten(2) for t in z]
    out = []
    for i in range(n):
        s = sum(q[i].transpose(1, 2) @ k[j] for j in range(n) if j != i)
        if torch.isinf(s).any():
            s = s.clamp(-1e25, 1e25)
        s = s / math.sqrt(gen.dim)
        out.append((s.softmax(-1) @ v[i].transpose(1, 2)).view(b, h, w))
    logits = torch.stack(out, dim=1)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1)


def pre_fix_masks(gen, feats, size):
    """The generator before the overflow fix: ±inf replaced by ±1e25 *after* the 1/√d scaling."""
    n, b, _, h, w = feats.shape
    z = feats.float().flatten(0, 1)
    q = F.relu(gen.query(z)).view(n, b, gen.dim, h * w)
    k = F.relu(gen.key(z)).view(n, b, gen.dim, h * w)
    v = gen.value(z).view(n, b, h * w)
    s = torch.einsum("nbdp,nbdq->nbpq", q, k.sum(0, keepdim=True) - k) / math.sqrt(gen.dim)
    s = torch.nan_to_num(s, nan=0.0, posinf=1e25, neginf=-1e25)
    m = torch.einsum("nbpq,nbq->nbp", s.softmax(dim=-1), v).view(n, b, h, w).transpose(0, 1)
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False).softmax(1)


# -- §12.1 generator ----------------------------------------------------------------------------------------------
class TestAdaptiveMask:
    @pytest.mark.parametrize("lam_concat", [False, True])
    @pytest.mark.parametrize("n", [2, 3, 4, 5])
    def test_masks_sum_to_one_over_images(self, n, lam_concat):
        gen = randomise(AdaptiveMask(8, lam_concat=lam_concat))
        lam = torch.full((n,), 1.0 / n)
        masks = gen(features(n), lam, (16, 16))
        assert masks.shape == (2, n, 16, 16)
        assert masks.min() >= 0
        assert_close(masks.sum(dim=1), torch.ones(2, 16, 16))
        assert masks.std() > 1e-2  # genuinely non-uniform, so the sum is a real check

    @pytest.mark.parametrize("lam_concat", [False, True])
    @pytest.mark.parametrize("n", [2, 3, 4, 5])
    def test_zero_weights_give_uniform_masks(self, n, lam_concat):
        gen = AdaptiveMask(8, lam_concat=lam_concat)
        with torch.no_grad():
            for p in gen.parameters():
                p.zero_()
        masks = gen(features(n), torch.rand(n), (16, 16))
        assert torch.equal(masks, torch.full_like(masks, 1.0 / n))

    @pytest.mark.parametrize("lam_concat", [False, True])
    def test_lambda_channel_present_only_with_lam_concat(self, lam_concat):
        c = 8
        gen = randomise(AdaptiveMask(c, lam_concat=lam_concat))
        for conv in (gen.query, gen.key, gen.value):
            assert conv.in_channels == c + int(lam_concat)
        feats = features(3, c=c)
        a = gen(feats, torch.tensor([0.2, 0.3, 0.5]), (16, 16))
        b = gen(feats, torch.tensor([0.7, 0.1, 0.2]), (16, 16))
        assert (a - b).abs().max() > 1e-3 if lam_concat else torch.equal(a, b)

    @pytest.mark.parametrize("lam_concat", [False, True])
    @pytest.mark.parametrize("n", [2, 3, 4])
    def test_logits_match_explicit_cross_attention_loop(self, n, lam_concat):
        gen = randomise(AdaptiveMask(8, lam_concat=lam_concat))
        feats, lam = features(n), torch.rand(n)
        with torch.no_grad():
            assert_close(gen.mask_logits(feats, lam), reference_logits(gen, feats, lam), rtol=1e-5, atol=1e-5)

    def test_two_images_attend_to_each_others_keys(self):
        gen = randomise(AdaptiveMask(8))
        feats = features(2)
        q = [F.relu(gen.query(feats[i])).flatten(2) for i in range(2)]
        k = [F.relu(gen.key(feats[i])).flatten(2) for i in range(2)]
        v = [gen.value(feats[i]).flatten(2) for i in range(2)]

        def attend(i, j):  # queries of image i against keys of image j, values of image i
            s = q[i].transpose(1, 2) @ k[j] / math.sqrt(4)
            return (s.softmax(-1) @ v[i].transpose(1, 2)).view(2, 4, 4)

        with torch.no_grad():
            logits = gen.mask_logits(feats, torch.tensor([0.5, 0.5]))
            assert_close(logits[:, 0], attend(0, 1), rtol=1e-5, atol=1e-5)
            assert_close(logits[:, 1], attend(1, 0), rtol=1e-5, atol=1e-5)
            assert (logits[:, 0] - attend(0, 0)).abs().max() > 1e-3  # self-attention would be different
            # Changing image 2 changes image 1's logits (through K_2 only: Q_1 and V_1 are untouched).
            moved = feats.clone()
            moved[1] += 1.0
            assert (gen.mask_logits(moved, torch.tensor([0.5, 0.5]))[:, 0] - logits[:, 0]).abs().max() > 1e-4

    def test_upsampling_is_applied_to_logits_before_softmax(self):
        gen = randomise(AdaptiveMask(8, upsample="bilinear"), std=1.0)  # logits vary by O(1) across pixels
        feats, lam = features(3), torch.rand(3)
        with torch.no_grad():
            logits = gen.mask_logits(feats, lam)
            masks = gen(feats, lam, (32, 32))
        upsample_then_softmax = F.interpolate(
            logits, size=(32, 32), mode="bilinear", align_corners=False
        ).softmax(1)
        softmax_then_upsample = F.interpolate(
            logits.softmax(1), size=(32, 32), mode="bilinear", align_corners=False
        )
        assert_close(masks, upsample_then_softmax)
        assert (masks - softmax_then_upsample).abs().max() > 1e-2  # the paper's order differs for bilinear

    def test_nearest_upsampling_orders_agree(self):
        gen = randomise(AdaptiveMask(8, upsample="nearest"))
        feats, lam = features(3), torch.rand(3)
        with torch.no_grad():
            logits = gen.mask_logits(feats, lam)
            masks = gen(feats, lam, (32, 32))
        assert_close(masks, F.interpolate(logits.softmax(1), size=(32, 32), mode="nearest"))

    @pytest.mark.parametrize(
        "hw, size", [((8, 8), (32, 32)), ((4, 4), (32, 32)), ((4, 6), (16, 24)), ((8, 4), (32, 16))]
    )
    def test_mask_size_follows_requested_image_size(self, hw, size):
        gen = randomise(AdaptiveMask(8))
        masks = gen(features(3, h=hw[0], w=hw[1]), torch.rand(3), size)
        assert masks.shape == (2, 3, *size)
        assert_close(masks.sum(1), torch.ones(2, *size))

    @pytest.mark.parametrize("size", [(32, 32), (48, 32)])
    def test_forward_masks_match_input_size(self, size):
        model = learned_model(mix_num=3)
        x, y = batch(4, size=size)
        with torch.no_grad():
            stage_map = model.classifier.forward_features(x, stage=3).stage_map
        assert stage_map.shape[-2:] == (size[0] // 4, size[1] // 4)  # the factor (4) is never given
        out = run(model, x, y, step=0, seed=0, keep_graph=True)
        assert out["masks_mb"].shape == out["masks_bb"].shape == (4, 3, *size)

    # -- overflow and NaN (§3: clamp before scaling, fp64 fallback) ------------------------------------------------
    @pytest.mark.parametrize("seed", [0, 1])
    def test_ordinary_inputs_are_bit_identical_to_the_plain_formula(self, seed):
        gen = randomise(AdaptiveMask(8), seed=seed)
        feats, lam = features(3, b=4, seed=seed), torch.rand(3)
        with torch.no_grad():
            assert torch.equal(gen(feats, lam, (16, 16)), pre_fix_masks(gen, feats, (16, 16)))

    @pytest.mark.parametrize("scale", [1e19, 3e19, 1e20])
    def test_overflowed_attention_ranks_as_the_release_clamp(self, scale):
        """Huge finite features: some Q_nᵀK_j overflow to inf in fp32, others stay finite above 1e25. The release
        clamps all of S_n to ±1e25 before scaling (the overflowed and the huge entries tie at the top); scaling first
        and replacing only ±inf ranked the overflowed (largest) entries below the finite ones."""
        gen = randomise(AdaptiveMask(8))
        feats, lam = features(3, b=4) * scale, torch.full((3,), 1 / 3)
        with torch.no_grad():
            z = feats.flatten(0, 1)
            q = F.relu(gen.query(z)).flatten(2)
            k = F.relu(gen.key(z)).flatten(2)
            s = q.transpose(1, 2) @ k
            assert s.isinf().any() and (s.isfinite() & (s > 1e25)).any()  # both kinds are present
            masks = gen(feats, lam, (16, 16))
        expected = release_masks(gen, feats, lam, (16, 16))
        assert masks.isfinite().all()
        assert_close(masks, expected, rtol=0, atol=1e-6)
        assert (pre_fix_masks(gen, feats, (16, 16)) - expected).abs().max() > 0.5  # the old order is caught

    def test_nan_sample_in_fp32_falls_back_to_fp64(self):
        """Sample 0's features are finite but so large that its fp32 convs overflow (inf·0 = NaN in Q_nᵀK_j); in
        fp64 it is finite. The other samples keep their fp32 masks, and θ's gradient stays finite."""
        gen = randomise(AdaptiveMask(8), std=3.0)
        feats, lam = features(3, b=3), torch.full((3,), 1 / 3)
        feats[:, 0] = feats[:, 0].clamp(-3, 3) * 1e38
        with torch.no_grad():
            fp32 = release_masks(gen, feats, lam, (16, 16))
            fp64 = release_masks(gen, feats, lam, (16, 16), torch.float64)
        assert fp32[0].isnan().any() and fp32[1:].isfinite().all() and fp64.isfinite().all()
        masks = gen(feats, lam, (16, 16))
        assert masks.isfinite().all()
        assert_close(masks.sum(1), torch.ones(3, 16, 16))
        assert_close(masks[0].double(), fp64[0], rtol=0, atol=1e-6)
        assert_close(masks[1:], fp32[1:], rtol=0, atol=1e-6)
        with torch.no_grad():
            assert torch.equal(
                masks[1:],
                gen(torch.where(torch.arange(3).view(1, 3, 1, 1, 1) == 0, 0.0, feats), lam, (16, 16))[1:],
            )
        g = torch.autograd.grad((masks * torch.randn_like(masks)).sum(), list(gen.parameters()))
        assert all(gi.isfinite().all() for gi in g) and not all_zero(g)

    def test_nan_feature_gives_uniform_mask_and_finite_gradient(self):
        gen = randomise(AdaptiveMask(8))
        feats, lam = features(3, b=3), torch.full((3,), 1 / 3)
        feats[1, 0, 2, 1, 1] = float("nan")  # one NaN in image 2's map of sample 0
        masks = gen(feats, lam, (16, 16))
        assert torch.equal(masks[0], torch.full_like(masks[0], 1 / 3))  # NaN in fp64 too: uniform
        with torch.no_grad():
            assert_close(masks[1:], gen(feats[:, 1:], lam, (16, 16)), rtol=0, atol=1e-6)
        g = torch.autograd.grad((masks * torch.randn_like(masks)).sum(), list(gen.parameters()))
        assert all(gi.isfinite().all() for gi in g) and not all_zero(g)

    def test_nan_in_teacher_feature_map_keeps_the_step_finite(self, monkeypatch, caplog):
        model = learned_model(mix_num=3)
        randomise(model.mixer.generator, std=0.3)
        real = model.teacher.forward_features

        def nan_stage(x, stage=None):
            out = real(x, stage=stage)
            if stage is None:
                return out
            bad = out.stage_map.clone()
            bad[0, 0, 0, 0] = float("nan")
            return out._replace(stage_map=bad)

        monkeypatch.setattr(model.teacher, "forward_features", nan_stage)
        x, y = batch()
        torch.manual_seed(0)
        with caplog.at_level(logging.WARNING, logger=generator_module.__name__):
            loss = model(x, y)["loss"]
        assert "NaN mask for 3 sample(s)" in caplog.text  # sample 0 sits in 3 mixes of each branch
        assert loss.isfinite()
        loss.backward()
        assert all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)


# -- §12.2 gradient isolation -------------------------------------------------------------------------------------
class TestGradientIsolation:
    @pytest.mark.parametrize("n", [2, 3])
    def test_released_gradient_paths_are_disjoint(self, n):
        model = learned_model(mix_num=n)
        x, y = batch()
        theta = list(model.mixer.generator.parameters())
        q = list(model.classifier.parameters()) + list(model.mixer.mix_head.parameters())
        out = run(model, x, y, step=0, seed=1, keep_graph=True)
        assert int(out["n_mix"]) == n

        # Classifier losses never reach θ; the generator loss never reaches the online model.
        for name in ("loss_gen", "loss_re", "loss_one") + (("loss_van",) if n >= 3 else ()):
            assert all_zero(grads(out[name], theta)), name
            assert not all_zero(grads(out[name], q)), name
        assert all_zero(grads(out["loss_theta"], q))
        g_theta = grads(out["loss_theta"], theta)
        assert not all_zero(g_theta)

        # The bb masks are made without a graph; the mb masks keep one (to θ).
        assert out["masks_bb"].grad_fn is None and not out["masks_bb"].requires_grad
        assert out["masks_mb"].requires_grad

        # The teacher is frozen: no grad flag, and the single backward of the total leaves it without gradients.
        teacher = list(model.teacher.parameters()) + list(model.mixer.mix_head_teacher.parameters())
        assert not any(p.requires_grad for p in teacher)
        g_q = grads(out["loss_gen"] + out["loss_re"], q)
        out["loss"].backward()
        assert all(p.grad is None for p in teacher)
        # One backward of the total = the two disjoint objectives (§2.4).
        for p, g in zip(theta, g_theta):
            assert_close(p.grad, g)
        for p, g in zip(q, g_q):
            if g is None:
                assert p.grad is None or torch.count_nonzero(p.grad) == 0
            else:
                assert_close(p.grad, g)

    def test_mixup_model_training_forward_leaves_teacher_without_gradients(self):
        model = learned_model(mix_num=3)
        x, y = batch()
        torch.manual_seed(0)
        model(x, y)["loss"].backward()
        assert all(p.grad is None for p in model.teacher.parameters())
        assert all(p.grad is None for p in model.mixer.mix_head_teacher.parameters())
        assert all(p.grad is not None for p in model.mixer.generator.parameters())
        assert all(p.grad is not None for p in model.mixer.mix_head.parameters())

    def test_paper_variant_reverses_the_generator_gradient_only(self, monkeypatch):
        """variant="paper": θ ascends the online mixed CE (GradReverse) while the classifier descends it."""
        model = learned_model(mix_num=3, variant="paper")
        randomise(model.mixer.generator, std=0.1)
        x, y = batch()
        theta = list(model.mixer.generator.parameters())
        q = list(model.classifier.parameters()) + list(model.mixer.mix_head.parameters())
        out = run(model, x, y, step=1, seed=2, keep_graph=True)
        assert float(out["adversarial"]) == 1.0
        assert_close(out["loss_theta"], 0.3 * out["loss_teacher"] - 0.7 * out["cos_sim"])
        g_reversed = grads(out["loss_gen"], theta + q)

        # the same forward, no reversal
        monkeypatch.setattr(adautomix_module.GradReverse, "apply", lambda t: t)
        plain = run(model, x, y, step=1, seed=2, keep_graph=True)
        assert_close(plain["loss_gen"], out["loss_gen"])
        g_plain = grads(plain["loss_gen"], theta + q)
        k = len(theta)
        assert not all_zero(g_plain[:k])
        for a, b in zip(g_reversed[:k], g_plain[:k]):  # generator: ascent
            assert_close(a, -b)
        for a, b in zip(g_reversed[k:], g_plain[k:]):  # classifier and mix head: ordinary descent
            assert_close(a, b)

    @pytest.mark.parametrize("lam, hit", [([0.5, 0.2, 0.3], False), ([0.01, 0.6, 0.39], True)])
    def test_paper_variant_one_set_one_generator_call_and_margin(self, lam, hit, monkeypatch):
        """Paper (Eq. 8, 14, 15): one generator call on π; the λ-margin swaps the classifier's generated mix for the
        vanilla mix of the same set, so L_amce(ψ_W) = L_mce and only the teacher terms reach θ on that step."""
        model = learned_model(mix_num=3, variant="paper")
        randomise(model.mixer.generator, std=0.3)
        real_sample, calls = model.mixer.sample, []
        monkeypatch.setattr(
            model.mixer, "sample", lambda b, d: {**real_sample(b, d), "lam_mb": torch.tensor(lam)}
        )
        forward = model.mixer.generator.forward
        monkeypatch.setattr(model.mixer.generator, "forward", lambda *a: calls.append(1) or forward(*a))
        x, y = batch()
        out = run(model, x, y, step=0, seed=3, keep_graph=True)
        assert len(calls) == 1
        theta = list(model.mixer.generator.parameters())
        assert not all_zero(grads(out["loss_theta"], theta))
        if hit:
            assert_close(out["loss_gen"], out["loss_van"])
            assert not out["loss_gen"].requires_grad or all_zero(grads(out["loss_gen"], theta))
        else:
            assert (out["loss_gen"] - out["loss_van"]).abs() > 1e-6
            assert not all_zero(grads(out["loss_gen"], theta))


# -- §12.3 alternation --------------------------------------------------------------------------------------------
class TestAlternation:
    def test_adversarial_then_cooperative_through_mixup_model(self):
        beta = 0.4
        model = learned_model(mix_num=3, adv_weight=beta)
        x, y = batch()
        for step, expected in enumerate([1.0, 0.0, 1.0, 0.0]):
            assert int(model.step) == step
            torch.manual_seed(step)
            t = model(x, y)  # {"loss", **terms}
            assert float(t["adversarial"]) == expected
            if expected:
                assert_close(t["loss_theta"], -beta * t["loss_teacher"] + (1 - beta) * t["cos_sim"])
            else:
                assert_close(t["loss_theta"], t["loss_teacher"])
            model.update_ema()

    @pytest.mark.parametrize("step, direction", [(0, 1), (1, -1), (2, 1), (3, -1)])
    def test_generator_step_moves_teacher_mixup_ce(self, step, direction):
        """β = 1: an SGD step of θ alone raises the teacher's mixed CE L_k on adversarial steps, lowers it on
        cooperative ones (same N, λ and image sets before and after)."""
        model = learned_model(mix_num=3, adv_weight=1.0)
        assert_generator_step_direction(model, step, direction)


def assert_generator_step_direction(model, step, direction, target=2e-5):
    x, y = batch()
    before = run(model, x, y, step=step, seed=5)
    theta = list(model.mixer.generator.parameters())
    # Only θ is stepped: the generator's share of the optimizer step.
    g = torch.autograd.grad(before["loss"], theta)
    lr = target / sum(float((gi**2).sum()) for gi in g)  # first-order change of the objective = −target
    with torch.no_grad():
        for p, gi in zip(theta, g):
            p -= lr * gi
    after = run(model, x, y, step=step, seed=5)
    delta = float(after["loss_teacher"] - before["loss_teacher"])
    assert direction * delta > 0.5 * target, delta


# -- §12.5 λ sampling ---------------------------------------------------------------------------------------------
def adautomix(**kwargs):
    return AdAutoMix(num_classes=NUM_CLASSES, in_channels=8, mix_head=None, **kwargs)


class TestSampling:
    @pytest.mark.parametrize("n", [3, 4])
    def test_n_at_least_3_normalised_beta_draws_shared(self, n):
        mixer = adautomix(mix_num=n, alpha=0.7)
        for seed in range(5):
            torch.manual_seed(seed)
            g = torch.distributions.Beta(torch.tensor(0.7), torch.tensor(0.7)).sample((n,))
            torch.manual_seed(seed)
            p = mixer.sample(6, "cpu")
            assert p["n"] == n
            assert p["lam_mb"] is p["lam_bb"]
            assert torch.equal(p["lam_mb"], g / g.sum())
            assert_close(p["lam_mb"].sum(), torch.tensor(1.0))

    def test_n3_marginal_is_not_dirichlet(self):
        mixer = adautomix(mix_num=3, alpha=1.0)
        torch.manual_seed(0)
        lam = torch.stack([mixer.sample(2, "cpu")["lam_mb"] for _ in range(4000)])
        assert abs(float(lam.mean()) - 1 / 3) < 0.01
        std = lam.std(dim=0)
        assert ((std - 0.180).abs() < 0.012).all(), std  # Dirichlet(1,1,1) would give 0.236

    def test_n2_two_independent_draws_and_identity_first(self):
        mixer = adautomix(mix_num=2, alpha=1.0)
        for seed in range(5):
            torch.manual_seed(seed)
            g = torch.distributions.Beta(torch.tensor(1.0), torch.tensor(1.0)).sample((2,))
            torch.manual_seed(seed)
            p = mixer.sample(16, "cpu")
            assert p["n"] == 2
            assert torch.equal(p["lam_mb"], torch.stack([g[0], 1 - g[0]]))
            assert torch.equal(p["lam_bb"], torch.stack([g[1], 1 - g[1]]))
            assert torch.equal(p["pi"][0], torch.arange(16)) and torch.equal(p["sigma"][0], torch.arange(16))
            assert torch.equal(p["pi"][1].sort().values, torch.arange(16))
            assert not torch.equal(p["pi"][1], p["sigma"][1])
        torch.manual_seed(1)
        draws = torch.stack(
            [
                torch.stack([p["lam_mb"][0], p["lam_bb"][0]])
                for p in (mixer.sample(2, "cpu") for _ in range(2000))
            ]
        )
        assert abs(float(torch.corrcoef(draws.T)[0, 1])) < 0.1

    def test_n3_permutations_independent_for_both_branches(self):
        mixer = adautomix(mix_num=3)
        torch.manual_seed(0)
        samples = [mixer.sample(16, "cpu") for _ in range(10)]
        for p in samples:
            for perms in (p["pi"], p["sigma"]):
                assert perms.shape == (3, 16)
                assert torch.equal(perms.sort(dim=1).values, torch.arange(16).expand(3, 16))
            assert not torch.equal(p["pi"], p["sigma"])
        assert any(not torch.equal(p["pi"][0], torch.arange(16)) for p in samples)  # no forced identity

    def test_random_n_covers_two_to_mix_num(self):
        mixer = adautomix(mix_num=4, mix_num_random=True)
        torch.manual_seed(0)
        seen = {mixer.sample(4, "cpu")["n"] for _ in range(200)}
        assert seen == {2, 3, 4}
        mixer = adautomix(mix_num=3, mix_num_random=False)
        assert {mixer.sample(4, "cpu")["n"] for _ in range(20)} == {3}


# -- §12.5 / §11 B1, B3 margin override ---------------------------------------------------------------------------
class TestMargin:
    @pytest.mark.parametrize(
        "l1, hit", [(0.02, True), (0.5, False), (0.98, True), (0.03, True), (0.97, False)]
    )
    def test_jinxins_comparison_n3(self, l1, hit):
        m = 0.03
        lam = torch.tensor([l1, (1 - l1) / 2, (1 - l1) / 2], dtype=torch.float64)  # exact boundaries
        assert adautomix(lam_margin=m).margin_hit(lam) is hit

    @pytest.mark.parametrize("l1, hit", [(0.25, True), (0.75, False), (0.7500001, True), (0.2500001, False)])
    def test_exact_boundaries_in_float32(self, l1, hit):
        lam = torch.tensor([l1, 1 - l1, 0.0])  # m = 0.25 and 0.75 are exact in float32
        assert adautomix(lam_margin=0.25).margin_hit(lam) is hit

    def test_openmixup_port_bug_not_reproduced(self):
        m, lam = 0.03, torch.tensor([0.5, 0.25, 0.25])
        l1 = float(lam[0])
        assert l1 <= m or m < 1 - l1  # the port's `m < 1 − λ₁` fires on an ordinary λ
        assert not adautomix(lam_margin=m).margin_hit(lam)

    @pytest.mark.parametrize("lam, hit", [([0.02, 0.98], True), ([0.98, 0.02], True), ([0.5, 0.5], False)])
    def test_n2(self, lam, hit):
        assert adautomix(mix_num=2, lam_margin=0.03).margin_hit(torch.tensor(lam)) is hit

    @pytest.mark.parametrize(
        "lam, hit",
        [
            ([0.01, 0.3, 0.3, 0.39], True),  # N = 4: every channel is overwritten (§11 B3 fixed)
            ([0.01, 0.5, 0.49], True),
            ([0.99, 0.01], True),
            ([0.2, 0.3, 0.5], False),
            ([0.5, 0.3, 0.1, 0.1], False),
        ],
    )
    def test_hit_gives_vanilla_mix_on_all_channels(self, lam, hit, monkeypatch):
        lam = torch.tensor(lam)
        n = lam.numel()
        model = learned_model(mix_num=n)
        randomise(model.mixer.generator, std=0.3)
        real_sample = model.mixer.sample

        def pinned(batch_size, device):
            p = real_sample(batch_size, device)
            return {**p, "lam_mb": lam, "lam_bb": lam}

        monkeypatch.setattr(model.mixer, "sample", pinned)
        x, y = batch()
        out = run(model, x, y, step=0, seed=3, keep_graph=True)
        constant = lam.view(1, n, 1, 1).expand_as(out["masks_bb"])
        assert model.mixer.margin_hit(lam) is hit
        if hit:
            assert torch.equal(out["masks_bb"], constant)
            if n >= 3:  # the generated-mix branch saw exactly the vanilla N-way mix
                assert_close(out["loss_gen"], out["loss_van"])
        else:
            assert (out["masks_bb"] - constant).abs().max() > 1e-2
            assert (out["loss_gen"] - out["loss_van"]).abs() > 1e-6


# -- §2.3 / §4 loss bookkeeping -----------------------------------------------------------------------------------
class TestLossTerms:
    def test_n2_has_no_vanilla_term_and_full_clean_weight(self):
        model = learned_model(mix_num=2, mce_weight=0.3, adv_weight=0.4)
        x, y = batch()
        out = run(model, x, y, step=0, seed=0, keep_graph=True)
        assert int(out["n_mix"]) == 2
        assert float(out["loss_van"]) == 0.0
        assert torch.equal(out["loss_re"], out["loss_one"])
        assert_close(out["loss"], out["loss_gen"] + out["loss_one"] + out["loss_theta"], rtol=0, atol=1e-5)

    @pytest.mark.parametrize("n, step", [(3, 0), (3, 1), (4, 0)])
    def test_total_combines_terms(self, n, step):
        alpha, beta = 0.3, 0.4
        clf = tiny_classifier()
        args = MixupArguments(mixup="adautomix", mix_num=n, mce_weight=alpha, adv_weight=beta)
        mixer = build_mixer(args, num_classes=NUM_CLASSES, label_smoothing=0.0, classifier=clf)
        assert (mixer.mce_weight, mixer.adv_weight, mixer.lam_margin, mixer.alpha) == (alpha, beta, 0.03, 1.0)
        model = MixupModel(clf, mixer).train()
        x, y = batch()
        out = run(model, x, y, step=step, seed=0)
        assert int(out["n_mix"]) == n
        assert float(out["loss_van"]) > 0
        expected = (
            out["loss_gen"] + (1 - alpha) * out["loss_one"] + alpha * out["loss_van"] + out["loss_theta"]
        )
        assert_close(out["loss"].detach(), expected, rtol=0, atol=1e-5)
        # Logged step loss: the classifier's; the total adds the generator objective, in the same order.
        assert_close(out["loss_classifier"], expected - out["loss_theta"], rtol=0, atol=1e-5)
        assert torch.equal(out["loss"].detach(), out["loss_classifier"] + out["loss_theta"])
        k, c = out["loss_teacher"], out["cos_sim"]
        assert_close(out["loss_theta"], -beta * k + (1 - beta) * c if step % 2 == 0 else k)
        assert not any(v.requires_grad for key, v in out.items() if key != "loss")


# -- §7 AutoMix ---------------------------------------------------------------------------------------------------
class TestAutoMix:
    def test_pixel_mix_block_masks(self):
        block = randomise(PixelMixBlock(8, upsample="nearest"))
        feats = features(2)
        with torch.no_grad():
            masks = block(feats, torch.tensor([0.3, 0.7]), (16, 16))
            q, k = block.qk(feats[0]).flatten(2), block.qk(feats[1]).flatten(2)
            v = block.value(feats[1]).flatten(2)  # the second image's value only
            logit = ((q.transpose(1, 2) @ k / math.sqrt(4)).softmax(-1) @ v.transpose(1, 2)).view(2, 1, 4, 4)
        s = torch.sigmoid(F.interpolate(logit, size=(16, 16), mode="nearest"))
        assert masks.shape == (2, 2, 16, 16)
        assert_close(masks[:, 1:], s)
        assert_close(masks[:, :1], 1 - s)
        assert_close(masks.sum(1), torch.ones(2, 16, 16))
        with pytest.raises(ValueError, match="pairs"):
            block(features(3), torch.rand(3), (16, 16))

    @pytest.mark.parametrize("value_bias", [math.log(0.35 / 0.65), 2.0])
    def test_mask_loss_is_l1_with_margin(self, value_bias, monkeypatch):
        w = 0.25
        model = learned_model(AutoMix, mask_loss_weight=w)
        with torch.no_grad():
            model.mixer.generator.value.bias.fill_(value_bias)  # s ≈ sigmoid(bias): M₀ ≈ 0.65 or ≈ 0.12
        monkeypatch.setattr(model.mixer, "beta", lambda shape: torch.tensor([0.7, 0.4]))  # λ^mb, λ^bb
        masks = []
        forward = model.mixer.generator.forward
        monkeypatch.setattr(
            model.mixer.generator, "forward", lambda *a: masks.append(forward(*a)) or masks[-1]
        )
        x, y = batch()
        out = run(model, x, y, step=0, seed=0)
        m0 = masks[0][:, 0].detach().mean()  # first call: the mb masks
        expected = w * max(abs(float(m0) - 0.7) - 0.1, 0.0)
        assert_close(out["loss_mask"], torch.tensor(expected), rtol=1e-5, atol=1e-7)
        assert (expected > 0) == (value_bias > 0)  # both sides of the margin are exercised

    def test_always_cooperative(self):
        model = learned_model(AutoMix)
        x, y = batch()
        for step in range(4):
            out = run(model, x, y, step=step, seed=step)
            assert_close(
                out["loss"].detach(),
                out["loss_gen"] + out["loss_one"] + out["loss_teacher"] + out["loss_mask"],
            )
            assert_close(out["loss_classifier"], out["loss_gen"] + out["loss_one"])
            assert_close(out["loss_theta"], out["loss_teacher"] + out["loss_mask"])

    @pytest.mark.parametrize("step", [0, 1])
    def test_generator_step_lowers_teacher_mixup_ce(self, step):
        assert_generator_step_direction(learned_model(AutoMix, mask_loss_weight=0.0), step, direction=-1)


class TestSharedReferencePasses:
    @pytest.mark.parametrize("step", [0, 1])
    def test_shared_pass_equals_separate_release_passes(self, step):
        """§9.1: reusing the clean teacher pass for the N cosine references changes no loss and no gradient
        (BN batch statistics do not depend on the order); only the teacher's BN running buffers differ."""
        outs, grads_, buffers = [], [], []
        for separate in (False, True):
            model = learned_model(separate_ref_passes=separate)
            randomise(model.mixer.generator, seed=3)
            x, y = batch()
            out = run(model, x, y, step=step, seed=5)
            out["loss"].backward()
            outs.append({k: v for k, v in out.items() if k != "loss"} | {"loss": out["loss"].detach()})
            grads_.append([p.grad.clone() for p in model.mixer.generator.parameters()])
            buffers.append(
                [b.clone() for n, b in model.teacher.named_buffers() if n.endswith("running_mean")]
            )
        for k in outs[0]:
            assert_close(outs[0][k], outs[1][k], atol=1e-5, rtol=1e-5, msg=k)
        for a, b in zip(*grads_):
            assert_close(a, b, atol=1e-6, rtol=1e-4)
        assert any(not torch.allclose(a, b) for a, b in zip(*buffers))  # N extra BN updates in the release


def test_share_mix_head_uses_the_models_own_head():
    clf = tiny_classifier()
    mixer = build_mixer(
        MixupArguments(mixup="adautomix", share_mix_head=True),
        num_classes=NUM_CLASSES,
        label_smoothing=0.0,
        classifier=clf,
    )
    model = MixupModel(clf, mixer).train()
    assert mixer.mix_head is None and mixer.ema_pairs() == []
    x, y = batch()
    out = run(model, x, y, step=0, seed=0)
    out["loss"].backward()
    assert clf.head is not None and all(p.grad is not None for p in clf.head.parameters())
    assert not any(p.grad is not None for p in model.teacher.parameters())
