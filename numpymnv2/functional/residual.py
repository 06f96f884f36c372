"""The residual (shortcut) connection of the inverted residual block, ``out = x + F(x)``.

Paper Section 3.3: the shortcut joins the narrow bottleneck ends of a block, not the wide expanded middle.
"""
from __future__ import annotations

import numpy as np


def residual_add_forward(x: np.ndarray, fx: np.ndarray):
    """``out = x + fx``.

    Parameters
    ----------
    x, fx : ndarray, shape (N, H, W, C)
        The block's input (the shortcut) and the output of its residual branch.

    Returns
    -------
    out : ndarray, shape (N, H, W, C)
    cache : None
        An addition needs nothing from the forward pass.

    Notes
    -----
    ``dL/dx = dL/dfx = dL/dout``: the gradient reaches the block's input twice, once straight through the
    shortcut and once through the branch, and the two contributions add.
    """
    if x.shape != fx.shape:
        raise ValueError(f"residual_add: the shortcut has shape {x.shape} but the branch gives {fx.shape}")
    return x + fx, None


def residual_add_backward(dout: np.ndarray, cache=None):
    """Return ``(dL/dx, dL/dfx)``, both equal to ``dout``.

    Both are ``dout`` itself, not copies (an addition has nothing to compute); copy before modifying either in
    place.
    """
    # forward was: out = x + fx
    return dout, dout
