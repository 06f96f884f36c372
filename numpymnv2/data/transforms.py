"""Batch transforms: small callables ``t(x, rng) -> x`` on a whole NHWC batch.

The convention, once for the module:

- ``x`` is a batch of shape (N, H, W, C), uint8 (0..255) or float32/float64 (0..1 once converted).
- ``rng`` is a ``numpy.random.Generator``; a transform draws from it only, in a fixed order, so the output is a
  function of the input and the generator's state. Deterministic transforms ignore it.
- A transform never writes into ``x``: it returns a new array (or ``x`` itself when it has nothing to do),
  so batches that are views of a :class:`~numpymnv2.data.Dataset` leave the dataset intact.
- Float in, the same float dtype out. Only :class:`ToFloat` chooses a dtype: float32 unless asked for float64.

A typical training pipeline is ``Compose([ToFloat(), Resize(32), GrayToRGB(), RandomCrop(32, padding=4),
RandomHorizontalFlip(), Normalize(mean, std)])``; :func:`default_transform` builds one for a dataset.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from numpymnv2._checks import resolve_dtype

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _check_batch(x, where: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        got = f"shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{where}: expected a batch of shape (N, H, W, C), got {got}")
    if not (x.dtype == np.uint8 or x.dtype in (np.float32, np.float64)):
        raise TypeError(f"{where}: expected a uint8, float32 or float64 batch, got dtype {x.dtype}")
    return x


def _pair(size, where: str) -> tuple[int, int]:
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"{where}: size must be a positive int or (H, W), got {size!r}")
    return int(h), int(w)


class ToFloat:
    """uint8 0..255 -> float in [0, 1] (``x / 255``); a float batch is only cast to ``dtype``."""

    def __init__(self, dtype="float32"):
        self.dtype = resolve_dtype(dtype)

    def __call__(self, x, rng=None):
        x = _check_batch(x, "ToFloat")
        if x.dtype == np.uint8:
            return x.astype(self.dtype) / self.dtype.type(255)
        return x.astype(self.dtype, copy=False)

    def __repr__(self):
        return f"ToFloat(dtype='{self.dtype}')"


def _bilinear_taps(n_in: int, n_out: int):
    """Source rows ``i0``, ``i1`` and weight ``t`` for each output row, half-pixel centres.

    Output pixel ``j`` has its centre at source coordinate ``s = (j + 0.5) * n_in / n_out - 0.5``, clamped to
    ``[0, n_in - 1]`` so edge pixels repeat; it reads ``x[i0] + t * (x[i1] - x[i0])`` with ``i0 = floor(s)``,
    ``i1 = min(i0 + 1, n_in - 1)`` and ``t = s - i0``.
    """
    s = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    i0 = np.floor(s).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, s - i0


def bilinear_resize(x: np.ndarray, size) -> np.ndarray:
    """Resize a batch to ``size`` = (H_out, W_out) by bilinear interpolation, separably (rows, then columns).

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
        uint8, float32 or float64.
    size : int or (int, int)

    Returns
    -------
    ndarray, shape (N, H_out, W_out, C)
        Same dtype as ``x``; uint8 is computed in float32, rounded and clipped.

    Notes
    -----
    Half-pixel centres and edge clamping, as ``torch.nn.functional.interpolate(x, mode="bilinear",
    align_corners=False)``: along one axis ``y[j] = x[i0] + t (x[i1] - x[i0])`` (see ``_bilinear_taps``). The
    ``a + t (b - a)`` form keeps a constant image exactly constant, and at equal sizes ``t = 0`` so the
    image is returned unchanged. There is no anti-aliasing filter: shrinking by more than 2x skips pixels,
    which is fine for the upsampling this package needs (8 -> 32, 28 -> 32, 32 -> 224).
    """
    x = _check_batch(x, "Resize")
    H_out, W_out = _pair(size, "Resize")
    N, H, W, C = x.shape
    if (H, W) == (H_out, W_out):
        return x
    y = x if x.dtype != np.uint8 else x.astype(np.float32)
    work = y.dtype.type
    if H != H_out:
        i0, i1, t = _bilinear_taps(H, H_out)
        top, bottom = y[:, i0], y[:, i1]
        y = top + t.astype(work)[None, :, None, None] * (bottom - top)
    if W != W_out:
        i0, i1, t = _bilinear_taps(W, W_out)
        left, right = y[:, :, i0], y[:, :, i1]
        y = left + t.astype(work)[None, None, :, None] * (right - left)
    if x.dtype == np.uint8:
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return y


class Resize:
    """Bilinear resize to ``size`` (int or (H, W)); see :func:`bilinear_resize`. Keeps the dtype."""

    def __init__(self, size):
        self.size = _pair(size, "Resize")

    def __call__(self, x, rng=None):
        return bilinear_resize(x, self.size)

    def __repr__(self):
        return f"Resize(size={self.size})"


class GrayToRGB:
    """Repeat a single channel three times, (N, H, W, 1) -> (N, H, W, 3); an RGB batch passes unchanged."""

    def __call__(self, x, rng=None):
        x = _check_batch(x, "GrayToRGB")
        if x.shape[-1] == 3:
            return x
        if x.shape[-1] != 1:
            raise ValueError(f"GrayToRGB: expected 1 or 3 channels, got {x.shape[-1]} (shape {x.shape})")
        return np.repeat(x, 3, axis=-1)

    def __repr__(self):
        return "GrayToRGB()"


class Normalize:
    """``(x - mean) / std`` per channel, on a float batch; mean and std have one value per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape or (self.std <= 0).any():
            raise ValueError(f"Normalize: expected mean and std of equal length with std > 0, got mean "
                             f"{self.mean.tolist()} and std {self.std.tolist()}")

    def __call__(self, x, rng=None):
        x = _check_batch(x, "Normalize")
        if x.dtype == np.uint8:
            raise TypeError("Normalize: expected a float batch, got uint8; put ToFloat() before Normalize")
        if self.mean.size not in (1, x.shape[-1]):
            raise ValueError(f"Normalize: {self.mean.size} means and stds for a batch with {x.shape[-1]} "
                             f"channels (shape {x.shape})")
        return (x - self.mean.astype(x.dtype)) / self.std.astype(x.dtype)

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomCrop:
    """Pad every side with ``padding`` zeros, then cut a ``size`` window at a random place, per image.

    ``size`` defaults to the input size, so ``RandomCrop(padding=4)`` is the usual CIFAR augmentation: a random
    shift of up to 4 pixels that keeps the shape. Draws ``rng.integers`` for the rows, then the columns.
    """

    def __init__(self, size=None, padding: int = 0):
        self.size = None if size is None else _pair(size, "RandomCrop")
        if int(padding) < 0:
            raise ValueError(f"RandomCrop: padding must be >= 0, got {padding}")
        self.padding = int(padding)

    def __call__(self, x, rng):
        x = _check_batch(x, "RandomCrop")
        N, H, W, C = x.shape
        h, w = self.size or (H, W)
        p = self.padding
        if h > H + 2 * p or w > W + 2 * p:
            raise ValueError(f"RandomCrop: crop {h}x{w} is larger than the padded image "
                             f"{H + 2 * p}x{W + 2 * p} (shape {x.shape}, padding {p})")
        padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x
        top = rng.integers(0, H + 2 * p - h + 1, size=N)
        left = rng.integers(0, W + 2 * p - w + 1, size=N)
        out = np.empty((N, h, w, C), dtype=x.dtype)
        for n in range(N):
            out[n] = padded[n, top[n]:top[n] + h, left[n]:left[n] + w]
        return out

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p`` (one ``rng.random(N)`` draw)."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must lie in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x, rng):
        x = _check_batch(x, "RandomHorizontalFlip")
        flip = rng.random(x.shape[0]) < self.p
        out = x.copy()
        out[flip] = x[flip, :, ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x, rng=None):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        inner = ",\n    ".join(repr(t) for t in self.transforms)
        return f"Compose([\n    {inner}\n])"


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 images (N, H, W, C), on the [0, 1] scale.

    Computed from a 256-bin histogram per channel, so it is exact and needs no float copy of the data.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError("channel_stats: expected uint8 images of shape (N, H, W, C)")
    v = np.arange(256) / 255.0
    mean, std = [], []
    for c in range(images.shape[-1]):
        counts = np.bincount(images[..., c].ravel(), minlength=256)
        m = counts @ v / counts.sum()
        mean.append(m)
        std.append(np.sqrt(counts @ (v - m) ** 2 / counts.sum()))
    return np.array(mean), np.array(std)


