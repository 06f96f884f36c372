"""BatchNorm, then an optional activation, then an optional residual add: ``out = act(BN(x)) + residual``.

In MobileNetV2 every convolution is followed by BatchNorm, and then by ReLU6 (expansion and depthwise layers),
by nothing (the linear projection), or by nothing and the shortcut add (the projection of a residual block).
Here those steps are composed from the separate reference operations so a reader sees each one; the fast
backend implements the same contract in one Numba pass that reads and writes each tensor once.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from numpymnv2._checks import check_activation
from numpymnv2.functional.activation import ACTIVATIONS, ActivationCache
from numpymnv2.functional.batchnorm import BatchNormCache, batchnorm_backward, batchnorm_forward


class BNActCache(NamedTuple):
    bn: BatchNormCache        # x_hat, inv_std, gamma, training
    beta: np.ndarray          # (C,), to rebuild the pre-activation gamma x_hat + beta in backward
    activation: str | None    # "relu6", "relu" or None (linear)
    has_residual: bool


def batchnorm_act_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                          running_var: np.ndarray, training: bool, momentum: float = 0.1, eps: float = 1e-5,
                          activation: str | None = None, residual: np.ndarray | None = None,
                          allreduce: Callable[[np.ndarray], np.ndarray] | None = None):
    """``out = act(gamma x_hat + beta) + residual``, with ``x_hat`` as in :func:`batchnorm_forward`.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
    gamma, beta, running_mean, running_var : ndarray, shape (C,)
        As :func:`numpymnv2.functional.batchnorm.batchnorm_forward` (running statistics updated in place).
    training : bool
    momentum, eps : float
    activation : {"relu6", "relu", None}
    residual : ndarray, shape (N, H, W, C), optional
        Added after the activation (the shortcut of an inverted residual block).
    allreduce : callable, optional
        SyncBatchNorm: the statistics are those of every process's share of the batch (see
        :mod:`numpymnv2.functional.batchnorm`).

    Returns
    -------
    out : ndarray, shape (N, H, W, C)
    cache : BNActCache

    Notes
    -----
    Backward applies the chain rule in reverse order::

        dL/dresidual = dout                                 (the shortcut passes the gradient unchanged)
        dL/dy        = dout * act'(y),   y = gamma x_hat + beta
        dL/dx, dL/dgamma, dL/dbeta = batchnorm_backward(dL/dy)
    """
    check_activation(activation, "batchnorm_act")
    y, bn_cache = batchnorm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, allreduce)
    if activation is not None:
        y, _ = ACTIVATIONS[activation][0](y)
    if residual is not None:
        if residual.shape != y.shape:
            raise ValueError(f"batchnorm_act: residual has shape {residual.shape}, expected {y.shape}")
        y = y + residual
    return y, BNActCache(bn_cache, beta, activation, residual is not None)


def batchnorm_act_backward(dout: np.ndarray, cache: BNActCache,
                           allreduce: Callable[[np.ndarray], np.ndarray] | None = None):
    """Gradients of :func:`batchnorm_act_forward`.

    Parameters
    ----------
    dout : ndarray, shape (N, H, W, C)
    cache : BNActCache
    allreduce : callable, optional
        The forward's ``allreduce`` (SyncBatchNorm); None when the forward had none.

    Returns
    -------
    dx : ndarray, shape (N, H, W, C)
    dgamma, dbeta : ndarray, shape (C,)
    dresidual : ndarray, shape (N, H, W, C), or None when there was no residual
        ``dout`` itself, not a copy.
    """
    bn, beta, activation, has_residual = cache
    # forward was: out = y + residual
    dresidual = dout if has_residual else None
    dy = dout
    if activation is not None:
        # forward was: y = act(gamma * x_hat + beta); the pre-activation is rebuilt rather than stored
        pre = bn.gamma * bn.x_hat + beta
        dy = ACTIVATIONS[activation][1](dout, ActivationCache(pre))
    dx, dgamma, dbeta = batchnorm_backward(dy, bn, allreduce)
    return dx, dgamma, dbeta, dresidual
