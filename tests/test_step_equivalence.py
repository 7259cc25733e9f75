"""The cheaper training step computes the same step (reference/adautomix-algorithm.md §9).

Per-pass backward (`MixupModel.per_pass_backward`, each online-classifier pass back-propagated as soon as its loss
is built) against one backward of the total, and the teacher's clean pass stopped at the tapped stage
(`stop_at_stage`) against the full pass: the same loss terms, gradients of every parameter, BN buffers, EMA
teacher after its update and RNG state, for AdAutoMix N=2 and N=3 (adversarial and cooperative steps),
`separate` reference passes, the paper variant, and AutoMix; gradient accumulation 2; and through the trainer.
fp32 on CPU: equal to 1e-6 (only the order in which gradients are summed into `.grad` differs).
"""

import contextlib
import copy

import pytest
import torch
from conftest import make_model, tiny_classifier
from test_trainer import targs, tensor_dataset

from hf_adautomix import AdAutoMixTrainer, MixupArguments, MixupModel
from hf_adautomix.backbones import wrap_classifier
from hf_adautomix.mixers.adautomix import AdAutoMix
from hf_adautomix.mixers.automix import AutoMix

TOL = dict(rtol=1e-6, atol=1e-6)
GA = 2


def _mixer(kind, classifier):
    common = dict(num_classes=classifier.num_classes, in_channels=classifier.stage_channels(3))
    if kind == "automix":
        return AutoMix(mix_head=classifier.new_head(), **common)
    n, extra = {
        "N=2": (2, {}),
        "N=3": (3, {}),
        "N=3 separate": (3, {"separate_ref_passes": True}),
        "N=3 paper": (3, {"variant": "paper"}),
    }[kind]
    return AdAutoMix(mix_head=classifier.new_head(), mix_num=n, **common, **extra)


def _model(kind, seed=0):
    torch.manual_seed(seed)
    classifier = tiny_classifier(seed)
    return MixupModel(classifier, _mixer(kind, classifier))


def _step(model, batches, *, early):
    """One optimizer step as the trainer runs it (GA micro-batches, loss/GA, SGD step, EMA update); returns what
    it saw: loss values, logged terms, gradients, buffers, teacher and RNG state."""
    model.train()
    model.early_backward = early
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    opt.zero_grad()
    losses, terms = [], []
    lent = model.per_pass_backward(lambda loss: (loss / GA).backward()) if early else contextlib.nullcontext()
    with lent:
        for x, y in batches:
            out = model(x, y)
            loss = out["loss"]
            (loss / GA).backward()
            losses.append(loss.detach())
            terms.append({k: v for k, v in out.items() if k != "loss"})
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    opt.step()
    model.update_ema()
    return {
        "losses": losses,
        "terms": terms,
        "grads": grads,
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "rng": torch.get_rng_state(),
    }


def _assert_same(a, b):
    assert len(a["losses"]) == len(b["losses"])
    for la, lb in zip(a["losses"], b["losses"]):
        torch.testing.assert_close(la, lb, **TOL)
    for ta, tb in zip(a["terms"], b["terms"]):
        assert ta.keys() == tb.keys()
        for k in ta:
            torch.testing.assert_close(ta[k], tb[k], **TOL, msg=k)
    assert a["grads"].keys() == b["grads"].keys()
    for k in a["grads"]:
        torch.testing.assert_close(a["grads"][k], b["grads"][k], **TOL, msg=k)
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:  # parameters after SGD, BN buffers (online and teacher), EMA teacher, step (extra state)
        torch.testing.assert_close(a["state"][k], b["state"][k], **TOL, msg=k)
    assert torch.equal(a["rng"], b["rng"])


def _batches(seed, n=GA, b=6):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 4, (b,), generator=g)) for _ in range(n)
    ]


@pytest.mark.parametrize("kind", ["N=2", "N=3", "N=3 separate", "N=3 paper", "automix"])
def test_per_pass_backward_is_the_single_backward_step(kind):
    """Two optimizer steps (adversarial, then cooperative), GA=2, per-pass backward against one backward."""
    base = _model(kind)
    runs = {}
    for early in (False, True):
        model = copy.deepcopy(base)
        torch.manual_seed(123)
        runs[early] = [_step(model, _batches(s), early=early) for s in (1, 2)]
    if kind in ("N=2", "N=3", "N=3 separate"):  # the released alternation: adversarial, then cooperative
        assert [float(r["terms"][0]["adversarial"]) for r in runs[True]] == [1.0, 0.0]
    for single, early in zip(runs[False], runs[True]):
        _assert_same(single, early)


