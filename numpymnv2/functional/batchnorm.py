"""Batch normalisation over ``(N, H, W)`` for each channel, with PyTorch's numerics.

Training mode normalises with the batch mean and the biased batch variance and updates the running statistics
in place, ``running_var`` with the *unbiased* variance; evaluation mode normalises with the running statistics.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from numpymnv2._checks import check_batch_statistics


class BatchNormCache(NamedTuple):
    x_hat: np.ndarray         # (N, H, W, C) the normalised input
    inv_std: np.ndarray       # (C,) 1 / sqrt(var + eps), batch or running variance
    gamma: np.ndarray         # (C,)
    training: bool            # batch statistics (True) or running statistics (False) were used


def batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                      running_var: np.ndarray, training: bool, momentum: float = 0.1, eps: float = 1e-5):
    """Normalise each channel, then scale by ``gamma`` and shift by ``beta``.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
    gamma, beta : ndarray, shape (C,)
    running_mean, running_var : ndarray, shape (C,)
        Updated **in place** when ``training`` (as ``torch.nn.functional.batch_norm``).
    training : bool
    momentum, eps : float
        PyTorch's defaults, 0.1 and 1e-5.

    Returns
    -------
    y : ndarray, shape (N, H, W, C)
    cache : BatchNormCache

    Notes
    -----
    With ``M = N H W`` values per channel, in training mode::

        mu      = (1/M) sum x                         (per channel)
        var     = (1/M) sum (x - mu)^2                (biased)
        x_hat   = (x - mu) / sqrt(var + eps)
        y       = gamma x_hat + beta
        running_mean <- (1 - momentum) running_mean + momentum mu
        running_var  <- (1 - momentum) running_var  + momentum var M / (M - 1)

    In evaluation mode ``mu`` and ``var`` are the running statistics, which are left unchanged.

    ``momentum`` and ``eps`` are converted to Python floats: under NumPy 2's promotion rules (NEP 50) a NumPy
    float64 scalar such as ``np.float64(1e-5)`` would otherwise promote a float32 ``var + eps``, and with it the
    whole output, to float64.
    """
    momentum, eps = float(momentum), float(eps)
    axes = (0, 1, 2)
    if training:
        check_batch_statistics(x.shape, "batchnorm")
        M = x.shape[0] * x.shape[1] * x.shape[2]
        # sums of M float32 values lose digits; accumulate the statistics in float64, keep them in x's dtype
        mu = x.mean(axis=axes, dtype=np.float64).astype(x.dtype)
        xc = x - mu
        var = np.mean(xc * xc, axis=axes, dtype=np.float64).astype(x.dtype)
        running_mean *= 1 - momentum
        running_mean += momentum * mu
        running_var *= 1 - momentum
        running_var += (momentum * M / (M - 1)) * var
    else:
        xc = x - running_mean
        var = running_var
    inv_std = 1 / np.sqrt(var + eps)
    x_hat = xc * inv_std
    y = gamma * x_hat + beta
    return y, BatchNormCache(x_hat, inv_std, gamma, bool(training))


def batchnorm_backward(dy: np.ndarray, cache: BatchNormCache):
    """Gradients of :func:`batchnorm_forward`.

    Parameters
    ----------
    dy : ndarray, shape (N, H, W, C)
    cache : BatchNormCache

    Returns
    -------
    dx : ndarray, shape (N, H, W, C)
    dgamma, dbeta : ndarray, shape (C,)

    Notes
    -----
    ``dL/dbeta = sum dy`` and ``dL/dgamma = sum dy x_hat`` (sums over N, H, W). In evaluation mode ``mu`` and
    ``var`` are constants, so ``dL/dx = gamma inv_std dy``. In training mode they depend on every ``x`` of the
    channel; differentiating ``x_hat = (x - mu) inv_std`` through ``mu`` and ``var`` and collecting terms gives::

        dL/dx = (gamma inv_std / M) (M dy - dL/dbeta - x_hat dL/dgamma)

    the batch-statistics terms remove from ``dy`` its mean and its component along ``x_hat``.
    """
    x_hat, inv_std, gamma, training = cache
    axes = (0, 1, 2)
    # forward was: y = gamma * x_hat + beta
    dbeta = dy.sum(axis=axes)
    dgamma = np.einsum("nhwc,nhwc->c", dy, x_hat)
    if not training:
        # forward was: x_hat = (x - running_mean) * inv_std, with constant statistics
        return dy * (gamma * inv_std), dgamma, dbeta
    M = dy.shape[0] * dy.shape[1] * dy.shape[2]
    # forward was: x_hat = (x - mu) * inv_std, with mu and var functions of x
    dx = (gamma * inv_std / M) * (M * dy - dbeta - x_hat * dgamma)
    return dx, dgamma, dbeta
