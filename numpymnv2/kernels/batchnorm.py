"""BatchNorm, Numba kernels with the contract of :mod:`numpymnv2.functional.batchnorm`.

The same kernels serve the fused BatchNorm + activation (+ residual) of :mod:`numpymnv2.kernels.fused`: an
activation code (:data:`~numpymnv2.kernels.activation.ACT_NONE`, ``ACT_RELU6``, ``ACT_RELU``) selects the
elementwise step inside the normalisation loop, so a tensor is read and written once per pass instead of once
per operation.

Each kernel is a row function (one ``(n, h)`` row of ``W x C`` values) run by a loop of
:mod:`numpymnv2.kernels._launch`. Training-mode forward is two passes over ``x``: the per-channel sums of
``d = x - shift`` and ``d^2`` (``shift`` one sample of the channel, which keeps ``E[d^2] - E[d]^2`` free of
cancellation; per-thread float64 partial sums), then the normalisation. Backward is two passes in training
mode (the sums ``dL/dbeta``, ``dL/dgamma``, then ``dL/dx``) and one in evaluation mode. The equations are those
of :func:`numpymnv2.functional.batchnorm.batchnorm_forward` and
:func:`~numpymnv2.functional.batchnorm.batchnorm_backward`, whose Notes derive the collapsed input gradient
used here.

Unlike the reference, the forward does not store ``x_hat``: the cache keeps the input ``x`` and the statistics
(:class:`BatchNormInputCache`), and the backward passes rebuild ``x_hat = (x - mean) inv_std`` as they read
``x``. The normalisation then writes one tensor instead of two, for the same memory (``x`` is kept alive in
place of ``x_hat``). Measured on the 2-core machine (one thread, CPU time, float32 BatchNorm + ReLU6
normalisation pass): 16x48x48x48 1.04 -> 0.40 ms, 32x16x16x96 0.23 -> 0.15 ms, 8x112x112x96 5.4 -> 2.7 ms.

SyncBatchNorm (``allreduce``, see :mod:`numpymnv2.functional.batchnorm`): the forward's float64 sums
``[sum d, sum d^2]`` and the count ``M`` are summed over the processes between the sums pass and the
normalisation, the backward's ``[sum dy, sum dy (x - mean)]`` and ``M`` between the sums pass and the ``dL/dx`` pass,
one call each. Sums of ``x - shift`` add up across processes only if every process takes the same ``shift``:
there it is the running mean, the same on every process (they all update it with the same statistics), an
estimate of the batch mean after the first steps (0 at the start, when the inputs of a freshly initialised
network are of order one anyway). One process keeps its own first sample, as without ``allreduce``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from numpymnv2.kernels._launch import num_chunks, parallel_rows, per_thread_sums
from numpymnv2.kernels.activation import ACT_NONE, activation, activation_grad


@njit(cache=True, inline="always")
def _shifted_sums_row(inputs, r, acc):
    """Row ``r = (n, h)``: ``acc[0, c] += sum_v d``, ``acc[1, c] += sum_v d^2`` with
    ``d = x[n, h, v, c] - shift[c]``."""
    x, shift = inputs
    N, H, W, C = x.shape
    n, h = r // H, r % H
    for v in range(W):
        for c in range(C):
            d = x[n, h, v, c] - shift[c]
            acc[0, c] += d
            acc[1, c] += d * d


class BatchNormInputCache(NamedTuple):
    """What the fast BatchNorm keeps for its backward: the input and its statistics, from which the backward
    rebuilds ``x_hat`` (the reference's :class:`~numpymnv2.functional.batchnorm.BatchNormCache` stores ``x_hat``
    itself; see the module docstring for why this one does not)."""
    x: np.ndarray             # (N, H, W, C) the input
    mean: np.ndarray          # (C,) the mean it was normalised with (batch or running)
    inv_std: np.ndarray       # (C,) 1 / sqrt(var + eps)
    gamma: np.ndarray         # (C,)
    training: bool

    @property
    def x_hat(self) -> np.ndarray:
        """``(x - mean) inv_std``, computed (as the kernels do) when asked for."""
        return (self.x - self.mean) * self.inv_std


@njit(cache=True, inline="always")
def _normalize_row(inputs, r):
    """Row ``r = (n, h)``: ``y = act(gamma x_hat + beta) (+ residual)`` with ``x_hat = (x - mean) inv_std``."""
    x, mean, inv_std, gamma, beta, act, residual, has_residual, y = inputs
    N, H, W, C = x.shape
    n, h = r // H, r % H
    for v in range(W):
        for c in range(C):
            xh = (x[n, h, v, c] - mean[c]) * inv_std[c]
            z = activation(gamma[c] * xh + beta[c], act)
            if has_residual:
                z += residual[n, h, v, c]
            y[n, h, v, c] = z


@njit(cache=True, inline="always")
def _grad_sums_row(inputs, r, acc):
    """Row ``r = (n, h)``: ``dy = dout act'(gamma x_hat + beta)``; ``acc[0, c] += sum_v dy`` (``dL/dbeta``) and
    ``acc[1, c] += sum_v dy (x - mean)`` (``dL/dgamma / inv_std``). The pre-activation is rebuilt as
    ``k_dy (x - mean) + beta`` with ``k_dy = gamma inv_std``: one subtraction and one product per value."""
    dout, x, mean, k_dy, beta, act = inputs
    N, H, W, C = dout.shape
    n, h = r // H, r % H
    for v in range(W):
        for c in range(C):
            xc = x[n, h, v, c] - mean[c]
            dy = activation_grad(dout[n, h, v, c], k_dy[c] * xc + beta[c], act)
            acc[0, c] += dy
            acc[1, c] += dy * xc


@njit(cache=True, inline="always")
def _eval_grad_row(inputs, r, acc):
    """Row ``r = (n, h)`` with constant statistics: the sums of :func:`_grad_sums_row` and, in the same pass,
    ``dx = k_dy dy`` (``k_dy = gamma inv_std``)."""
    dout, x, mean, k_dy, beta, act, dx = inputs
    N, H, W, C = dout.shape
    n, h = r // H, r % H
    for v in range(W):
        for c in range(C):
            xc = x[n, h, v, c] - mean[c]
            dy = activation_grad(dout[n, h, v, c], k_dy[c] * xc + beta[c], act)
            acc[0, c] += dy
            acc[1, c] += dy * xc
            dx[n, h, v, c] = k_dy[c] * dy


@njit(cache=True, inline="always")
def _input_grad_row(inputs, r):
    """Row ``r = (n, h)`` in training mode: ``dx = (gamma inv_std / M) (M dy - dL/dbeta - x_hat dL/dgamma)``,
    written ``dx = k_dy dy - k_0 - k_xc (x - mean)`` with the per-channel factors of
    :func:`_parameter_gradients`."""
    dout, x, mean, k_dy, beta, act, k_0, k_xc, dx = inputs
    N, H, W, C = dout.shape
    n, h = r // H, r % H
    for v in range(W):
        for c in range(C):
            xc = x[n, h, v, c] - mean[c]
            dy = activation_grad(dout[n, h, v, c], k_dy[c] * xc + beta[c], act)
            dx[n, h, v, c] = k_dy[c] * dy - k_0[c] - k_xc[c] * xc


_shifted_sums = per_thread_sums(_shifted_sums_row)
_normalize = parallel_rows(_normalize_row)
_grad_sums = per_thread_sums(_grad_sums_row)
_eval_grad = per_thread_sums(_eval_grad_row)
_input_grad = parallel_rows(_input_grad_row)


@njit(cache=True)
def _batch_statistics(sums, shift, M, momentum, eps, running_mean, running_var, mean, inv_std):
    """From ``sums[0] = sum d``, ``sums[1] = sum d^2`` (``d = x - shift``, float64): ``mu = shift + E[d]`` and
    the biased ``var = E[d^2] - E[d]^2`` into ``mean`` and ``inv_std = 1 / sqrt(var + eps)`` (the input's
    dtype); the running statistics updated in place with the unbiased variance ``var M / (M - 1)``."""
    for c in range(shift.shape[0]):
        d_mean = sums[0, c] / M
        mu = shift[c] + d_mean
        var = max(sums[1, c] / M - d_mean * d_mean, 0.0)
        running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mu
        running_var[c] = (1 - momentum) * running_var[c] + (momentum * M / (M - 1)) * var
        mean[c] = mu
        var_t = mean.dtype.type(var)  # as the reference: var in the input's dtype, then 1 / sqrt(var + eps)
        inv_std[c] = 1 / np.sqrt(var_t + mean.dtype.type(eps))


@njit(cache=True)
def _parameter_gradients(sums, inv_std, k_dy, M, training, dgamma, dbeta, k_0, k_xc):
    """From ``sums[0] = sum dy``, ``sums[1] = sum dy (x - mean)`` (float64): ``dL/dbeta = sums[0]``,
    ``dL/dgamma = sum dy x_hat = inv_std sums[1]`` and, in training mode, the factors of
    ``dx = k_dy dy - k_0 - k_xc (x - mean)``: ``k_0 = k_dy dL/dbeta / M`` and
    ``k_xc = k_dy inv_std dL/dgamma / M`` (the ``x_hat`` term with ``x_hat = (x - mean) inv_std``)."""
    for c in range(inv_std.shape[0]):
        dgamma_c = np.float64(inv_std[c]) * sums[1, c]
        dbeta[c] = sums[0, c]
        dgamma[c] = dgamma_c
        if training:
            k_0[c] = k_dy[c] * sums[0, c] / M
            k_xc[c] = k_dy[c] * np.float64(inv_std[c]) * dgamma_c / M


def bn_act_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, act, residual,
                   allreduce=None):
    """``(y, cache)`` of ``y = act(gamma x_hat + beta) (+ residual)``, running statistics updated in place in
    training mode; the body of :func:`batchnorm_forward` and of the fused forward. ``cache`` is a
    :class:`BatchNormInputCache`. ``allreduce``: SyncBatchNorm (module docstring)."""
    dt = x.dtype
    N, H, W, C = x.shape
    x = np.ascontiguousarray(x)
    rows, work = N * H, x.size
    mean = np.empty(C, dtype=dt)
    inv_std = np.empty(C, dtype=dt)
    if training:
        M = N * H * W
        if M < 2 and allreduce is None:
            raise ValueError(f"batchnorm: training mode needs more than one value per channel, got input shape "
                             f"{x.shape}")
        shift = (x[0, 0, 0] if allreduce is None else running_mean).astype(dt)      # a copy: see above
        partial = np.zeros((num_chunks(rows, work), 2, C))
        _shifted_sums(work, rows, (x, shift), partial)
        sums = partial.sum(axis=0)
        if allreduce is not None:       # the whole batch's sums and count, every process's values
            total = allreduce(np.append(sums.ravel(), M))
            sums, M = total[:-1].reshape(2, C), int(total[-1])
            if M < 2:
                raise ValueError(f"batchnorm: training mode needs more than one value per channel over all "
                                 f"processes, got {M} (input shape {x.shape} here)")
        _batch_statistics(sums, shift, M, float(momentum), float(eps), running_mean, running_var, mean, inv_std)
    else:
        mean[:] = running_mean
        inv_std[:] = 1 / np.sqrt(running_var + dt.type(eps))
    y = np.empty_like(x)
    has_residual = residual is not None
    res = np.ascontiguousarray(residual, dtype=dt) if has_residual else x
    _normalize(work, rows, (x, mean, inv_std, np.ascontiguousarray(gamma, dtype=dt),
                            np.ascontiguousarray(beta, dtype=dt), act, res, has_residual, y))
    return y, BatchNormInputCache(x, mean, inv_std, gamma, bool(training))


def bn_act_backward(dout, cache: BatchNormInputCache, beta, act, allreduce=None):
    """``(dx, dgamma, dbeta)`` for :func:`bn_act_forward`'s ``y``; the body of :func:`batchnorm_backward` and of
    the fused backward (which adds the residual's gradient). With ``allreduce`` (SyncBatchNorm) ``dx`` uses the
    whole batch's sums and ``dgamma``, ``dbeta`` are this process's."""
    x, mean, inv_std, gamma, training = cache
    dt = x.dtype
    N, H, W, C = x.shape
    rows, work = N * H, x.size
    dout = np.ascontiguousarray(dout, dtype=dt)
    gamma = np.ascontiguousarray(gamma, dtype=dt)
    beta = np.ascontiguousarray(beta, dtype=dt)
    partial = np.zeros((num_chunks(rows, work), 2, C))
    dx = np.empty_like(x)
    dgamma, dbeta = np.empty(C, dtype=dt), np.empty(C, dtype=dt)
    k_0, k_xc = np.empty(C, dtype=dt), np.empty(C, dtype=dt)
    k_dy = gamma * inv_std                  # gamma / sqrt(var + eps), the factor of dy in dL/dx
    if not training:
        # constant statistics: dx = gamma inv_std dy, computed in the same pass as the sums
        _eval_grad(work, rows, (dout, x, mean, k_dy, beta, act, dx), partial)
        _parameter_gradients(partial.sum(axis=0), inv_std, k_dy, N * H * W, False, dgamma, dbeta, k_0, k_xc)
        return dx, dgamma, dbeta
    _grad_sums(work, rows, (dout, x, mean, k_dy, beta, act), partial)
    sums, M = partial.sum(axis=0), N * H * W
    if allreduce is None:
        _parameter_gradients(sums, inv_std, k_dy, M, True, dgamma, dbeta, k_0, k_xc)
    else:
        # dx needs the whole batch's sums (mu and var were the whole batch's); the parameters get this shard's
        total = allreduce(np.append(sums.ravel(), M))
        _parameter_gradients(total[:-1].reshape(2, C), inv_std, k_dy, int(total[-1]), True, dgamma, dbeta, k_0,
                             k_xc)
        dbeta[:], dgamma[:] = sums[0], inv_std * sums[1]
    _input_grad(work, rows, (dout, x, mean, k_dy, beta, act, k_0, k_xc, dx))
    return dx, dgamma, dbeta


def batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                      running_var: np.ndarray, training: bool, momentum: float = 0.1, eps: float = 1e-5,
                      allreduce=None):
    """BatchNorm over ``(N, H, W)`` per channel; the fast path of
    :func:`numpymnv2.functional.batchnorm.batchnorm_forward` (same arguments, results and in-place update of the
    running statistics; the cache keeps ``x`` instead of ``x_hat``, see :class:`BatchNormInputCache`).

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
    gamma, beta, running_mean, running_var : ndarray, shape (C,)
    training : bool
    momentum, eps : float
    allreduce : callable, optional
        SyncBatchNorm (see the module docstring).

    Returns
    -------
    y : ndarray, shape (N, H, W, C)
    cache : BatchNormInputCache
    """
    return bn_act_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, ACT_NONE, None,
                          allreduce)


def batchnorm_backward(dy: np.ndarray, cache: BatchNormInputCache, allreduce=None):
    """Gradients of :func:`batchnorm_forward`; equations in
    :func:`numpymnv2.functional.batchnorm.batchnorm_backward`.

    Parameters
    ----------
    dy : ndarray, shape (N, H, W, C)
    cache : BatchNormInputCache
    allreduce : callable, optional
        The forward's (SyncBatchNorm).

    Returns
    -------
    dx : ndarray, shape (N, H, W, C)
    dgamma, dbeta : ndarray, shape (C,)
    """
    return bn_act_backward(dy, cache, np.zeros_like(cache.gamma), ACT_NONE, allreduce)


__all__ = ["BatchNormInputCache", "batchnorm_backward", "batchnorm_forward"]
