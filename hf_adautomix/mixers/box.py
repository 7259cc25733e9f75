"""The box masks: CutMix, SaliencyMix and ResizeMix paste (all or part of) x[perm] inside one box per batch.

As in OpenMixup (`reference/adautomix-algorithm.md` §10): one λ, one permutation and one box per batch, and the
label weight of `y` is 1 − (clipped box area)/(HW), measured on the box actually used, so the soft targets always
match the pixels. Where we differ from OpenMixup, on purpose:

* Non-square images are handled on each axis (OpenMixup mixes up H and W in several `rand_bbox`es, which only
  matters when H ≠ W).
* SaliencyMix gives OpenCV the image as min-max scaled 8-bit grey. The released code passes the normalised float
  tensor, which OpenCV's fine-grained saliency (an 8-bit algorithm) does not read as a picture: with
  opencv-contrib 5.0, a bright blob at column 9 of a 32x32 float image gives a "saliency peak" at column 30.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import (
    InputMixer,
    _BetaMixin,
    _check_images,
    _check_positive,
    _check_range,
    _randint,
    _uniform,
    mix_target,
    sample_beta,
    shuffle_index,
)

SALIENCY_INSTALL_HINT = 'pip install "hf_adautomix[saliency]"'


def box_mask(
    height: int, width: int, box: tuple[int, int, int, int], device, dtype=torch.float32
) -> torch.Tensor:
    """(1, 1, H, W) mask that is 1 inside box = (y1, y2, x1, x2) (half-open) and 0 outside."""
    y1, y2, x1, x2 = box
    rows = torch.arange(height, device=device).view(-1, 1)
    cols = torch.arange(width, device=device).view(1, -1)
    inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    return inside.to(dtype).view(1, 1, height, width)


def rand_box(height: int, width: int, cut_h: int, cut_w: int) -> tuple[int, int, int, int]:
    """OpenMixup's `rand_bbox`: a cut_h x cut_w box at a uniform random integer centre, clipped to the image."""
    cy, cx = _randint(0, height), _randint(0, width)
    return _clip_box(cy, cx, cut_h, cut_w, height, width)


def _clip_box(cy: int, cx: int, cut_h: int, cut_w: int, height: int, width: int) -> tuple[int, int, int, int]:
    y1, y2 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    x1, x2 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return y1, y2, x1, x2


def _box_lam(box: tuple[int, int, int, int], height: int, width: int) -> float:
    y1, y2, x1, x2 = box
    return 1.0 - (y2 - y1) * (x2 - x1) / (height * width)


class CutMix(_BetaMixin, InputMixer):
    """CutMix (Yun et al., ICCV 2019): paste x[perm] inside one box per batch.

    The box is (H·√(1−λ)) x (W·√(1−λ)) at a uniform random centre, clipped to the image; the label weight of y is
    1 − (clipped box area)/(HW). The permutation tries 10 times to move every sample, as OpenMixup's.

    Args:
        alpha: α of Beta(α, α).
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "cutmix"
    no_repeat_tries = 10

    def __init__(
        self, *, alpha: float = 1.0, num_classes: int, label_smoothing: float = 0.0, mix_prob: float = 1.0
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.alpha = _check_positive("alpha", alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, mix_prob={self.mix_prob}"

    def _box(self, x: torch.Tensor, lam: float) -> tuple[int, int, int, int]:
        height, width = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        return rand_box(height, width, int(height * cut), int(width * cut))

    def get_params(self, x, y):
        _check_images(x, type(self).__name__)
        lam = sample_beta(self.alpha)
        perm = shuffle_index(x.shape[0], x.device, no_repeat_tries=self.no_repeat_tries)
        box = self._box(x, lam)
        return {"perm": perm, "box": box, "lam": _box_lam(box, *x.shape[-2:])}

    def apply(self, x, y, params):
        _check_images(x, type(self).__name__)
        height, width = x.shape[-2:]
        perm, box = params["perm"], tuple(int(v) for v in params["box"])
        inside = box_mask(height, width, box, x.device, torch.bool)
        x_mix = torch.where(inside, x[perm], x)
        lam = _box_lam(box, height, width)  # the clipped box's own area, whatever `params["lam"]` says
        return x_mix, mix_target(y, perm, lam, self.num_classes, self.label_smoothing)


def _import_saliency():
    try:
        import cv2

        return cv2.saliency.StaticSaliencyFineGrained_create
    except (ImportError, AttributeError) as e:
        raise ImportError(
            "--mixup saliencymix needs OpenCV's contrib saliency module (cv2.saliency), which is not installed. "
            f"Install it with: {SALIENCY_INSTALL_HINT} (opencv-contrib-python-headless). If it is installed, "
            "another OpenCV package (e.g. opencv-python, which imagecorruptions-imaug pulls in) was installed over "
            "it, into the same cv2 folder: pip install --force-reinstall --no-deps opencv-contrib-python-headless."
        ) from e


class SaliencyMix(CutMix):
    """SaliencyMix (Uddin et al., ICLR 2021): CutMix whose box is centred on the peak of OpenCV's static fine-grained
    saliency map of one image, the first image of the permuted batch; that box is used for the whole batch.

    Needs `opencv-contrib-python-headless` (`pip install "hf_adautomix[saliency]"`), imported on first use.

    Args:
        alpha: α of Beta(α, α).
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "saliencymix"

    def __init__(
        self, *, alpha: float = 1.0, num_classes: int, label_smoothing: float = 0.0, mix_prob: float = 1.0
    ):
        super().__init__(
            alpha=alpha, num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob
        )
        self._create_saliency = _import_saliency()  # fail at construction, not at the first training step

    def saliency_peak(self, image: torch.Tensor) -> tuple[int, int]:
        """(row, col) of the saliency peak of one (C, H, W) image.

        OpenCV's fine-grained saliency reads 8-bit pixels: the released code hands it the normalised float tensor,
        which OpenCV then reads byte by byte (a meaningless map). We give it the image as 8-bit grey, min-max scaled.
        """
        img = image.detach().float().cpu()
        if img.shape[0] == 3:
            grey = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
        else:
            grey = img.mean(0)
        grey = (grey - grey.min()) / (grey.max() - grey.min()).clamp_min(1e-12)
        grey = (grey * 255).round().to(torch.uint8).numpy()
        ok, sal = self._create_saliency().computeSaliency(grey)
        if not ok:
            raise RuntimeError("OpenCV StaticSaliencyFineGrained failed to compute a saliency map.")
        sal = torch.from_numpy(
            (sal * 255).astype("uint8")
        )  # quantised as the released code does (ties → first)
        flat = int(sal.flatten().argmax())
        return flat // sal.shape[1], flat % sal.shape[1]

    def get_params(self, x, y):
        _check_images(x, type(self).__name__)
        height, width = x.shape[-2:]
        lam = sample_beta(self.alpha)
        perm = torch.randperm(x.shape[0], device=x.device)  # OpenMixup's SaliencyMix: a plain permutation
        cy, cx = self.saliency_peak(x[perm[0]])
        cut = math.sqrt(1.0 - lam)
        box = _clip_box(cy, cx, int(height * cut), int(width * cut), height, width)
        return {"perm": perm, "box": box, "lam": _box_lam(box, height, width), "peak": (cy, cx)}


