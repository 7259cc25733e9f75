"""EMA teacher: the momentum schedule of reference/adautomix-algorithm.md §5 and `MixupModel`'s update, buffers
and train/eval modes (§12 item 4)."""

import math

import pytest
import torch
from conftest import tiny_classifier
from torch import nn
from torch.testing import assert_close

from hf_adautomix.mixers import AdAutoMix, AutoMix
from hf_adautomix.modeling import EMASchedule, MixupModel

NUM_CLASSES = 4
TINY_RESNET = "embedding_size=8,hidden_sizes=[8,8,16,16],depths=[1,1,1,1],layer_type=basic"
XI0, XI_END = 0.999, 0.999999


def learned_model(cls=AdAutoMix, **kwargs):
    clf = tiny_classifier()
    mixer = cls(num_classes=NUM_CLASSES, in_channels=clf.stage_channels(3), mix_head=clf.new_head())
    return MixupModel(clf, mixer, **kwargs).train()


def batch(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 32, 32, generator=g), torch.arange(b) % NUM_CLASSES


def cosine_phase(t, total, xi0=XI0, xi_end=XI_END):
    """§5: ξ_end − (ξ_end − ξ₀)·(1 + cos(π t / T)) / 2, t/T over the whole run."""
    return xi_end - (xi_end - xi0) * (1 + math.cos(math.pi * t / total)) / 2


