"""The classic (hand-crafted) mixup family: MixUp, CutMix, FMix, ResizeMix, SaliencyMix, GridMix, SmoothMix,
ManifoldMix, PuzzleMix, and timm's own `Mixup` behind `--mixup timm`.

Every algorithm follows OpenMixup's implementation, the one that produced the AdAutoMix paper's baselines
(`reference/adautomix-algorithm.md` §10): **one λ, one permutation and one box/mask per batch** (PuzzleMix: one
mask per sample), x̃ = mask ⊙ x + (1 − mask) ⊙ x[perm], and the label weight of `y` is the fraction of x's own
content in x̃, measured on the mask actually used (after box clipping, grid rounding, FMix's top-k binarisation),
so the soft targets always match the pixels.

Sampling (`get_params`) is split from applying (`apply`), torchvision v2 style, so tests can pin the parameters.
All sampling uses the torch RNG (scalars on the CPU generator, permutations and masks on the batch's device), so
`Trainer`'s RNG checkpoint resumes a run exactly. The exceptions are `TimmMixup` (timm's `Mixup` draws from numpy,
which `Trainer` also checkpoints) and nothing else: PuzzleMix's graph cut is deterministic.

Where we differ from OpenMixup, on purpose:

* SmoothMix: the label weight of `y` is mean(1 − G), the fraction of x's own content (§11 B8: OpenMixup gives `y`
  the weight mean(G), i.e. the labels are swapped). Like OpenMixup, SmoothMix draws no Beta λ: its mixing ratio is
  set by the Gaussian's σ ~ U(0.25, 0.5)·size, so `--mix_alpha` does not apply to it.
* Non-square images are handled on each axis (OpenMixup mixes up H and W in several `rand_bbox`es, which only
  matters when H ≠ W); GridMix clips its crop to the image (OpenMixup's crop can overflow for aspect ratios ≠ 1).
* SaliencyMix gives OpenCV the image as min-max scaled 8-bit grey. The released code passes the normalised float
  tensor, which OpenCV's fine-grained saliency (an 8-bit algorithm) does not read as a picture: with
  opencv-contrib 5.0, a bright blob at column 9 of a 32x32 float image gives a "saliency peak" at column 30.
* FMix masks are sampled at the image's own size (OpenMixup's config fixes `size=(32, 32)`), and only hard masks
  (`max_soft=0`, the default of both FMix and OpenMixup) are implemented.

PuzzleMix (Kim et al., ICML 2020) follows the authors' `snu-mllab/PuzzleMix` `mixup.py` as ported to OpenMixup,
with the CIFAR hyperparameters of §10: the saliency is √(mean_c (∂CE/∂x)²) from one extra forward+backward of the
current model in eval mode (gradient w.r.t. the input only, so no parameter `.grad` is touched); a block grid of
2, 4, 8 or 16 blocks per side; per sample, a multi-label graph cut (labels = mask values {1, ½, 0}) over block-pooled
normalised saliency with the data-smoothness terms folded into the unaries exactly as the authors do, solved by
α-β swap (gco-wrapper's `cut_grid_graph(..., algorithm="swap")` when installed — the authors' solver — else our own
α-β swap, each move an exact s-t min-cut by `scipy.sparse.csgraph.maximum_flow`); then the authors' greedy
optimal-transport block rearrangement (t_eps = 0.8, t_size = 4) of both images (index arithmetic instead of
dense (B, n, n) plans: the same assignment, tested against the dense form), and per-sample λ = mean(mask).
Differences from the authors' code, all documented here:

* the adversarial-noise option (off in OpenMixup) is not implemented;
* graph-cut terms are built with adaptive pooling, so image sizes that are not a multiple of the block count work
  (identical to the authors' `avg_pool2d` when they are); the transport cell is the largest size ≤ t_size that
  divides the image on each axis;
* energies are passed to the solver as integers scaled by (n_labels − 1)², which is exactly what gco-wrapper's
  float path computes for the authors' call but without its int32 overflow on very peaked saliency maps; edge weights
  are clipped at 0 (they are positive for images in [0, 1], which is what `image_mean`/`image_std` must give);
* `image_mean`/`image_std` default to ImageNet's (HF image processors'), where OpenMixup uses CIFAR's below 64 px;
* our own swap solver mirrors GCO's (all-0 start, GCO's pair order, free sites keep α) and returned gco's exact
  labelling on every problem compared (300 random grids; the authors' full pipeline on 320 batches), ~15x slower.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import InputMixer, Mixer, cross_entropy, mix_target, soft_cross_entropy

logger = logging.getLogger(__name__)

#: α of Beta(α, α) per method, (CNNs: R18/RX50/WRN, transformer-like: DeiT/Swin/ConvNeXt), from OpenMixup's CIFAR-100
#: README (reference §10). SmoothMix has none: OpenMixup draws λ and discards it. ManifoldMix's second column is its
#: ConvNeXt value (the only transformer-like model it was run with).
DEFAULT_ALPHA: dict[str, tuple[float, float]] = {
    "mixup": (1.0, 0.8),
    "cutmix": (0.2, 2.0),
    "manifoldmix": (2.0, 2.0),
    "saliencymix": (0.2, 0.2),
    "fmix": (0.2, 1.0),
    "gridmix": (0.2, 1.0),
    "resizemix": (1.0, 1.0),
    "puzzlemix": (1.0, 2.0),
}

SALIENCY_INSTALL_HINT = 'pip install "hf_adautomix[saliency]"'
PUZZLEMIX_INSTALL_HINT = 'pip install "hf_adautomix[puzzlemix]"'


def default_alpha(method: str, classifier: nn.Module | None = None) -> float:
    """The §10 default α of `method` for the classifier's architecture family (CNN column when unknown)."""
    if method not in DEFAULT_ALPHA:
        raise ValueError(f"method {method!r} has no default alpha; expected one of {sorted(DEFAULT_ALPHA)}.")
    transformer = bool(getattr(classifier, "is_transformer_like", False))
    return DEFAULT_ALPHA[method][int(transformer)]