class ResizeMix(_BetaMixin, InputMixer):
    """ResizeMix (Qin et al., 2020): the *whole* of x[perm] is resized into a box of x.

    τ ~ Beta(α, α), redrawn as U(scope) when outside `scope` (OpenMixup's `use_alpha=True`); the box is (τH) x (τW)
    at a uniform random centre, clipped; the label weight of y is 1 − (clipped box area)/(HW).

    Args:
        alpha: α of Beta(α, α).
        scope: (low, high) range of the scale τ.
        interpolation: "nearest" (OpenMixup CNN configs) or "bilinear" (its ViT configs; `from_args` picks it for
            transformer-like models).
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "resizemix"

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        scope: tuple[float, float] = (0.1, 0.8),
        interpolation: str = "nearest",
        num_classes: int,
        label_smoothing: float = 0.0,
        mix_prob: float = 1.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.alpha = _check_positive("alpha", alpha)
        self.scope = _check_range("scope", scope, 0.0, 1.0)
        if self.scope[0] <= 0:
            raise ValueError(f"scope must have 0 < low <= high <= 1, got scope={scope!r}.")
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(
                f"interpolation must be 'nearest' or 'bilinear', got interpolation={interpolation!r}."
            )
        self.interpolation = interpolation

    @classmethod
    def _arch_kwargs(cls, args, classifier):
        return {
            "interpolation": "bilinear" if getattr(classifier, "is_transformer_like", False) else "nearest"
        }

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, scope={self.scope}, interpolation={self.interpolation!r}, mix_prob={self.mix_prob}"

    def get_params(self, x, y):
        _check_images(x, type(self).__name__)
        height, width = x.shape[-2:]
        tau = sample_beta(self.alpha)
        if not self.scope[0] <= tau <= self.scope[1]:
            tau = _uniform(*self.scope)
        box = rand_box(height, width, int(height * tau), int(width * tau))
        return {
            "perm": torch.randperm(x.shape[0], device=x.device),
            "box": box,
            "tau": tau,
            "lam": _box_lam(box, height, width),
        }

    def apply(self, x, y, params):
        _check_images(x, type(self).__name__)
        height, width = x.shape[-2:]
        perm, (y1, y2, x1, x2) = params["perm"], (int(v) for v in params["box"])
        x_mix = x.clone()
        if y2 > y1 and x2 > x1:
            small = F.interpolate(
                x[perm],
                size=(y2 - y1, x2 - x1),
                mode=self.interpolation,
                **({"align_corners": False} if self.interpolation == "bilinear" else {}),
            )
            x_mix[:, :, y1:y2, x1:x2] = small
        lam = _box_lam((y1, y2, x1, x2), height, width)
        return x_mix, mix_target(y, perm, lam, self.num_classes, self.label_smoothing)
