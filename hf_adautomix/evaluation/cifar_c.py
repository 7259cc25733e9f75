"""CIFAR-10/100-C's versions of the 19 common corruptions: their parameters (`CIFAR_C_PARAMS`) and one function
per type (`CIFAR_C`, a dispatch table from name to function), written on top of `imagecorruptions`' helpers.

Each function is `(uint8 HxWx3 image, the severity's parameters, seed) -> uint8 image` and draws from numpy's
global RNG, which `corruptions.corrupt_image` seeds (after checking that `imagecorruptions` is installed); the
order of the draws fixes the pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO

import numpy as np
import PIL.Image

__all__ = ["CIFAR_C", "CIFAR_C_PARAMS"]

# CIFAR-10/100-C parameters, severities 1..5, from Hendrycks' `make_cifar_c.py`
# (github.com/hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py). We checked them against a public copy of
# that file (its header says "copied from" it); we could not open the original offline. Where CIFAR-C's algorithm
# differs from ImageNet-C's, the functions below follow CIFAR-C: plasma fractal of the image's size (fog), the frost
# pictures scaled by 0.2 (frost), a BOX upsampling (pixelate), a random affine before a differently
# parameterised elastic warp (elastic_transform). Motion blur (motion_blur, snow) was ImageMagick's in CIFAR-C;
# like `imagecorruptions` we use its numpy re-implementation, so those two only approximate CIFAR-C.
CIFAR_C_PARAMS: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],  # noise std
    "shot_noise": [500, 250, 100, 75, 50],  # Poisson photons per unit intensity
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],  # salt & pepper amount
    "speckle_noise": [0.06, 0.1, 0.12, 0.16, 0.2],  # multiplicative noise std
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1.0],  # sigma
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],  # sigma, delta, iters
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # disk radius, alias blur
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],  # radius, sigma
    "zoom_blur": [
        np.arange(1, 1.06, 0.01),
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.01),
        np.arange(1, 1.26, 0.01),
    ],  # fmt: skip
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],  # strength, wibble decay
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],  # image weight, frost weight
    "snow": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],  # fmt: skip
    "spatter": [
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ],  # fmt: skip
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
    "jpeg_compression": [80, 65, 58, 50, 40],  # quality
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],  # downscale factor
    # (alpha, sigma, affine max shift) as fractions of the image side
    "elastic_transform": [
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ],
}


def _unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0


def _u8(x: np.ndarray) -> np.ndarray:
    return np.uint8(np.clip(x, 0, 1) * 255)


def _ops():
    import imagecorruptions.corruptions as ops  # `corrupt_image` has checked that it is installed

    return ops


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.filters import gaussian

    return gaussian(x, sigma=sigma, channel_axis=-1 if x.ndim == 3 else None)


def _hsv(x: np.ndarray, channel: int, scale: float, shift: float) -> np.ndarray:
    import skimage.color

    hsv = skimage.color.rgb2hsv(x)
    hsv[..., channel] = np.clip(hsv[..., channel] * scale + shift, 0, 1)
    return skimage.color.hsv2rgb(hsv)


def _gaussian_noise(image, c, seed):
    x = _unit(image)
    return _u8(x + np.random.normal(size=x.shape, scale=c))


def _shot_noise(image, c, seed):
    return _u8(np.random.poisson(_unit(image) * c) / c)


def _impulse_noise(image, c, seed):
    import skimage.util

    return _u8(skimage.util.random_noise(_unit(image), mode="s&p", rng=seed, amount=c))


def _speckle_noise(image, c, seed):
    x = _unit(image)
    return _u8(x + x * np.random.normal(size=x.shape, scale=c))


def _gaussian_blur(image, c, seed):
    return _u8(_gauss(_unit(image), c))


def _glass_blur(image, c, seed):
    h, w = image.shape[:2]
    blurred = np.uint8(_gauss(_unit(image), c[0]) * 255)
    # The package's numba loop (local pixel shuffling, fast after its first compiling call); not public API.
    shuffled = _ops()._shuffle_pixels_njit_glass_blur(h, w, blurred, c, seed)  # noqa: SLF001
    return _u8(_gauss(shuffled / 255.0, c[0]))


def _defocus_blur(image, c, seed):
    import cv2

    x = _unit(image)
    kernel = _ops().disk(radius=c[0], alias_blur=c[1])
    return _u8(np.stack([cv2.filter2D(x[..., d], -1, kernel) for d in range(3)], axis=-1))


def _motion_blur(image, c, seed):
    # The package's numpy re-implementation of ImageMagick's motion blur; not public API.
    blur = _ops()._motion_blur  # noqa: SLF001
    return _u8(blur(image, radius=c[0], sigma=c[1], angle=np.random.uniform(-45, 45)) / 255.0)


def _zoom_blur(image, c, seed):
    h, w = image.shape[:2]
    x32 = _unit(image).astype(np.float32)
    out = np.zeros_like(x32)
    for factor in c:
        out += _ops().clipped_zoom(x32, factor)[:h, :w]
    return _u8((x32 + out) / (len(c) + 1))


def _fog(image, c, seed):
    h, w = image.shape[:2]
    x = _unit(image)
    size = 1 << (max(h, w) - 1).bit_length()  # the next power of two
    max_val = x.max()
    x = x + c[0] * _ops().plasma_fractal(mapsize=size, wibbledecay=c[1])[:h, :w][..., None]
    return _u8(x * max_val / (max_val + c[0]))


def _frost(image, c, seed):
    import importlib.resources

    import cv2

    h, w = image.shape[:2]
    # CIFAR-C draws from the first five of the six frost pictures.
    picture = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")[np.random.randint(5)]
    with importlib.resources.as_file(
        importlib.resources.files("imagecorruptions") / "frost" / picture
    ) as path:
        frost = cv2.imread(str(path))
    frost = cv2.resize(frost, (0, 0), fx=0.2, fy=0.2)
    if frost.shape[0] <= h or frost.shape[1] <= w:  # images larger than CIFAR's: scale the frost up to fit
        scale = 1.1 * max(h / frost.shape[0], w / frost.shape[1])
        frost = cv2.resize(frost, (0, 0), fx=scale, fy=scale)
    top, left = np.random.randint(0, frost.shape[0] - h), np.random.randint(0, frost.shape[1] - w)
    return _u8((c[0] * image + c[1] * frost[top : top + h, left : left + w][..., [2, 1, 0]]) / 255.0)


def _snow(image, c, seed):
    import cv2

    ops = _ops()
    h, w = image.shape[:2]
    xf = _unit(image).astype(np.float32)
    layer = np.random.normal(size=(h, w), loc=c[0], scale=c[1])
    layer = ops.clipped_zoom(layer[..., None], c[2])[:h, :w]
    layer[layer < c[3]] = 0
    layer = np.round(np.clip(layer.squeeze(-1), 0, 1) * 255).astype(np.uint8)
    # The package's motion blur, as in `_motion_blur`; not public API.
    layer = ops._motion_blur(layer, radius=c[4], sigma=c[5], angle=np.random.uniform(-135, -45))  # noqa: SLF001
    layer = (np.round(layer) / 255.0)[..., None]
    gray = cv2.cvtColor(xf, cv2.COLOR_RGB2GRAY)[..., None]
    xf = c[6] * xf + (1 - c[6]) * np.maximum(xf, gray * 1.5 + 0.5)
    return _u8(xf + layer + np.rot90(layer, k=2))


def _spatter(image, c, seed):
    """Water drops (c[5] == 0) or mud (c[5] == 1)."""
    import cv2

    x = _unit(image).astype(np.float32)
    liquid = _gauss(np.random.normal(size=x.shape[:2], loc=c[0], scale=c[1]), c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        liquid = (liquid * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = liquid * dist
        m = m / max(float(m.max()), 1e-12) * c[4]
        water = np.array([238, 238, 175], dtype=np.float32) / 255.0  # pale turquoise, RGB
        return _u8(x + m[..., None] * water)
    m = _gauss(np.where(liquid > c[3], 1.0, 0.0).astype(np.float32), c[4])
    m[m < 0.8] = 0
    mud = np.array([63, 42, 20], dtype=np.float32) / 255.0  # mud brown, RGB
    return _u8(x * (1 - m[..., None]) + m[..., None] * mud)


def _contrast(image, c, seed):
    x = _unit(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _u8((x - means) * c + means)


def _brightness(image, c, seed):
    return _u8(_hsv(_unit(image), 2, 1.0, c))


def _saturate(image, c, seed):
    return _u8(_hsv(_unit(image), 1, c[0], c[1]))


def _jpeg_compression(image, c, seed):
    buffer = BytesIO()
    PIL.Image.fromarray(image).save(buffer, "JPEG", quality=c)
    return np.asarray(PIL.Image.open(buffer).convert("RGB"), dtype=np.uint8)


def _pixelate(image, c, seed):
    h, w = image.shape[:2]
    small = PIL.Image.fromarray(image).resize((int(w * c), int(h * c)), PIL.Image.BOX)
    return np.asarray(small.resize((w, h), PIL.Image.BOX), dtype=np.uint8)


def _elastic_transform(image, c, seed):
    """A random affine (corners moved by up to c[2] of the side), then an elastic warp of strength c[0] and
    smoothness c[1] (fractions of the side)."""
    import cv2
    from scipy.ndimage import map_coordinates

    h, w = image.shape[:2]
    alpha, sigma, shift = (v * min(h, w) for v in c)
    x = _unit(image).astype(np.float32)
    center = np.float32((h, w)) // 2
    half = min(h, w) // 3
    pts1 = np.float32([center + half, [center[0] + half, center[1] - half], center - half])
    pts2 = pts1 + np.random.uniform(-shift, shift, size=pts1.shape).astype(np.float32)
    x = cv2.warpAffine(x, cv2.getAffineTransform(pts1, pts2), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx = (_gauss(np.random.uniform(-1, 1, size=(h, w)), sigma) * alpha).astype(np.float32)
    dy = (_gauss(np.random.uniform(-1, 1, size=(h, w)), sigma) * alpha).astype(np.float32)
    yy, xx, zz = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    coords = (yy + dy[..., None]).reshape(-1), (xx + dx[..., None]).reshape(-1), zz.reshape(-1)
    return _u8(map_coordinates(x, coords, order=1, mode="reflect").reshape(x.shape))


CIFAR_C: dict[str, Callable[[np.ndarray, object, int], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "spatter": _spatter,
    "saturate": _saturate,
}
