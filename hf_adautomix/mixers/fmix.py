"""FMix (Harris et al., 2020): a binary mask from a thresholded random low-frequency image, one per batch.

Differences from OpenMixup (`reference/adautomix-algorithm.md` §10), on purpose: masks are sampled at the image's
own size (OpenMixup's config fixes `size=(32, 32)`), and only hard masks (`max_soft=0`, the default of both FMix
and OpenMixup) are implemented.
"""

from __future__ import annotations

import math

import torch

from .base import MaskMixer, _BetaMixin, _check_images, _check_positive, sample_beta, shuffle_index


def fourier_low_freq_image(height: int, width: int, decay_power: float, device=None) -> torch.Tensor:
    """FMix's random low-frequency image (H, W): complex Gaussian Fourier coefficients scaled by
    1/max(f, 1/max(H, W))^decay_power, inverse real FFT (ecs-vlc/FMix `make_low_freq_image`, unnormalised: only the
    ranking of its pixels is used)."""
    fy = torch.fft.fftfreq(height, device=device).view(-1, 1)
    fx = torch.fft.rfftfreq(width, device=device).view(1, -1)
    freqs = torch.sqrt(fx * fx + fy * fy)
    scale = 1.0 / freqs.clamp_min(1.0 / max(height, width)) ** decay_power
    param = torch.randn(*freqs.shape, 2, device=device)
    spectrum = torch.complex(param[..., 0] * scale, param[..., 1] * scale)
    return torch.fft.irfftn(spectrum, s=(height, width))


class FMix(_BetaMixin, MaskMixer):
    """FMix (Harris et al., 2020): a binary mask from a thresholded random low-frequency image, one per batch.

    λ ~ Beta(α, α); the top ⌈λHW⌉ or ⌊λHW⌋ pixels (a fair coin picks) of the low-frequency image get x, the rest get
    x[perm]; the label weight of y is the mask's mean (= that count / HW). Hard masks only (`max_soft=0`).

    Args:
        alpha: α of Beta(α, α).
        decay_power: frequency decay d of the 1/f^d spectrum (3 in FMix and OpenMixup).
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "fmix"

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        decay_power: float = 3.0,
        num_classes: int,
        label_smoothing: float = 0.0,
        mix_prob: float = 1.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.alpha = _check_positive("alpha", alpha)
        self.decay_power = _check_positive("decay_power", decay_power)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, decay_power={self.decay_power}, mix_prob={self.mix_prob}"

    def get_params(self, x, y):
        _check_images(x, type(self).__name__)
        height, width = x.shape[-2:]
        lam = sample_beta(self.alpha)
        low = fourier_low_freq_image(height, width, self.decay_power, device=x.device)
        num = (
            math.ceil(lam * height * width)
            if float(torch.rand(())) > 0.5
            else math.floor(lam * height * width)
        )
        order = low.flatten().argsort(descending=True)
        mask = torch.zeros(height * width, device=x.device)
        mask[order[:num]] = 1.0
        perm = shuffle_index(x.shape[0], x.device, no_repeat_tries=10)
        return {"perm": perm, "mask": mask.view(1, 1, height, width), "lam": num / (height * width)}
