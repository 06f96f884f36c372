"""Batch normalisation over ``(N, H, W)`` for each channel, with PyTorch's numerics.

Training mode normalises with the batch mean and the biased batch variance and updates the running statistics
in place, ``running_var`` with the *unbiased* variance; evaluation mode normalises with the running statistics.

Synchronised BatchNorm (data-parallel training)
-----------------------------------------------
When a batch is split among processes, each holding ``M_p`` of the ``M = sum_p M_p`` values of a channel,
``allreduce`` (a function returning the elementwise sum of an array over all processes, see
:mod:`numpymnv2.distributed`) makes the statistics those of the whole batch. Every per-channel sum the
single-process equations take is replaced by its sum over the processes::

    forward:   sum_all x = allreduce(sum x),   M = allreduce(M_p)        ->  mu
               sum_all (x - mu)^2 = allreduce(sum (x - mu)^2)             ->  var
    backward:  dL/dbeta_all  = allreduce(sum dy)
               dL/dgamma_all = allreduce(sum dy x_hat)                     ->  dL/dx of this process's values

and each process returns its own shard's ``sum dy`` and ``sum dy x_hat`` as the parameter gradients (the
trainer sums parameter gradients over processes afterwards, as for every other parameter). With
``allreduce=None`` the sums are this process's alone: plain BatchNorm.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from numpymnv2._checks import check_batch_statistics


class BatchNormCache(NamedTuple):
    x_hat: np.ndarray         # (N, H, W, C) the normalised input
    inv_std: np.ndarray       # (C,) 1 / sqrt(var + eps), batch or running variance
    gamma: np.ndarray         # (C,)
    training: bool            # batch statistics (True) or running statistics (False) were used


def batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                      running_var: np.ndarray, training: bool, momentum: float = 0.1, eps: float = 1e-5,
                      allreduce: Callable[[np.ndarray], np.ndarray] | None = None):
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
    allreduce : callable, optional
        ``allreduce(a)``: the sum of the float64 array ``a`` over all processes that share the batch
        (SyncBatchNorm, see the module docstring); used in training mode only. None: this process's batch.

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

    In evaluation mode ``mu`` and ``var`` are the running statistics, which are left unchanged. With
    ``allreduce`` the sums and ``M`` run over every process's values (the module docstring).

    ``momentum`` and ``eps`` are converted to Python floats: under NumPy 2's promotion rules (NEP 50) a NumPy
    float64 scalar such as ``np.float64(1e-5)`` would otherwise promote a float32 ``var + eps``, and with it the
    whole output, to float64.
    """
    momentum, eps = float(momentum), float(eps)
    axes = (0, 1, 2)
    if training:
        M = x.shape[0] * x.shape[1] * x.shape[2]
        # sums of M float32 values lose digits; accumulate the statistics in float64, keep them in x's dtype
        # (x.sum(dtype=float64) / M is what x.mean(dtype=float64) computes, bit for bit)
        sum_x = x.sum(axis=axes, dtype=np.float64)
        if allreduce is None:
            check_batch_statistics(x.shape, "batchnorm")
        else:
            sums = allreduce(np.append(sum_x, M))           # the whole batch's sum_all x and M
            sum_x, M = sums[:-1], int(sums[-1])
            check_batch_statistics((M, 1, 1), "batchnorm (all processes)")
        mu = (sum_x / M).astype(x.dtype)
        xc = x - mu
        sum_xc2 = (xc * xc).sum(axis=axes, dtype=np.float64)
        if allreduce is not None:
            sum_xc2 = allreduce(sum_xc2)
        var = (sum_xc2 / M).astype(x.dtype)
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


def batchnorm_backward(dy: np.ndarray, cache: BatchNormCache,
                       allreduce: Callable[[np.ndarray], np.ndarray] | None = None):
    """Gradients of :func:`batchnorm_forward`.

    Parameters
    ----------
    dy : ndarray, shape (N, H, W, C)
    cache : BatchNormCache
    allreduce : callable, optional
        The forward's ``allreduce`` (SyncBatchNorm); None when the forward had none.

    Returns
    -------
    dx : ndarray, shape (N, H, W, C)
    dgamma, dbeta : ndarray, shape (C,)
        This process's sums (with ``allreduce``, its shard's share of the whole batch's gradient).

    Notes
    -----
    ``dL/dbeta = sum dy`` and ``dL/dgamma = sum dy x_hat`` (sums over N, H, W). In evaluation mode ``mu`` and
    ``var`` are constants, so ``dL/dx = gamma inv_std dy``. In training mode they depend on every ``x`` of the
    channel; differentiating ``x_hat = (x - mu) inv_std`` through ``mu`` and ``var`` and collecting terms gives::

        dL/dx = (gamma inv_std / M) (M dy - dL/dbeta - x_hat dL/dgamma)

    the batch-statistics terms remove from ``dy`` its mean and its component along ``x_hat``. With
    ``allreduce``, ``M``, ``dL/dbeta`` and ``dL/dgamma`` in this formula are the whole batch's (summed over the
    processes), since ``mu`` and ``var`` are functions of every process's ``x``.
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
    dbeta_all, dgamma_all = dbeta, dgamma
    if allreduce is not None:
        # forward was: mu, var = statistics of every process's x (the whole batch)
        C = dbeta.shape[0]
        sums = allreduce(np.concatenate([dbeta, dgamma, [M]]).astype(np.float64))
        dbeta_all, dgamma_all, M = sums[:C].astype(dy.dtype), sums[C:2 * C].astype(dy.dtype), int(sums[-1])
    # forward was: x_hat = (x - mu) * inv_std, with mu and var functions of x
    dx = (gamma * inv_std / M) * (M * dy - dbeta_all - x_hat * dgamma_all)
    return dx, dgamma, dbeta
