"""ReLU6 and ReLU, elementwise.

MobileNetV2 uses ReLU6 after the expansion and the depthwise convolution and **no** activation after the
projection, the linear bottleneck of paper Section 3.2: a ReLU on a low-dimensional representation destroys
information that the following layers cannot recover.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ActivationCache(NamedTuple):
    x: np.ndarray             # the input, whose position relative to the kinks gives the derivative


def relu6_forward(x: np.ndarray):
    """``y = min(max(x, 0), 6)``.

    Parameters
    ----------
    x : ndarray, any shape

    Returns
    -------
    y : ndarray, same shape and dtype
    cache : ActivationCache

    Notes
    -----
    ``dy/dx = 1`` on the open interval ``(0, 6)`` and 0 elsewhere, PyTorch's convention at the kinks
    ``x = 0`` and ``x = 6`` where the derivative does not exist.
    """
    return np.clip(x, 0, 6), ActivationCache(x)


def relu6_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """``dL/dx = dy * [0 < x < 6]``."""
    x = cache.x
    # forward was: y = clip(x, 0, 6)
    return dy * ((x > 0) & (x < 6))


def relu_forward(x: np.ndarray):
    """``y = max(x, 0)``; ``dy/dx = [x > 0]`` (0 at the kink, as PyTorch)."""
    return np.maximum(x, 0), ActivationCache(x)


def relu_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """``dL/dx = dy * [x > 0]``."""
    # forward was: y = max(x, 0)
    return dy * (cache.x > 0)


ACTIVATIONS = {"relu6": (relu6_forward, relu6_backward), "relu": (relu_forward, relu_backward)}
