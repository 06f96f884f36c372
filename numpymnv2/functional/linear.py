"""Fully connected layer, the classifier: ``y = x W^T + b``."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class LinearCache(NamedTuple):
    x: np.ndarray             # (N, D_in)
    weight: np.ndarray        # (D_out, D_in)


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None):
    """Affine map of each row, PyTorch's ``nn.Linear`` layout.

    Parameters
    ----------
    x : ndarray, shape (N, D_in)
    weight : ndarray, shape (D_out, D_in)
    bias : ndarray, shape (D_out,), or None

    Returns
    -------
    y : ndarray, shape (N, D_out)
    cache : LinearCache

    Notes
    -----
    ``y = x W^T + b``; backward ``dL/dW = dy^T x``, ``dL/db = sum_n dy``, ``dL/dx = dy W``.
    """
    check_linear_input(x, weight)
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y, LinearCache(x, weight)


def check_linear_input(x: np.ndarray, weight: np.ndarray) -> None:
    """Raise ValueError unless ``x`` is ``(N, D_in)`` with the ``D_in`` of ``weight`` ``(D_out, D_in)``."""
    if x.ndim != 2:
        raise ValueError(f"linear: expected a 2-D input (N, D_in), got shape {x.shape}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: weight expects {weight.shape[1]} input features, got input shape {x.shape}")


def linear_backward(dy: np.ndarray, cache: LinearCache):
    """Return ``(dx, dweight, dbias)`` with shapes ``(N, D_in)``, ``(D_out, D_in)``, ``(D_out,)``."""
    x, weight = cache
    # forward was: y = x @ weight.T + bias
    return dy @ weight, dy.T @ x, dy.sum(axis=0)