def default_transform(dataset, resolution: int | None = None, train: bool = True, dtype="float32",
                      flip: bool | None = None) -> Compose:
    """A standard pipeline that turns a :class:`~numpymnv2.data.Dataset` into network input.

    ToFloat(dtype) -> Resize(resolution) when the size differs -> GrayToRGB when C = 1 -> for training,
    RandomCrop(padding=resolution // 8) and (if ``flip``) RandomHorizontalFlip -> Normalize with the dataset's
    own per-channel mean and std (:func:`channel_stats` of the stored images). ``flip`` defaults to True
    except for "digits" and "mnist", whose classes are not mirror symmetric.
    """
    H, W, C = dataset.images.shape[1:]
    size = (H, W) if resolution is None else _pair(resolution, "default_transform")
    steps: list[Transform] = [ToFloat(dtype)]
    if size != (H, W):
        steps.append(Resize(size))
    if C == 1:
        steps.append(GrayToRGB())
    if train:
        steps.append(RandomCrop(size, padding=max(1, min(size) // 8)))
        if flip if flip is not None else dataset.name not in ("digits", "mnist"):
            steps.append(RandomHorizontalFlip())
    mean, std = channel_stats(dataset.images)
    if C == 1:
        mean, std = np.repeat(mean, 3), np.repeat(std, 3)
    steps.append(Normalize(mean, np.maximum(std, 1e-8)))
    return Compose(steps)
