"""AdAutoMix's loss terms recomputed from scratch (reference/adautomix-algorithm.md §2.3, §4; paper Eq. 2-4, 14, 15).

The classifier and the teacher are deterministic stubs (no BN, no dropout), N, λ, π and σ are pinned, and every
term is written out here from its formula (log-softmax CE, weighted sums, cosine), without the mixer's helpers. The
test sees the heads and label sets separately, so a swapped head (mix vs clean, online vs teacher) or a swapped
label set (π vs σ, λ^mb vs λ^bb) changes a term and fails.
"""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from hf_adautomix.backbones import Features
from hf_adautomix.mixers import AdAutoMix

K, B, C, FEAT = 4, 8, 8, 6


class StubClassifier(nn.Module):
    """A deterministic classifier adapter: stage map = a 4×4-stride conv (8×8 at 32×32), pooled = tanh(W·mean)."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stage = nn.Conv2d(3, C, 4, stride=4)
        self.proj = nn.Linear(C, FEAT)
        self.head = nn.Linear(FEAT, K)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward_features(self, x, stage=None):
        s = self.stage(x)
        pooled = torch.tanh(self.proj(s.mean(dim=(2, 3))))
        return Features(pooled, self.head(pooled), s if stage is not None else None)

    def forward(self, x):
        return self.head(self.forward_features(x).pooled)


def linear(seed):
    g = torch.Generator().manual_seed(seed)
    m = nn.Linear(FEAT, K)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


def ce(logits, y, eps):
    """−Σ_k t_k log softmax(z)_k, t = (1 − ε)·onehot(y) + ε/K, batch mean."""
    logp = logits.log_softmax(-1)
    return (-(1 - eps) * logp[torch.arange(len(y)), y] - eps * logp.mean(-1)).mean()


def cosine(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-8)


PI = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7], [3, 0, 6, 1, 7, 2, 4, 5], [5, 7, 0, 2, 1, 6, 3, 4]])
SIGMA = torch.tensor([[6, 2, 7, 4, 0, 1, 5, 3], [1, 4, 3, 7, 5, 0, 2, 6], [2, 5, 1, 0, 6, 3, 7, 4]])


def setup(n, lam_mb, lam_bb, variant, eps):
    """Mixer with distinct heads everywhere (online clean, online mix, teacher clean, teacher mix) and pinned N, λ, π, σ."""
    clf, teacher = StubClassifier(0), StubClassifier(1).requires_grad_(False)
    mixer = AdAutoMix(
        num_classes=K, in_channels=C, mix_head=linear(2), mix_num=n, variant=variant, label_smoothing=eps
    )
    with torch.no_grad():
        mixer.mix_head_teacher.weight.copy_(linear(3).weight)
        mixer.mix_head_teacher.bias.copy_(linear(3).bias)
        g = torch.Generator().manual_seed(4)
        for p in mixer.generator.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)  # masks far from uniform
    pi = PI[:n].clone()
    sigma = SIGMA[:n].clone()
    if n == 2:
        pi[0], sigma[0] = torch.arange(B), torch.arange(B)
    p = {"n": n, "lam_mb": torch.tensor(lam_mb), "lam_bb": torch.tensor(lam_bb), "pi": pi, "sigma": sigma}
    mixer.sample = lambda batch_size, device: p
    return clf, teacher, mixer, p


def expected_terms(clf, teacher, mixer, p, x, y, *, variant, step, eps):
    """Every term from its formula (§2.3 released; paper Eq. 2-4, 14, 15)."""
    n, pi, sigma, lam_mb, lam_bb = p["n"], p["pi"], p["sigma"], p["lam_mb"], p["lam_bb"]
    alpha, beta, m = mixer.mce_weight, mixer.adv_weight, mixer.lam_margin
    paper = variant == "paper"
    lam_c, set_c = (lam_mb, pi) if paper else (lam_bb, sigma)  # the classifier's λ and image sets
    l1 = float(lam_c[0])
    hit = l1 <= m or (1 - l1 <= m if n == 2 else l1 > 1 - m)
    with torch.no_grad():
        fmap = teacher.forward_features(x, stage=3).stage_map
        masks_mb = mixer.generator(fmap[pi], lam_mb, x.shape[-2:])
        masks_c = masks_mb if paper else mixer.generator(fmap[sigma], lam_bb, x.shape[-2:])
        if hit:
            masks_c = lam_c.view(1, n, 1, 1).expand_as(masks_c)

        def mix(masks, sets):
            return sum(masks[:, i : i + 1] * x[sets[i]] for i in range(n))

        def mixed_ce(logits, sets, lam):
            return sum(float(lam[i]) * ce(logits, y[sets[i]], eps) for i in range(n))

        online_mix = lambda t: mixer.mix_head(clf.forward_features(t).pooled)  # noqa: E731
        teacher_mix = lambda t: mixer.mix_head_teacher(teacher.forward_features(t).pooled)  # noqa: E731
        one = ce(clf.head(clf.forward_features(x).pooled), y, eps)  # L_one = L_ace (Eq. 2), clean head
        vanilla = lam_c.view(1, n, 1, 1).expand(B, n, *x.shape[-2:])
        van = (
            mixed_ce(online_mix(mix(vanilla, set_c)), set_c, lam_c)
            if (n >= 3 or paper)
            else torch.tensor(0.0)
        )
        gen = mixed_ce(online_mix(mix(masks_c, set_c)), set_c, lam_c)  # L_gen = L_amce(ψ_W) (Eq. 3)
        z = teacher_mix(mix(masks_mb, pi))
        k = mixed_ce(z, pi, lam_mb)  # L_k = L_amce(ψ_Ŵ)
        refs = teacher_mix(x)
        cos = sum(float(lam_mb[i]) * cosine(z, refs[pi[i]]) for i in range(n)).mean()
        re = (1 - alpha) * one + alpha * van if (n >= 3 or paper) else one
        if paper:
            theta = beta * k - (1 - beta) * cos
        else:
            theta = -beta * k + (1 - beta) * cos if step % 2 == 0 else k
    return {
        "loss_one": one,
        "loss_van": van,
        "loss_gen": gen,
        "loss_teacher": k,
        "cos_sim": cos,
        "loss_theta": theta,
        "loss_classifier": gen + re,
        "loss": gen + re + theta,
    }, hit


CASES = [
    # (N, λ^mb, λ^bb): N = 2 has two independent ratios, N ≥ 3 one shared vector; the last two hit the margin.
    (2, [0.7, 0.3], [0.2, 0.8]),
    (3, [0.5, 0.2, 0.3], [0.5, 0.2, 0.3]),
    (3, [0.01, 0.6, 0.39], [0.01, 0.6, 0.39]),
    (2, [0.02, 0.98], [0.6, 0.4]),
]


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("step", [0, 1], ids=["adversarial", "cooperative"])
@pytest.mark.parametrize("variant", ["released", "paper"])
@pytest.mark.parametrize("n, lam_mb, lam_bb", CASES)
def test_terms_match_formulas(n, lam_mb, lam_bb, variant, step, eps):
    clf, teacher, mixer, p = setup(n, lam_mb, lam_bb, variant, eps)
    x = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = mixer(x, y, clf, teacher=teacher, step=step)
    expected, hit = expected_terms(clf, teacher, mixer, p, x, y, variant=variant, step=step, eps=eps)
    if variant == "released" and n == 2:
        assert hit == (lam_bb[0] <= 0.03 or lam_bb[0] >= 0.97)
    for key, value in expected.items():
        assert_close(out[key].detach(), value.float(), rtol=1e-5, atol=1e-6, msg=key)
    assert float(out["adversarial"]) == (1.0 if variant == "paper" or step % 2 == 0 else 0.0)
