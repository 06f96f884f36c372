"""BatchNorm + activation (+ residual) in one pass: the fast path of :mod:`numpymnv2.functional.fused`.

Forward reads ``x`` twice (the per-channel sums, then the normalisation) and writes ``y`` once; the activation
and the residual add happen in the normalisation loop. Backward rebuilds ``x_hat`` from ``x`` and the
pre-activation ``gamma x_hat + beta`` on the fly to mask ``dout``, so neither is ever stored (the cache's ``bn``
is a :class:`~numpymnv2.kernels.batchnorm.BatchNormInputCache`).
"""
from __future__ import annotations

import numpy as np

from numpymnv2.functional.fused import BNActCache
from numpymnv2.kernels.activation import ACTIVATION_CODES
from numpymnv2.kernels.batchnorm import bn_act_backward, bn_act_forward


def batchnorm_act_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                          running_var: np.ndarray, training: bool, momentum: float = 0.1, eps: float = 1e-5,
                          activation: str | None = None, residual: np.ndarray | None = None, allreduce=None):
    """``out = act(gamma x_hat + beta) + residual`` in one fused pass; same contract as
    :func:`numpymnv2.functional.fused.batchnorm_act_forward`, whose docstring has the equations.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
    gamma, beta, running_mean, running_var : ndarray, shape (C,)
        Running statistics updated in place in training mode.
    training : bool
    momentum, eps : float
    activation : {"relu6", "relu", None}
    residual : ndarray, shape (N, H, W, C), optional
    allreduce : callable, optional
        SyncBatchNorm (see :mod:`numpymnv2.kernels.batchnorm`).

    Returns
    -------
    out : ndarray, shape (N, H, W, C)
    cache : BNActCache
    """
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"batchnorm_act: activation must be one of ['relu', 'relu6'] or None, got {activation!r}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"batchnorm_act: residual has shape {residual.shape}, expected {x.shape}")
    y, bn_cache = bn_act_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                                 ACTIVATION_CODES[activation], residual, allreduce)
    return y, BNActCache(bn_cache, beta, activation, residual is not None)


def batchnorm_act_backward(dout: np.ndarray, cache: BNActCache, allreduce=None):
    """Gradients of :func:`batchnorm_act_forward`; see
    :func:`numpymnv2.functional.fused.batchnorm_act_backward`.

    Parameters
    ----------
    dout : ndarray, shape (N, H, W, C)
    cache : BNActCache
    allreduce : callable, optional
        The forward's (SyncBatchNorm).

    Returns
    -------
    dx : ndarray, shape (N, H, W, C)
    dgamma, dbeta : ndarray, shape (C,)
    dresidual : ndarray, shape (N, H, W, C), or None when there was no residual
    """
    bn, beta, activation, has_residual = cache
    dx, dgamma, dbeta = bn_act_backward(dout, bn, beta, ACTIVATION_CODES[activation], allreduce)
    # forward was: out = y + residual
    return dx, dgamma, dbeta, (dout if has_residual else None)


__all__ = ["batchnorm_act_backward", "batchnorm_act_forward"]
