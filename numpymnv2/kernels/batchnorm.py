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
"""
from __future__ import annotations

import numpy as np
from numba import njit

from numpymnv2.functional.batchnorm import BatchNormCache
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


@njit(cache=True, inline="always")
def _normalize_row(inputs, r):
    """Row ``r = (n, h)``: ``x_hat = (x - mean) inv_std`` and ``y = act(gamma x_hat + beta) (+ residual)``."""
    x, mean, inv_std, gamma, beta, act, residual, has_residual, y, x_hat = inputs
    N, H, W, C = x.shape
    n, h = r // H, r % H
    for v in range(W):
        for c in range(C):
            xh = (x[n, h, v, c] - mean[c]) * inv_std[c]
            x_hat[n, h, v, c] = xh
            z = activation(gamma[c] * xh + beta[c], act)
            if has_residual:
                z += residual[n, h, v, c]
            y[n, h, v, c] = z


@njit(cache=True, inline="always")
def _grad_sums_row(inputs, r, acc):
    """Row ``r = (n, h)``: ``dy = dout act'(gamma x_hat + beta)``; ``acc[0, c] += sum_v dy`` (``dL/dbeta``),
    ``acc[1, c] += sum_v dy x_hat`` (``dL/dgamma``)."""
    dout, x_hat, gamma, beta, act = inputs
    N, H, W, C = dout.shape
    n, h = r // H, r % H
    for v in range(W):
        for c in range(C):
            xh = x_hat[n, h, v, c]
            dy = activation_grad(dout[n, h, v, c], gamma[c] * xh + beta[c], act)
            acc[0, c] += dy
            acc[1, c] += dy * xh


@njit(cache=True, inline="always")
def _eval_grad_row(inputs, r, acc):
    """Row ``r = (n, h)`` with constant statistics: the sums of :func:`_grad_sums_row` and, in the same pass,
    ``dx = k_dy dy`` (``k_dy = gamma inv_std``)."""
    dout, x_hat, gamma, beta, act, k_dy, dx = inputs
    N, H, W, C = dout.shape
    n, h = r // H, r % H
    for v in range(W):
        for c in range(C):
            xh = x_hat[n, h, v, c]
            dy = activation_grad(dout[n, h, v, c], gamma[c] * xh + beta[c], act)
            acc[0, c] += dy
            acc[1, c] += dy * xh
            dx[n, h, v, c] = k_dy[c] * dy


@njit(cache=True, inline="always")
def _input_grad_row(inputs, r):
    """Row ``r = (n, h)`` in training mode: ``dx = (gamma inv_std / M) (M dy - dL/dbeta - x_hat dL/dgamma)``,
    written ``dx = k_dy dy - k_0 - k_xhat x_hat`` with the per-channel factors of :func:`_parameter_gradients`."""
    dout, x_hat, gamma, beta, act, k_dy, k_0, k_xhat, dx = inputs
    N, H, W, C = dout.shape
    n, h = r // H, r % H
    for v in range(W):
        for c in range(C):
            xh = x_hat[n, h, v, c]
            dy = activation_grad(dout[n, h, v, c], gamma[c] * xh + beta[c], act)
            dx[n, h, v, c] = k_dy[c] * dy - k_0[c] - k_xhat[c] * xh


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
def _parameter_gradients(sums, gamma, inv_std, M, training, dgamma, dbeta, k_dy, k_0, k_xhat):
    """From ``sums[0] = sum dy``, ``sums[1] = sum dy x_hat`` (float64): ``dL/dbeta``, ``dL/dgamma`` and the
    factors of ``dx = k_dy dy - k_0 - k_xhat x_hat``: ``k_dy = gamma inv_std`` and, in training mode only,
    ``k_0 = k_dy dL/dbeta / M``, ``k_xhat = k_dy dL/dgamma / M``."""
    for c in range(gamma.shape[0]):
        dbeta[c] = sums[0, c]
        dgamma[c] = sums[1, c]
        g = np.float64(gamma[c]) * inv_std[c]
        k_dy[c] = g
        k_0[c] = g * sums[0, c] / M if training else 0.0
        k_xhat[c] = g * sums[1, c] / M if training else 0.0


def bn_act_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, act, residual):
    """``(y, x_hat, inv_std)`` of ``y = act(gamma x_hat + beta) (+ residual)``, running statistics updated in
    place in training mode; the body of :func:`batchnorm_forward` and of the fused forward."""
    dt = x.dtype
    N, H, W, C = x.shape
    x = np.ascontiguousarray(x)
    rows, work = N * H, x.size
    mean = np.empty(C, dtype=dt)
    inv_std = np.empty(C, dtype=dt)
    if training:
        M = N * H * W
        if M < 2:
            raise ValueError(f"batchnorm: training mode needs more than one value per channel, got input shape "
                             f"{x.shape}")
        shift = x[0, 0, 0].copy()
        partial = np.zeros((num_chunks(rows, work), 2, C))
        _shifted_sums(work, rows, (x, shift), partial)
        _batch_statistics(partial.sum(axis=0), shift, M, float(momentum), float(eps), running_mean, running_var,
                          mean, inv_std)
    else:
        mean[:] = running_mean
        inv_std[:] = 1 / np.sqrt(running_var + dt.type(eps))
    y = np.empty_like(x)
    x_hat = np.empty_like(x)
    has_residual = residual is not None
    res = np.ascontiguousarray(residual, dtype=dt) if has_residual else x
    _normalize(work, rows, (x, mean, inv_std, np.ascontiguousarray(gamma, dtype=dt),
                            np.ascontiguousarray(beta, dtype=dt), act, res, has_residual, y, x_hat))
    return y, x_hat, inv_std


def bn_act_backward(dout, x_hat, inv_std, gamma, beta, training, act):
    """``(dx, dgamma, dbeta)`` for :func:`bn_act_forward`'s ``y``; the body of :func:`batchnorm_backward` and of
    the fused backward (which adds the residual's gradient)."""
    dt = x_hat.dtype
    N, H, W, C = x_hat.shape
    rows, work = N * H, x_hat.size
    dout = np.ascontiguousarray(dout, dtype=dt)
    gamma = np.ascontiguousarray(gamma, dtype=dt)
    beta = np.ascontiguousarray(beta, dtype=dt)
    partial = np.zeros((num_chunks(rows, work), 2, C))
    dx = np.empty_like(x_hat)
    dgamma, dbeta = np.empty(C, dtype=dt), np.empty(C, dtype=dt)
    k_dy, k_0, k_xhat = np.empty(C, dtype=dt), np.empty(C, dtype=dt), np.empty(C, dtype=dt)
    if not training:
        # constant statistics: dx = gamma inv_std dy, computed in the same pass as the sums
        np.multiply(gamma, inv_std, out=k_dy)
        _eval_grad(work, rows, (dout, x_hat, gamma, beta, act, k_dy, dx), partial)
        _parameter_gradients(partial.sum(axis=0), gamma, inv_std, N * H * W, False, dgamma, dbeta, k_dy, k_0,
                             k_xhat)
        return dx, dgamma, dbeta
    _grad_sums(work, rows, (dout, x_hat, gamma, beta, act), partial)
    _parameter_gradients(partial.sum(axis=0), gamma, inv_std, N * H * W, True, dgamma, dbeta, k_dy, k_0, k_xhat)
    _input_grad(work, rows, (dout, x_hat, gamma, beta, act, k_dy, k_0, k_xhat, dx))
    return dx, dgamma, dbeta


def batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                      running_var: np.ndarray, training: bool, momentum: float = 0.1, eps: float = 1e-5):
    """BatchNorm over ``(N, H, W)`` per channel; the fast path of
    :func:`numpymnv2.functional.batchnorm.batchnorm_forward` (same arguments, results, cache and in-place update
    of the running statistics).

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
    gamma, beta, running_mean, running_var : ndarray, shape (C,)
    training : bool
    momentum, eps : float

    Returns
    -------
    y : ndarray, shape (N, H, W, C)
    cache : BatchNormCache
    """
    y, x_hat, inv_std = bn_act_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                                       ACT_NONE, None)
    return y, BatchNormCache(x_hat, inv_std, gamma, bool(training))


def batchnorm_backward(dy: np.ndarray, cache: BatchNormCache):
    """Gradients of :func:`batchnorm_forward`; equations in
    :func:`numpymnv2.functional.batchnorm.batchnorm_backward`.

    Parameters
    ----------
    dy : ndarray, shape (N, H, W, C)
    cache : BatchNormCache

    Returns
    -------
    dx : ndarray, shape (N, H, W, C)
    dgamma, dbeta : ndarray, shape (C,)
    """
    x_hat, inv_std, gamma, training = cache
    return bn_act_backward(dy, x_hat, inv_std, gamma, np.zeros_like(gamma), training, ACT_NONE)


__all__ = ["batchnorm_backward", "batchnorm_forward"]