# ---------------------------------------------------------------------------------------------------------------
# Small shared helpers
# ---------------------------------------------------------------------------------------------------------------
def _check_positive(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive number, got {name}={value!r}.")
    return float(value)


def _check_range(name: str, value: Any, lo: float, hi: float, *, integer: bool = False) -> tuple:
    """A (low, high) pair with lo <= low <= high <= hi (a single number means (v, v))."""
    pair = (value, value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    kind = int if integer else int | float
    if (
        not isinstance(pair, tuple | list)
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, kind) for v in pair)
        or not lo <= pair[0] <= pair[1] <= hi
    ):
        raise ValueError(
            f"{name} must be a number or a (low, high) pair with {lo} <= low <= high <= {hi}, "
            f"got {name}={value!r}."
        )
    return tuple(pair)


def sample_beta(alpha: float) -> float:
    """λ ~ Beta(α, α), drawn from the torch CPU generator."""
    a = torch.tensor(float(alpha))
    return float(torch.distributions.Beta(a, a, validate_args=False).sample())


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high)."""
    return int(torch.randint(low, high, ()))


def shuffle_index(batch_size: int, device: torch.device | str, *, no_repeat_tries: int = 0) -> torch.Tensor:
    """A random permutation of the batch. With `no_repeat_tries` > 0, the first of that many draws that moves every
    sample (OpenMixup's `_no_repeat_shuffle_idx(ignore_failure=True)`), the last draw if none does; vectorised, so no
    device sync."""
    if no_repeat_tries <= 0 or batch_size < 2:
        return torch.randperm(batch_size, device=device)
    perms = torch.rand(no_repeat_tries, batch_size, device=device).argsort(dim=1)
    moved = (perms != torch.arange(batch_size, device=device)).all(dim=1)
    first = torch.where(moved.any(), moved.int().argmax(), torch.tensor(no_repeat_tries - 1, device=device))
    return perms[first]


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


def _check_images(x: torch.Tensor, who: str) -> None:
    if x.ndim != 4:
        raise ValueError(
            f"{who} expects a batch of images of shape (B, C, H, W), got shape {tuple(x.shape)}."
        )


# ---------------------------------------------------------------------------------------------------------------
# Base classes
# ---------------------------------------------------------------------------------------------------------------
class _BetaMixin:
    """`alpha` validation and `from_args` for the mixers that draw λ ~ Beta(α, α)."""

    method: ClassVar[str]

    @classmethod
    def _arch_kwargs(cls, args, classifier) -> dict[str, Any]:
        """Extra constructor arguments that depend on the architecture (e.g. ResizeMix's interpolation)."""
        return {}

    @classmethod
    def from_args(cls, args, *, num_classes: int, label_smoothing: float, classifier) -> Mixer:
        alpha = args.mix_alpha if args.mix_alpha is not None else default_alpha(cls.method, classifier)
        return cls(
            alpha=alpha,
            num_classes=num_classes,
            label_smoothing=label_smoothing,
            mix_prob=args.mix_prob,
            **cls._arch_kwargs(args, classifier),
        )


class MaskMixer(InputMixer):
    """An input mixer whose parameters are a permutation and a mask `mask` (1|B, 1, H, W) holding the weight of x's own
    content at each pixel: x̃ = mask ⊙ x + (1 − mask) ⊙ x[perm]; the weight of y is mean(mask)."""

    def apply(self, x, y, params):
        _check_images(x, type(self).__name__)
        perm, mask = params["perm"], params["mask"].to(device=x.device, dtype=x.dtype)
        # lerp is exact at weights 0 and 1, so hard masks copy pixels bit for bit
        x_mix = torch.lerp(x[perm], x, mask)
        lam = params["mask"].float().mean(dim=(1, 2, 3)).expand(x.shape[0])
        return x_mix, mix_target(y, perm, lam, self.num_classes, self.label_smoothing)


# ---------------------------------------------------------------------------------------------------------------
# MixUp, CutMix, SaliencyMix, ResizeMix
# ---------------------------------------------------------------------------------------------------------------
class MixUp(_BetaMixin, InputMixer):
    """MixUp (Zhang et al., ICLR 2018): x̃ = λx + (1 − λ)x[perm], λ ~ Beta(α, α) once per batch.

    Args:
        alpha: α of Beta(α, α).
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "mixup"

    def __init__(
        self, *, alpha: float = 1.0, num_classes: int, label_smoothing: float = 0.0, mix_prob: float = 1.0
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.alpha = _check_positive("alpha", alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, mix_prob={self.mix_prob}"

    def get_params(self, x, y):
        return {"lam": sample_beta(self.alpha), "perm": torch.randperm(x.shape[0], device=x.device)}

    def apply(self, x, y, params):
        lam, perm = float(params["lam"]), params["perm"]
        return torch.lerp(x[perm], x, lam), mix_target(y, perm, lam, self.num_classes, self.label_smoothing)


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
            f"Install it with: {SALIENCY_INSTALL_HINT} (opencv-contrib-python-headless)."
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


# ---------------------------------------------------------------------------------------------------------------
# FMix, GridMix, SmoothMix
# ---------------------------------------------------------------------------------------------------------------
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


class GridMix(_BetaMixin, MaskMixer):
    """GridMix (Baek et al., Pattern Recognition 2021): a grid of square holes, filled with x[perm], tiles a random
    crop region; one grid per batch.

    λ ~ Beta(α, α); crop area ratio ~ U(cut_area_ratio), aspect ratio ~ U(cut_aspect_ratio), n_holes ~ U{n_holes};
    cells of width ⌈crop_w / n_holes⌉ each hold a hole of side cell·√(1−λ) (at least 1 px, at most cell − 1).
    The label weight of y is 1 − (hole area)/(HW).

    Args:
        alpha: α of Beta(α, α).
        n_holes: (low, high) range of the number of cells along the crop's width (inclusive).
        hole_aspect_ratio: cell height / cell width.
        cut_area_ratio: (low, high) range of the crop area as a fraction of the image.
        cut_aspect_ratio: (low, high) range of the crop's height / width.
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "gridmix"

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        n_holes: tuple[int, int] = (2, 6),
        hole_aspect_ratio: float = 1.0,
        cut_area_ratio: tuple[float, float] = (0.5, 1.0),
        cut_aspect_ratio: tuple[float, float] = (0.5, 2.0),
        num_classes: int,
        label_smoothing: float = 0.0,
        mix_prob: float = 1.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.alpha = _check_positive("alpha", alpha)
        self.n_holes = _check_range("n_holes", n_holes, 1, 10**6, integer=True)
        self.hole_aspect_ratio = _check_positive("hole_aspect_ratio", hole_aspect_ratio)
        self.cut_area_ratio = _check_range("cut_area_ratio", cut_area_ratio, 0.0, 1.0)
        if self.cut_area_ratio[0] <= 0:
            raise ValueError(f"cut_area_ratio must be > 0, got cut_area_ratio={cut_area_ratio!r}.")
        self.cut_aspect_ratio = _check_range("cut_aspect_ratio", cut_aspect_ratio, 0.0, math.inf)
        if self.cut_aspect_ratio[0] <= 0:
            raise ValueError(f"cut_aspect_ratio must be > 0, got cut_aspect_ratio={cut_aspect_ratio!r}.")

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, n_holes={self.n_holes}, cut_area_ratio={self.cut_area_ratio}, "
            f"cut_aspect_ratio={self.cut_aspect_ratio}, mix_prob={self.mix_prob}"
        )

    def get_params(self, x, y):
        _check_images(x, type(self).__name__)
        height, width = x.shape[-2:]
        lam = sample_beta(self.alpha)
        n_holes = _randint(self.n_holes[0], self.n_holes[1] + 1)
        area_ratio = _uniform(*self.cut_area_ratio)
        aspect = _uniform(*self.cut_aspect_ratio)
        cut_w = int(math.sqrt(int(height * width * area_ratio) / aspect))
        cut_h = int(cut_w * aspect)
        cut_w, cut_h = min(max(cut_w, 1), width), min(max(cut_h, 1), height)
        xc1 = int((width - cut_w) * float(torch.rand(())))
        yc1 = int((height - cut_h) * float(torch.rand(())))
        n_holes = min(n_holes, max(cut_w // 2, 1))
        cell_w = math.ceil(cut_w / n_holes)
        cell_h = max(int(cell_w * self.hole_aspect_ratio), 1)
        ratio = math.sqrt(1.0 - lam)
        hole_w = min(max(int(cell_w * ratio), 1), cell_w - 1)
        hole_h = min(max(int(cell_h * ratio), 1), cell_h - 1)
        # vectorised form of the released loop over cells: a pixel is in a hole when its offset within its cell is
        # below the hole size
        rows = torch.arange(height, device=x.device).view(-1, 1) - yc1
        cols = torch.arange(width, device=x.device).view(1, -1) - xc1
        holes = (
            (rows >= 0)
            & (rows < cut_h)
            & (cols >= 0)
            & (cols < cut_w)
            & (rows.remainder(cell_h) < hole_h)
            & (cols.remainder(cell_w) < hole_w)
        )
        mask = (~holes).float().view(1, 1, height, width)
        return {
            "perm": torch.randperm(x.shape[0], device=x.device),
            "mask": mask,
            "lam": float(mask.mean()),
            "sampled_lam": lam,
        }


class SmoothMix(MaskMixer):
    """SmoothMix (Lee et al., CVPR-W 2020), Gaussian variant as in OpenMixup: x̃ = (1 − G) ⊙ x + G ⊙ x[perm] with
    G(p) = exp(−|p − c|²/(2σ²)), a uniform random centre c and σ ~ U(0.25, 0.5)·size, one G per batch.

    The label weight of y is mean(1 − G), the fraction of x's own content (OpenMixup gives y mean(G): §11 B8). There
    is no α: the mixing ratio comes from σ (OpenMixup draws a Beta λ and discards it).

    Args:
        sigma_range: (low, high) range of σ as a fraction of the image side (per axis for non-square images).
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "smoothmix"

    def __init__(
        self,
        *,
        sigma_range: tuple[float, float] = (0.25, 0.5),
        num_classes: int,
        label_smoothing: float = 0.0,
        mix_prob: float = 1.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.sigma_range = _check_range("sigma_range", sigma_range, 0.0, math.inf)
        if self.sigma_range[0] <= 0:
            raise ValueError(f"sigma_range must be > 0, got sigma_range={sigma_range!r}.")

    @classmethod
    def from_args(cls, args, *, num_classes, label_smoothing, classifier):
        if args.mix_alpha is not None:
            logger.warning(
                "--mix_alpha %s has no effect on --mixup smoothmix: its mixing ratio is set by the "
                "Gaussian's random width (as in OpenMixup, which samples λ and discards it).",
                args.mix_alpha,
            )
        return cls(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=args.mix_prob)

    def extra_repr(self) -> str:
        return f"sigma_range={self.sigma_range}, mix_prob={self.mix_prob}"

    def get_params(self, x, y):
        _check_images(x, type(self).__name__)
        height, width = x.shape[-2:]
        # OpenMixup rolls a centred Gaussian by int(randint(0, size) − size/2) on each axis
        cy = (height - 1) / 2 + int(_randint(0, height) - height / 2)
        cx = (width - 1) / 2 + int(_randint(0, width) - width / 2)
        s = _uniform(*self.sigma_range)
        rows = torch.arange(height, device=x.device, dtype=torch.float32).view(-1, 1)
        cols = torch.arange(width, device=x.device, dtype=torch.float32).view(1, -1)
        gauss = torch.exp(
            -((rows - cy) ** 2 / (2 * (s * height) ** 2) + (cols - cx) ** 2 / (2 * (s * width) ** 2))
        )
        mask = (1.0 - gauss).view(1, 1, height, width)  # weight of x's own content
        return {"perm": torch.randperm(x.shape[0], device=x.device), "mask": mask, "lam": float(mask.mean())}


# ---------------------------------------------------------------------------------------------------------------
# ManifoldMix
# ---------------------------------------------------------------------------------------------------------------
class ManifoldMix(_BetaMixin, Mixer):
    """Manifold Mixup (Verma et al., ICML 2019): mix the hidden maps at a random layer k ∈ `layers`,
    h̃ = λh + (1 − λ)h[perm]; layer 0 is the input, k ≥ 1 the output of stage k (through the classifier adapter's
    `mix_at_stage` hook, shape-agnostic: CNN maps and token sequences alike).

    Args:
        alpha: α of Beta(α, α).
        layers: the layers k is drawn from (OpenMixup: {0, 1, 2}).
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "manifoldmix"

    def __init__(
        self,
        *,
        alpha: float = 2.0,
        layers: tuple[int, ...] = (0, 1, 2),
        num_classes: int,
        label_smoothing: float = 0.0,
        mix_prob: float = 1.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.alpha = _check_positive("alpha", alpha)
        layers = tuple(layers) if isinstance(layers, list | tuple) else layers
        if (
            not isinstance(layers, tuple)
            or not layers
            or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in layers)
        ):
            raise ValueError(
                f"layers must be a non-empty tuple of layer indices >= 0, got layers={layers!r}."
            )
        self.layers = layers

    @classmethod
    def _arch_kwargs(cls, args, classifier):
        stages = getattr(classifier, "num_stages", None)
        return {} if stages is None else {"layers": tuple(k for k in (0, 1, 2) if k <= stages)}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, layers={self.layers}, mix_prob={self.mix_prob}"

    def get_params(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        return {
            "lam": sample_beta(self.alpha),
            "perm": torch.randperm(x.shape[0], device=x.device),
            "layer": self.layers[_randint(0, len(self.layers))],
        }

    def mixed_logits(
        self, x: torch.Tensor, y: torch.Tensor, classifier: nn.Module, params: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward with the mix at `params["layer"]`; returns (logits, soft targets)."""
        lam, perm, layer = float(params["lam"]), params["perm"], int(params["layer"])

        def mix(h: torch.Tensor) -> torch.Tensor:
            return torch.lerp(h[perm], h, lam)

        if layer == 0:
            logits = classifier(mix(x))
        else:
            if not hasattr(classifier, "mix_at_stage"):
                raise TypeError(
                    f"ManifoldMix at layer {layer} needs a classifier adapter with `mix_at_stage` "
                    f"(hf_adautomix.backbones.wrap_classifier), got {type(classifier).__name__}."
                )
            with classifier.mix_at_stage(layer, mix):
                logits = classifier(x)
        return logits, mix_target(y, perm, lam, self.num_classes, self.label_smoothing)

    def forward(self, x, y, classifier):
        if self.skip():
            return self.clean_loss(x, y, classifier)
        params = self.get_params(x, y)
        logits, target = self.mixed_logits(x, y, classifier, params)
        return {"loss": soft_cross_entropy(logits, target), "lam": torch.tensor(float(params["lam"]))}


# ---------------------------------------------------------------------------------------------------------------
# PuzzleMix
# ---------------------------------------------------------------------------------------------------------------
def _import_gco():
    try:
        import gco  # gco-wrapper; note: it sets numpy.int/float/bool aliases on import (numpy >= 1.24 removed them)

        return gco
    except ImportError:
        return None


def grid_energy(labels, unary, pairwise, cost_v, cost_h) -> int:
    """Energy Σ_p D_p(l_p) + Σ_(p,q) w_pq V(l_p, l_q) of a labelling of an (h, w) grid (gco's `cut_grid_graph` model).

    Args:
        labels: (h, w) int labels; unary: (h, w, L); pairwise: (L, L); cost_v: (h−1, w) weights of (i, j)–(i+1, j);
            cost_h: (h, w−1) weights of (i, j)–(i, j+1). numpy arrays.
    """
    import numpy as np

    labels = np.asarray(labels)
    u = np.take_along_axis(unary, labels[..., None], axis=-1).astype(np.int64).sum()
    v = (cost_v.astype(np.int64) * pairwise[labels[:-1, :], labels[1:, :]]).sum()
    h = (cost_h.astype(np.int64) * pairwise[labels[:, :-1], labels[:, 1:]]).sum()
    return int(u + v + h)


def alpha_beta_swap(unary, pairwise, cost_v, cost_h, max_iter: int = 100):
    """Multi-label grid graph cut by α-β swap (Boykov, Veksler & Zabih 2001), each move an exact s-t min-cut.

    Our own, so PuzzleMix runs without gco-wrapper (a C++ build). It mirrors GCO's `swap`: all sites start at label
    0; one sweep visits the pairs (a, b), a < b, in GCO's order (a ascending, b descending); each move's min-cut is
    applied, with sites that are free in the residual graph keeping label a (GCO's default segment); sweeps repeat
    while the energy decreases. Integer energies (numpy arrays, shapes as in `grid_energy`); returns (h, w) labels.
    """
    import numpy as np
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    height, width, n_labels = unary.shape
    n = height * width
    d = unary.reshape(n, n_labels).astype(np.int64)
    idx = np.arange(n).reshape(height, width)
    e_from = np.concatenate([idx[:-1, :].ravel(), idx[:, :-1].ravel()])
    e_to = np.concatenate([idx[1:, :].ravel(), idx[:, 1:].ravel()])
    e_w = np.concatenate([cost_v.ravel(), cost_h.ravel()]).astype(np.int64)
    pairwise = np.asarray(pairwise, dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    pairs = [(a, b) for a in range(n_labels) for b in range(n_labels - 1, -1, -1) if a < b]

    def energy(lab):
        return int(d[np.arange(n), lab].sum() + (e_w * pairwise[lab[e_from], lab[e_to]]).sum())

    def swap_move(a, b):
        in_set = (labels == a) | (labels == b)
        nodes = np.flatnonzero(in_set)
        if nodes.size == 0:
            return
        # cost of each active site taking a or b, incl. its edges to fixed neighbours outside the set
        cost_a, cost_b = d[nodes, a].copy(), d[nodes, b].copy()
        local = np.full(n, -1, dtype=np.int64)
        local[nodes] = np.arange(nodes.size)
        for src, dst in ((e_from, e_to), (e_to, e_from)):
            out = in_set[src] & ~in_set[dst]
            np.add.at(cost_a, local[src[out]], e_w[out] * pairwise[a, labels[dst[out]]])
            np.add.at(cost_b, local[src[out]], e_w[out] * pairwise[b, labels[dst[out]]])
        inner = in_set[e_from] & in_set[e_to]
        m = nodes.size
        s, t = m, m + 1
        base = np.minimum(cost_a, cost_b)
        # source side = label a: cutting s→p (p takes b) costs cost_b, cutting p→t (p takes a) costs cost_a
        w_in = e_w[inner] * pairwise[a, b]
        rows = np.concatenate([np.full(m, s), np.arange(m), local[e_from[inner]], local[e_to[inner]]])
        cols = np.concatenate([np.arange(m), np.full(m, t), local[e_to[inner]], local[e_from[inner]]])
        caps = np.concatenate([cost_b - base, cost_a - base, w_in, w_in])
        keep = caps > 0
        graph = csr_matrix((caps[keep], (rows[keep], cols[keep])), shape=(m + 2, m + 2), dtype=np.int64)
        graph.sum_duplicates()
        if graph.data.size and graph.data.max() >= 2**31:
            raise OverflowError("graph-cut capacities overflow int32.")
        graph = graph.astype(np.int32)
        flow = maximum_flow(graph, s, t).flow
        residual = (graph - flow).tocsr()
        residual.data[residual.data < 0] = 0
        residual.eliminate_zeros()
        # sites that can still reach the sink take b; the rest (source tree and free sites) take a
        to_sink = np.zeros(m + 2, dtype=bool)
        to_sink[breadth_first_order(residual.T.tocsr(), t, directed=True, return_predecessors=False)] = True
        labels[nodes] = np.where(to_sink[:m], b, a)

    new = energy(labels)
    for _ in range(max_iter):
        old = new
        for a, b in pairs:
            swap_move(a, b)
        new = energy(labels)
        if new >= old:
            break
    return labels.reshape(height, width)


@functools.lru_cache(maxsize=32)
def _transport_cost(n_rows: int, n_cols: int) -> torch.Tensor:
    """Squared distance between the cells of an (n_rows, n_cols) grid, normalised by (side − 1)² (authors' C)."""
    rr, cc = torch.meshgrid(torch.arange(n_rows), torch.arange(n_cols), indexing="ij")
    pos = torch.stack([rr.flatten(), cc.flatten()], dim=1).float()
    side = max(n_rows, n_cols, 2)
    return torch.cdist(pos, pos).pow(2) / (side - 1) ** 2


def mask_transport(mask: torch.Tensor, saliency: torch.Tensor, eps: float) -> torch.Tensor:
    """The authors' greedy transport of cells (`mask_transport` of snu-mllab/PuzzleMix), as source indices.

    Every cell i picks the destination j of lowest cost eps·dist(i, j) − saliency(i)·[j visible]; each destination
    keeps the pick of `argmin` over its column of plan ⊙ cost (so rows that did not pick it count as 0, and ties go
    to the first row, exactly as in the authors' dense code); losers pay +1 on their pick and choose again, for `side`
    rounds. Same result as the authors' (B, n, n) plan; each round is one argmin over the (B, n, n) cost plus
    O(B·n) index work, instead of the authors' several dense (B, n, n) scatters and products.

    Args:
        mask: (B, h, w) weight of the transported image per cell (only > 0 matters).
        saliency: (B, h, w) normalised cell saliency of that image.
        eps: t_eps, the weight of the distance cost.

    Returns:
        (B, h·w) long: for each destination cell the source cell moved there, −1 where none (left empty, i.e. 0,
        as in the authors' code).
    """
    batch, n_rows, n_cols = mask.shape
    n = n_rows * n_cols
    device = mask.device
    cost_matrix = _transport_cost(n_rows, n_cols).to(device=device, dtype=torch.float32)
    visible = (mask > 0).float().reshape(batch, 1, n)
    cost = eps * cost_matrix.unsqueeze(0) - saliency.float().reshape(batch, n, 1) * visible
    arange = torch.arange(n, device=device).expand(batch, n)
    none = torch.full((batch, n), n, device=device)
    winner = torch.full((batch, n), -1, device=device)
    for _ in range(max(n_rows, n_cols)):
        choice = cost.argmin(dim=-1)  # (B, n): each source's destination
        chosen = cost.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
        best = torch.full((batch, n), math.inf, device=device).scatter_reduce(1, choice, chosen, "amin")
        first_best = none.scatter_reduce(
            1, choice, torch.where(chosen == best.gather(1, choice), arange, n), "amin"
        )
        # first row that did *not* pick each destination: row 0 for all but row 0's pick
        differs = choice != choice[:, :1]
        first_other = torch.where(differs.any(1), differs.int().argmax(1), n)
        first_outsider = torch.where(arange == choice[:, :1], first_other.unsqueeze(1), 0)
        wins = (first_best < n) & (
            (best < 0) | ((best == 0) & (first_best < first_outsider)) | (first_outsider == n)
        )
        winner = torch.where(wins, first_best, -1)  # (B, n): per destination
        lost = winner.gather(1, choice) != arange  # (B, n): per source
        cost.scatter_add_(-1, choice.unsqueeze(-1), lost.float().unsqueeze(-1))
    return winner


def transport_image(img: torch.Tensor, sources: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Move the (H/h) x (W/w) cells of `img` (B, C, H, W): destination j gets cell `sources[b, j]`, or 0 when −1."""
    batch, channels, height, width = img.shape
    n_rows, n_cols = grid
    th, tw = height // n_rows, width // n_cols
    cells = img.reshape(batch, channels, n_rows, th, n_cols, tw).permute(0, 2, 4, 1, 3, 5)
    cells = cells.reshape(batch, n_rows * n_cols, channels * th * tw)
    index = sources.clamp_min(0).unsqueeze(-1).expand(-1, -1, cells.shape[-1])
    moved = cells.gather(1, index) * (sources >= 0).unsqueeze(-1).to(img.dtype)
    moved = moved.reshape(batch, n_rows, n_cols, channels, th, tw).permute(0, 3, 1, 4, 2, 5)
    return moved.reshape(batch, channels, height, width)


def _neigh_penalty(a: torch.Tensor, b: torch.Tensor, kh: int, kw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Authors' data-smoothness term between adjacent blocks of a pooled image (B, C, n·kh, n·kw): mean |a − b| across
    each block border (vertical neighbours, horizontal neighbours)."""
    pw_v = (a[:, :, :-1, :] - b[:, :, 1:, :])[:, :, kh - 1 :: kh, :]
    pw_h = (a[:, :, :, :-1] - b[:, :, :, 1:])[:, :, :, kw - 1 :: kw]
    pw_v = F.avg_pool2d(pw_v.abs().mean(1), kernel_size=(1, kw))
    pw_h = F.avg_pool2d(pw_h.abs().mean(1), kernel_size=(kh, 1))
    return pw_v, pw_h


class PuzzleMix(_BetaMixin, InputMixer):
    """PuzzleMix (Kim et al., ICML 2020): saliency-aware block masks by graph cut, plus optimal-transport block
    rearrangement; per-sample λ = mean(mask). See the module docstring for the algorithm and its sources.

    Args:
        alpha: α of Beta(α, α); the drawn value is the prior weight of the graph cut (not the final λ).
        beta: label smoothness β (scaled by 1/block_num/16 as in the authors' code).
        gamma: data smoothness γ.
        eta: prior weight η.
        neigh_size: pooling size of the data-smoothness term.
        n_labels: mask levels (2: {0, 1}, 3: {0, ½, 1}, 4: thirds).
        block_nums: the block grids (blocks per side) drawn uniformly per batch.
        transport: rearrange blocks by the optimal-transport plan.
        t_eps: transport distance weight.
        t_size: transport cell size in pixels (cost memory grows as (HW/t_size²)²: use ~16 on 224-px images).
        image_mean, image_std: the normalisation of the inputs, undone for the data-smoothness term (images in [0, 1]).
        graph_cut: "auto" (gco-wrapper when installed, else our α-β swap), "gco" or "swap".
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "puzzlemix"

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 1.2,
        gamma: float = 0.5,
        eta: float = 0.2,
        neigh_size: int = 4,
        n_labels: int = 3,
        block_nums: tuple[int, ...] = (2, 4, 8, 16),
        transport: bool = True,
        t_eps: float = 0.8,
        t_size: int = 4,
        image_mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        image_std: tuple[float, ...] = (0.229, 0.224, 0.225),
        graph_cut: str = "auto",
        num_classes: int,
        label_smoothing: float = 0.0,
        mix_prob: float = 1.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        self.alpha = _check_positive("alpha", alpha)
        for name, value in (("beta", beta), ("gamma", gamma), ("eta", eta)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {name}={value!r}.")
        self.beta, self.gamma, self.eta = float(beta), float(gamma), float(eta)
        for name, value in (("neigh_size", neigh_size), ("t_size", t_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}.")
        self.neigh_size, self.t_size = neigh_size, t_size
        if n_labels not in (2, 3, 4):
            raise ValueError(f"n_labels must be 2, 3 or 4, got n_labels={n_labels!r}.")
        self.n_labels = n_labels
        block_nums = tuple(block_nums) if isinstance(block_nums, list | tuple) else block_nums
        if (
            not isinstance(block_nums, tuple)
            or not block_nums
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 2 for b in block_nums)
        ):
            raise ValueError(
                f"block_nums must be a non-empty tuple of integers >= 2, got block_nums={block_nums!r}."
            )
        self.block_nums = block_nums
        self.transport = bool(transport)
        self.t_eps = _check_positive("t_eps", t_eps)
        if len(image_mean) != len(image_std) or any(s <= 0 for s in image_std):
            raise ValueError(
                f"image_mean and image_std must have one entry per channel and std > 0, got "
                f"image_mean={image_mean!r}, image_std={image_std!r}."
            )
        self.register_buffer(
            "image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "image_std", torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        if graph_cut not in ("auto", "gco", "swap"):
            raise ValueError(f"graph_cut must be 'auto', 'gco' or 'swap', got graph_cut={graph_cut!r}.")
        gco = _import_gco() if graph_cut in ("auto", "gco") else None
        if graph_cut == "gco" and gco is None:
            raise ImportError(
                f"graph_cut='gco' needs gco-wrapper, which is not installed: {PUZZLEMIX_INSTALL_HINT}."
            )
        if graph_cut == "auto" and gco is None:
            logger.info(
                "gco-wrapper is not installed; PuzzleMix uses its own α-β swap graph cut (slower). For the "
                "authors' solver: %s",
                PUZZLEMIX_INSTALL_HINT,
            )
        self.graph_cut = (
            "gco" if gco is not None else "swap"
        )  # the module itself is not kept: mixers deep-copy

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, eta={self.eta}, n_labels={self.n_labels}, "
            f"block_nums={self.block_nums}, transport={self.transport}, t_eps={self.t_eps}, t_size={self.t_size}, "
            f"graph_cut={self.graph_cut!r}, mix_prob={self.mix_prob}"
        )

    # -- saliency --------------------------------------------------------------------------------------------
    @staticmethod
    def saliency(x: torch.Tensor, y: torch.Tensor, classifier: nn.Module) -> torch.Tensor:
        """√(mean_c (∂CE/∂x)²) (B, H, W) from one forward+backward of `classifier` in eval mode on the clean batch.

        Only the input's gradient is computed (`torch.autograd.grad`), so no parameter `.grad` is created or changed;
        every submodule's train/eval mode is restored afterwards.
        """
        modes = [(m, m.training) for m in classifier.modules()]
        classifier.eval()
        try:
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                loss = cross_entropy(classifier(x_in), y)
                (grad,) = torch.autograd.grad(loss, x_in)
        finally:
            for m, training in modes:
                m.training = training
        return grad.float().pow(2).mean(dim=1).sqrt()

    # -- graph cut -------------------------------------------------------------------------------------------
    def _graph_terms(self, x: torch.Tensor, saliency: torch.Tensor, perm: torch.Tensor, block_num: int):
        """Unary (B, n, n, L) and edge weights (B, n−1, n), (B, n, n−1) in float, as the authors build them."""
        batch, _, height, width = x.shape
        bh, bw = height // block_num, width // block_num
        nh, nw = min(self.neigh_size, bh), min(self.neigh_size, bw)
        kh, kw = bh // nh, bw // nw
        beta = self.beta / block_num / 16

        pooled = F.adaptive_avg_pool2d(saliency.unsqueeze(1), (block_num, block_num)).squeeze(1)
        unary1 = pooled / pooled.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1)  # own image
        unary2 = unary1[perm]  # partner

        mean, std = self.image_mean.to(x.device), self.image_std.to(x.device)
        x01 = x.float() * std + mean if mean.shape[1] == x.shape[1] else x.float()
        in1 = F.adaptive_avg_pool2d(x01, (block_num * kh, block_num * kw))
        in2 = in1[perm]
        # index 0 ↔ partner (input2), 1 ↔ own image (input1), as in the authors' code
        pv00, ph00 = _neigh_penalty(in2, in2, kh, kw)
        pv01, ph01 = _neigh_penalty(in2, in1, kh, kw)
        pv10, ph10 = _neigh_penalty(in1, in2, kh, kw)
        pv11, ph11 = _neigh_penalty(in1, in1, kh, kw)
        scale = beta * self.gamma
        pv00, pv01, pv10, pv11 = (scale * t for t in (pv00, pv01, pv10, pv11))
        ph00, ph01, ph10, ph11 = (scale * t for t in (ph00, ph01, ph10, ph11))

        u1, u2 = unary1.clone(), unary2.clone()
        u2[:, :-1, :] += (pv10 + pv11) / 2
        u1[:, :-1, :] += (pv01 + pv00) / 2
        u2[:, 1:, :] += (pv01 + pv11) / 2
        u1[:, 1:, :] += (pv10 + pv00) / 2
        u2[:, :, :-1] += (ph10 + ph11) / 2
        u1[:, :, :-1] += (ph01 + ph00) / 2
        u2[:, :, 1:] += (ph01 + ph11) / 2
        u1[:, :, 1:] += (ph10 + ph00) / 2
        pw_v = (pv10 + pv01 - pv11 - pv00) / 2
        pw_h = (ph10 + ph01 - ph11 - ph00) / 2
        return u1, u2, pw_v + beta, pw_h + beta

    def _cut(self, own, partner, w_v, w_h, prior_lam: float, block_num: int):
        """Per-sample graph cut (CPU); returns mask levels (B, n, n) = 1 − label/(L−1) (weight of x's own image)."""
        import numpy as np

        n_labels, eps = self.n_labels, 1e-8
        a = prior_lam
        prior = {
            2: [a, 1 - a],
            3: [a**2, 2 * a * (1 - a), (1 - a) ** 2],
            4: [a**3, 3 * a**2 * (1 - a), 3 * a * (1 - a) ** 2, (1 - a) ** 3],
        }[n_labels]
        prior = self.eta * -np.log(np.asarray(prior) + eps) / block_num**2
        large_val = 1000 * block_num**2
        levels = np.linspace(0, 1, n_labels)  # label l keeps (1 − l/(L−1)) of the own image
        own, partner = own.detach().cpu().double().numpy(), partner.detach().cpu().double().numpy()
        # label l costs the saliency it discards: (1 − level)·partner + level·own, plus the prior
        unary = np.stack([(1 - lv) * partner + lv * own + prior[i] for i, lv in enumerate(levels)], axis=-1)
        w_v = large_val * w_v.detach().cpu().double().numpy()
        w_h = large_val * w_h.detach().cpu().double().numpy()
        sq = (n_labels - 1) ** 2  # integer smoothness (i−j)² = (L−1)²·V of the authors' float V
        unary = large_val * unary
        if not (np.isfinite(unary).all() and np.isfinite(w_v).all() and np.isfinite(w_h).all()):
            raise FloatingPointError(
                "PuzzleMix graph-cut terms are not finite: the saliency map holds inf/nan "
                "(did the clean forward's loss overflow?)."
            )
        if (
            np.abs(unary).max(initial=0) * sq >= 2**31
            or max(w_v.max(initial=0), w_h.max(initial=0)) * sq >= 2**31
        ):
            raise OverflowError("PuzzleMix graph-cut energies overflow int32; check image_mean / image_std.")
        # truncation to integers as in the authors' `astype(np.int32)`, then the (L−1)² scale
        unary = unary.astype(np.int32) * np.int32(sq)
        pairwise = (np.subtract.outer(np.arange(n_labels), np.arange(n_labels)) ** 2).astype(np.int32)
        w_v, w_h = np.clip(w_v, 0, None).astype(np.int32), np.clip(w_h, 0, None).astype(np.int32)
        gco = _import_gco() if self.graph_cut == "gco" else None
        masks = []
        for i in range(unary.shape[0]):  # one graph cut per sample: the method's own per-sample loop
            if gco is not None:
                labels = gco.cut_grid_graph(unary[i], pairwise, w_v[i], w_h[i], algorithm="swap")
                labels = np.asarray(labels).reshape(block_num, block_num)
            else:
                labels = alpha_beta_swap(unary[i], pairwise, w_v[i], w_h[i])
            masks.append(1.0 - labels / (n_labels - 1))
        return np.stack(masks).astype(np.float32)

    # -- transport grid --------------------------------------------------------------------------------------
    def _transport_grid(self, height: int, width: int, block_num: int) -> tuple[int, int]:
        """Cells of t = min(t_size, block size) px (reduced until it divides the side), per axis."""
        sizes = []
        for side in (height, width):
            t = max(min(self.t_size, side // block_num), 1)
            while side % t:
                t -= 1
            sizes.append(side // t)
        return sizes[0], sizes[1]

    # -- interface -------------------------------------------------------------------------------------------
    def get_params(self, x, y, saliency: torch.Tensor | None = None):
        """Needs `saliency` (B, H, W), e.g. from `PuzzleMix.saliency(x, y, classifier)`."""
        _check_images(x, type(self).__name__)
        batch, _, height, width = x.shape
        if saliency is None or tuple(saliency.shape) != (batch, height, width):
            got = None if saliency is None else tuple(saliency.shape)
            raise ValueError(
                f"PuzzleMix.get_params needs a saliency map of shape {(batch, height, width)}, got {got}."
            )
        perm = torch.randperm(batch, device=x.device)
        prior_lam = sample_beta(self.alpha)
        block_num = self.block_nums[_randint(0, len(self.block_nums))]
        block_num = max(min(block_num, height, width), 1)

        own, partner, w_v, w_h = self._graph_terms(x, saliency.float(), perm, block_num)
        blocks = torch.from_numpy(self._cut(own, partner, w_v, w_h, prior_lam, block_num)).to(x.device)

        params: dict[str, Any] = {"perm": perm, "prior_lam": prior_lam, "block_num": block_num}
        if self.transport:
            grid = self._transport_grid(height, width, block_num)
            mask_t = F.interpolate(blocks.unsqueeze(1), size=grid, mode="nearest").squeeze(1)
            sal_t = F.adaptive_avg_pool2d(saliency.float().unsqueeze(1), grid).squeeze(1)
            sal_t = sal_t / sal_t.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1)
            params["grid"] = grid
            params["src1"] = mask_transport(mask_t, sal_t, self.t_eps)
            params["src2"] = mask_transport(1.0 - mask_t, sal_t[perm], self.t_eps)
            blocks = mask_t
        mask = F.interpolate(blocks.unsqueeze(1), size=(height, width), mode="nearest")
        params["mask"] = mask
        params["lam"] = mask.mean(dim=(1, 2, 3))
        return params

    def apply(self, x, y, params):
        _check_images(x, type(self).__name__)
        perm, mask = params["perm"], params["mask"].to(device=x.device, dtype=x.dtype)
        x1, x2 = x, x[perm]
        if params.get("src1") is not None:
            x1 = transport_image(x1, params["src1"], params["grid"])
            x2 = transport_image(x2, params["src2"], params["grid"])
        x_mix = torch.lerp(x2, x1, mask)
        lam = params["mask"].float().mean(dim=(1, 2, 3))
        return x_mix, mix_target(y, perm, lam, self.num_classes, self.label_smoothing)

    def forward(self, x, y, classifier):
        if self.skip():
            return self.clean_loss(x, y, classifier)
        params = self.get_params(x, y, saliency=self.saliency(x, y, classifier))
        x_mix, target = self.apply(x, y, params)
        return {"loss": soft_cross_entropy(classifier(x_mix), target), "lam": params["lam"].mean().detach()}


# ---------------------------------------------------------------------------------------------------------------
# timm's Mixup
# ---------------------------------------------------------------------------------------------------------------
def parse_minmax(text: str | None, name: str = "--timm_cutmix_minmax") -> tuple[float, float] | None:
    """'lo,hi' -> (lo, hi) with 0 < lo < hi <= 1 (None passes through)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        lo, hi = (float(v) for v in (text.split(",") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 'low,high' (two numbers), got {name}={text!r}.") from None
    if not 0 < lo < hi <= 1:
        raise ValueError(f"{name} must satisfy 0 < low < high <= 1, got {name}={text!r}.")
    return lo, hi


class TimmMixup(Mixer):
    """`--mixup timm`: timm's own `timm.data.Mixup` (MixUp/CutMix switching, batch/pair/elem modes), for users who
    know its flags. It always gets our `num_classes` and label smoothing; the loss is the soft-target CE of
    `timm.loss.SoftTargetCrossEntropy`. timm pairs image i with image B−1−i, so the batch size must be even.
    `mix_prob` is passed as timm's `prob`. timm draws from numpy's RNG (which `Trainer` checkpoints too).

    Args:
        mixup_alpha, cutmix_alpha, cutmix_minmax, switch_prob, mode: timm's `Mixup` arguments.
        num_classes, label_smoothing, mix_prob: see `Mixer`.
    """

    method = "timm"

    def __init__(
        self,
        *,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        cutmix_minmax: tuple[float, float] | None = None,
        switch_prob: float = 0.5,
        mode: str = "batch",
        num_classes: int,
        label_smoothing: float = 0.0,
        mix_prob: float = 1.0,
    ):
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing, mix_prob=mix_prob)
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {name}={value!r}.")
        if cutmix_minmax is not None:
            cutmix_minmax = parse_minmax(cutmix_minmax, "cutmix_minmax")
        if mixup_alpha == 0 and cutmix_alpha == 0 and cutmix_minmax is None:
            raise ValueError(
                "timm Mixup needs mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax; got "
                f"mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}, cutmix_minmax=None."
            )
        if not 0 <= switch_prob <= 1:
            raise ValueError(f"switch_prob must be in [0, 1], got switch_prob={switch_prob!r}.")
        if mode not in ("batch", "pair", "elem"):
            raise ValueError(f"mode must be 'batch', 'pair' or 'elem', got mode={mode!r}.")
        from timm.data import Mixup

        self.mixup = Mixup(
            mixup_alpha=float(mixup_alpha),
            cutmix_alpha=float(cutmix_alpha),
            cutmix_minmax=cutmix_minmax,
            prob=mix_prob,
            switch_prob=switch_prob,
            mode=mode,
            correct_lam=True,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )

    @classmethod
    def from_args(cls, args, *, num_classes, label_smoothing, classifier):
        return cls(
            mixup_alpha=args.timm_mixup_alpha,
            cutmix_alpha=args.timm_cutmix_alpha,
            cutmix_minmax=parse_minmax(args.timm_cutmix_minmax),
            switch_prob=args.timm_switch_prob,
            mode=args.timm_mode,
            num_classes=num_classes,
            label_smoothing=label_smoothing,
            mix_prob=args.mix_prob,
        )

    def extra_repr(self) -> str:
        m = self.mixup
        return (
            f"mixup_alpha={m.mixup_alpha}, cutmix_alpha={m.cutmix_alpha}, cutmix_minmax={m.cutmix_minmax}, "
            f"switch_prob={m.switch_prob}, mode={m.mode!r}, prob={m.mix_prob}"
        )

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets); `x` is not modified (timm mixes in place, so on a copy)."""
        if x.shape[0] % 2:
            raise ValueError(
                f"--mixup timm needs an even batch size (timm's Mixup pairs image i with image B-1-i), got a batch of "
                f"{x.shape[0]}. Use an even --per_device_train_batch_size and --dataloader_drop_last True, so the "
                "last, smaller batch is dropped."
            )
        return self.mixup(x.clone(), y)

    def forward(self, x, y, classifier):
        x_mix, target = self.mix(x, y)
        return {"loss": soft_cross_entropy(classifier(x_mix), target)}


CLASSIC_MIXERS: dict[str, type[Mixer]] = {
    "mixup": MixUp,
    "cutmix": CutMix,
    "fmix": FMix,
    "resizemix": ResizeMix,
    "saliencymix": SaliencyMix,
    "gridmix": GridMix,
    "smoothmix": SmoothMix,
    "manifoldmix": ManifoldMix,
    "puzzlemix": PuzzleMix,
    "timm": TimmMixup,
}

__all__ = [
    "CLASSIC_MIXERS",
    "DEFAULT_ALPHA",
    "CutMix",
    "FMix",
    "GridMix",
    "ManifoldMix",
    "MaskMixer",
    "MixUp",
    "PuzzleMix",
    "ResizeMix",
    "SaliencyMix",
    "SmoothMix",
    "TimmMixup",
    "alpha_beta_swap",
    "default_alpha",
    "grid_energy",
    "mask_transport",
    "sample_beta",
    "shuffle_index",
    "transport_image",
]