def bn_layers(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def perturb(module, seed=1, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


# -- schedule -----------------------------------------------------------------------------------------------------
class TestEMASchedule:
    def test_released_schedule_without_warmup(self):
        sched, total = EMASchedule(warmup=False), 1000
        assert (sched.momentum, sched.momentum_end, sched.scope_start) == (XI0, XI_END, 0.1)
        assert sched(0, total) == XI0
        assert sched(99, total) == XI0  # constant before a·T
        at_scope = sched(100, total)  # the cosine phase uses t/T: ≈ 0.99902, not 0.999 exactly
        assert math.isclose(at_scope, cosine_phase(100, total), rel_tol=0, abs_tol=1e-15)
        assert 0.99902 < at_scope < 0.99903
        assert math.isclose(sched(500, total), (XI0 + XI_END) / 2, abs_tol=1e-15)
        assert math.isclose(sched(total, total), XI_END, abs_tol=1e-15)
        values = [sched(t, total) for t in range(100, total + 1, 50)]
        assert values == sorted(values)

    def test_custom_scope_and_ends(self):
        sched, total = EMASchedule(momentum=0.99, momentum_end=0.9999, scope_start=0.25, warmup=False), 400
        assert sched(99, total) == 0.99
        assert math.isclose(sched(100, total), cosine_phase(100, total, 0.99, 0.9999), abs_tol=1e-15)
        assert math.isclose(sched(total, total), 0.9999, abs_tol=1e-15)

    def test_warmup_caps_the_momentum(self):
        sched, total = EMASchedule(warmup=True), 10**6
        assert sched(0, total) == 0.0  # 1 − 1^(−2/3)
        for t in (1, 9, 100):
            assert math.isclose(sched(t, total), 1 - (1 + t) ** (-2 / 3), abs_tol=1e-15)
        assert sched(10**5 - 1, total) == XI0  # the cap 1 − 10^(−10/3) ≈ 0.99954 no longer binds
        assert math.isclose(sched(total, total), min(XI_END, 1 - (1 + total) ** (-2 / 3)), abs_tol=1e-15)

    def test_model_momentum_follows_step_and_total(self):
        model = learned_model(ema_schedule=EMASchedule(warmup=False))
        model.total_steps = 1000
        model.step = 100
        assert model.current_momentum() == EMASchedule(warmup=False)(100, 1000)


# -- update ---------------------------------------------------------------------------------------------------------
class TestUpdateEMA:
    @pytest.mark.parametrize("cls", [AdAutoMix, AutoMix])
    def test_teacher_starts_as_a_frozen_copy(self, cls):
        model = learned_model(cls)
        for q, k in model.ema_pairs():
            for (name, pq), pk in zip(q.named_parameters(), k.parameters()):
                assert torch.equal(pq, pk), name
                assert pq.requires_grad and not pk.requires_grad, name
        assert not model.teacher.training
        assert all(
            q is not model.mixer.generator for q, _ in model.ema_pairs()
        )  # the generator is not averaged

    def test_parameters_follow_the_ema_formula(self):
        xi = 0.7  # constant schedule; not 0.5, so swapping ξ and 1 − ξ shows
        model = learned_model(ema_schedule=EMASchedule(momentum=xi, momentum_end=xi, warmup=False))
        perturb(model.classifier)
        perturb(model.mixer.mix_head, seed=2)
        gen_before = [p.detach().clone() for p in model.mixer.generator.parameters()]
        pairs = model.ema_pairs()
        assert [q for q, _ in pairs] == [model.classifier, model.mixer.mix_head]
        before = [
            [(pq.detach().clone(), pk.detach().clone()) for pq, pk in zip(q.parameters(), k.parameters())]
            for q, k in pairs
        ]

        assert model.update_ema() == xi
        assert int(model.step) == 1
        for (q, k), old in zip(pairs, before):
            for (pq_old, pk_old), pq, pk in zip(old, q.parameters(), k.parameters()):
                assert torch.equal(pq, pq_old)  # the online model is untouched
                assert_close(pk, xi * pk_old + (1 - xi) * pq_old, rtol=1e-6, atol=1e-7)
                assert not pk.requires_grad
        for p, old in zip(model.mixer.generator.parameters(), gen_before):
            assert torch.equal(p, old)
        model.update_ema()
        assert int(model.step) == 2

    def test_learned_mixer_teacher_keeps_its_own_bn_buffers(self):
        model = learned_model()
        x, _ = batch()
        with torch.no_grad():
            model.classifier(x)  # train mode: the online BN running statistics move
        teacher_buffers = [b.clone() for b in model.teacher.buffers()]
        model.update_ema()
        for b, old in zip(model.teacher.buffers(), teacher_buffers):
            assert torch.equal(b, old)
        assert any(not torch.equal(b, o) for b, o in zip(model.teacher.buffers(), model.classifier.buffers()))

    def test_plain_ema_copies_bn_buffers(self):
        model = MixupModel(tiny_classifier(), ema=True).train()
        assert not model.mixer.learned and model.teacher is not None
        assert not any(p.requires_grad for p in model.teacher.parameters())
        x, y = batch()
        model(x, y)["loss"].backward()  # NoMix: the online model runs in train mode
        assert any(not torch.equal(b, o) for b, o in zip(model.teacher.buffers(), model.classifier.buffers()))
        model.update_ema()
        assert len(list(model.teacher.buffers())) > 0
        for b, o in zip(model.teacher.buffers(), model.classifier.buffers()):
            assert torch.equal(b, o)


# -- modes ----------------------------------------------------------------------------------------------------------
class TestTeacherModes:
    @pytest.mark.parametrize("cls", [AdAutoMix, AutoMix])
    def test_train_keeps_teacher_in_eval(self, cls):
        model = learned_model(cls)
        model.train()
        assert model.classifier.training and model.mixer.training
        assert not any(m.training for m in model.teacher.modules())
        model.eval()
        assert not any(m.training for m in model.teacher.modules())
        model.train(True)
        assert not any(m.training for m in model.teacher.modules())

    @pytest.mark.parametrize("cls", [AdAutoMix, AutoMix])
    def test_mixer_runs_teacher_in_train_mode_and_restores_eval(self, cls):
        model = learned_model(cls)
        layers = bn_layers(model.teacher)
        assert layers
        seen = []
        handles = [m.register_forward_pre_hook(lambda mod, _: seen.append(mod.training)) for m in layers]
        running = [m.running_mean.clone() for m in layers]
        x, y = batch()
        torch.manual_seed(0)
        model(x, y)
        for h in handles:
            h.remove()
        assert seen and all(seen)  # every teacher BN call used batch statistics
        assert all(not torch.equal(m.running_mean, r) for m, r in zip(layers, running))
        assert not any(m.training for m in model.teacher.modules())