def test_early_backward_frees_the_classifier_graph():
    """With a backward lent, the returned loss carries only L_θ's graph: no gradient reaches the classifier."""
    model = _model("N=3").train()
    calls = []
    x, y = _batches(0, 1)[0]
    with model.per_pass_backward(lambda loss: calls.append(float(loss.detach())) or loss.backward()):
        loss = model(x, y)["loss"]
    assert len(calls) == 3  # clean, vanilla mix, generated mix
    grads = torch.autograd.grad(
        loss,
        list(model.mixer.generator.parameters()) + list(model.classifier.parameters()),
        allow_unused=True,
    )
    n_gen = len(list(model.mixer.generator.parameters()))
    assert all(g is not None for g in grads[:n_gen])
    assert all(g is None for g in grads[n_gen:])


class _CountingTeacherStage4:
    def __init__(self, teacher):
        self.calls = 0
        teacher.stage_module(4).register_forward_hook(self)

    def __call__(self, *_):
        self.calls += 1


@pytest.mark.parametrize("kind", ["N=3 separate", "automix"])
@pytest.mark.parametrize("mode", ["always", "auto"])
def test_teacher_clean_pass_stops_at_the_tapped_stage(kind, mode):
    """`separate` references and AutoMix use only the tapped map of the clean pass. "always" skips stage 4 there
    (one stage-4 call fewer: the mixed pass, and the N reference passes, remain); "auto" keeps it for a BN
    teacher, whose stage-4 running statistics would otherwise miss the clean batch."""
    counts = {}
    for stop in ("never", mode):
        model = _model(kind).train()
        model.mixer.teacher_stop_early = stop
        x, y = _batches(0, 1)[0]
        model(x, y)  # the first step may probe the adapter once (a tiny eval forward): count the second
        hook = _CountingTeacherStage4(model.teacher)
        torch.manual_seed(0)
        out = model(x, y)
        counts[stop] = (hook.calls, float(out["loss"].detach()))
    assert counts[mode][1] == counts["never"][1]  # same loss value
    assert counts[mode][0] == counts["never"][0] - (1 if mode == "always" else 0)


def test_teacher_stop_is_exact_without_bn_and_dropout():
    """A LayerNorm teacher (ConvNeXt, no drop-path): "auto" stops the clean pass early, bit for bit the same step
    (losses, gradients, every buffer, RNG)."""
    runs = {}
    for stop in ("never", "auto"):
        model, _ = make_model("hf_convnext")
        classifier = wrap_classifier(model)
        mixer = AutoMix(
            num_classes=classifier.num_classes,
            in_channels=classifier.stage_channels(3),
            mix_head=classifier.new_head(),
        )
        mixer.teacher_stop_early = stop
        torch.manual_seed(0)
        m = MixupModel(classifier, mixer)
        assert mixer.stop_teacher_early(m.teacher) == (stop == "auto")
        torch.manual_seed(5)
        runs[stop] = _step(m, _batches(3), early=False)
    _assert_same(runs["never"], runs["auto"])


@pytest.mark.parametrize("mixup", ["adautomix", "automix"])
def test_trainer_step_matches_single_backward(mixup, tmp_path):
    """Through `AdAutoMixTrainer.training_step` (its lent backward: 1/GA, accelerator.backward): 3 optimizer steps
    with GA=2 end with the same weights, buffers and logged losses as with `early_backward=False`."""
    out = {}
    for early in (False, True):
        model, _ = make_model("hf_resnet")
        trainer = AdAutoMixTrainer(
            model=model,
            args=targs(tmp_path / str(early), max_steps=3, gradient_accumulation_steps=GA),
            mixup_args=MixupArguments(mixup=mixup, save_mix_every=0),
            train_dataset=tensor_dataset(24),
        )
        trainer.model.early_backward = early
        trainer.train()
        assert trainer.model.backward_fn is None
        out[early] = (
            {k: v.clone() for k, v in trainer.model.state_dict().items()},
            [h["loss"] for h in trainer.state.log_history if "loss" in h],
        )
    (sa, la), (sb, lb) = out[False], out[True]
    assert len(la) == len(lb) == 3
    torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), rtol=1e-5, atol=1e-6)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-5, msg=k)
