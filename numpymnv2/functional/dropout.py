"""Inverted dropout, applied before the classifier (p = 0.2 in MobileNetV2)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class DropoutCache(NamedTuple):
    mask: np.ndarray | None   # scaled keep-mask, 0 or 1/(1-p); None when dropout was the identity


def dropout_forward(x: np.ndarray, p: float, training: bool, rng: np.random.Generator,
                    rows: tuple[int, int] | None = None):
    """Zero each element with probability ``p`` and scale the survivors by ``1 / (1 - p)``.

    Parameters
    ----------
    x : ndarray, any shape
    p : float in [0, 1]
    training : bool
        In evaluation mode (or with ``p = 0``) dropout is the identity.
    rng : numpy.random.Generator
        The source of the mask; the same generator state gives the same mask.
    rows : (start, total), optional
        Data-parallel training: ``x`` holds rows ``start .. start + len(x)`` of a batch of ``total`` rows split
        among processes. The mask is drawn for the whole batch, exactly as one process would draw it, and this
        process keeps its rows, so the masks do not depend on the number of processes (every process keeps the
        same generator state).

    Returns
    -------
    y : ndarray, same shape and dtype as ``x``
    cache : DropoutCache

    Notes
    -----
    ``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)`` elementwise, so ``E[y] = x`` and evaluation needs no
    rescaling. An element is kept when its uniform draw ``u = rng.random()`` (in ``x``'s dtype) is ``>= p``.
    ``dL/dx = dL/dy * m / (1 - p)``. With ``p = 1`` every element is dropped and ``y = 0``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x.copy(), DropoutCache(None)
    if p == 1.0:
        mask = np.zeros_like(x)
    else:
        if rows is None:
            u = rng.random(x.shape, dtype=x.dtype)
        else:
            start, total = rows
            if x.ndim == 0 or not 0 <= start <= start + len(x) <= total:
                raise ValueError(f"dropout: x of shape {x.shape} cannot be rows {start}.. of a batch of {total} "
                                 f"rows")
            u = rng.random((total,) + x.shape[1:], dtype=x.dtype)[start:start + len(x)]
        mask = (u >= p).astype(x.dtype) / x.dtype.type(1 - p)
    return x * mask, DropoutCache(mask)


def dropout_backward(dy: np.ndarray, cache: DropoutCache) -> np.ndarray:
    """``dL/dx = dy * mask``."""
    # forward was: y = x * mask
    return dy.copy() if cache.mask is None else dy * cache.mask
