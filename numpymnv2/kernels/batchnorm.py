"""BatchNorm, Numba kernels with the contract of :mod:`numpymnv2.functional.batchnorm`.

The kernels here also serve the fused BatchNorm + activation (+ residual) of :mod:`numpymnv2.kernels.fused`:
an activation code ``act`` (0 none, 1 ReLU6, 2 ReLU) selects the elementwise step inside the same loop, so a
tensor is read and written once per pass instead of once per operation.

Training-mode forward is two passes over ``x``: per-channel sums (each thread its own partial, in float64, of
``x - shift`` with ``shift`` one sample of the channel, which keeps ``E[d^2] - E[d]^2`` free of cancellation),
then the normalisation. Backward is two passes in training mode (the sums ``dL/dbeta``, ``dL/dgamma``, then
``dL/dx``) and one in evaluation mode. The equations are those of
:func:`numpymnv2.functional.batchnorm.batchnorm_forward` and :func:`~numpymnv2.functional.batchnorm.batchnorm_backward`.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from numpymnv2.functional.batchnorm import BatchNormCache
from numpymnv2.kernels._threads import kernel, num_chunks, serialized

ACT_CODES = {None: 0, "relu6": 1, "relu": 2}


@kernel
def _channel_sums(x, shift, partial):
    # partial[t, 0, c] = sum (x - shift[c]),  partial[t, 1, c] = sum (x - shift[c])^2  over thread t's rows
    N, H, W, C = x.shape
    n_chunks = partial.shape[0]
    rows = N * H
    for t in prange(n_chunks):
        s1 = np.empty(C, dtype=x.dtype)
        s2 = np.empty(C, dtype=x.dtype)
        for r in range(t * rows // n_chunks, (t + 1) * rows // n_chunks):
            n = r // H
            h = r - n * H
            for c in range(C):
                s1[c] = 0
                s2[c] = 0
            for v in range(W):
                for c in range(C):
                    d = x[n, h, v, c] - shift[c]
                    s1[c] += d
                    s2[c] += d * d
            for c in range(C):
                partial[t, 0, c] += s1[c]
                partial[t, 1, c] += s2[c]


@kernel
def _normalize_act(x, mean, inv_std, gamma, beta, act, residual, has_residual, y, x_hat):
    # x_hat = (x - mean) inv_std;  y = act(gamma x_hat + beta) (+ residual)
    N, H, W, C = x.shape
    for r in prange(N * H):
        n = r // H
        h = r - n * H
        for v in range(W):
            for c in range(C):
                xh = (x[n, h, v, c] - mean[c]) * inv_std[c]
                x_hat[n, h, v, c] = xh
                z = gamma[c] * xh + beta[c]
                if act == 1:
                    z = min(max(z, 0), 6)
                elif act == 2:
                    z = max(z, 0)
                if has_residual:
                    z += residual[n, h, v, c]
                y[n, h, v, c] = z


@njit(cache=True)
def _act_grad(g, z, act):
    """``g * act'(z)``: ReLU6 passes on the open interval (0, 6), ReLU on z > 0."""
    if act == 1:
        return g if (z > 0 and z < 6) else 0 * g
    if act == 2:
        return g if z > 0 else 0 * g
    return g


@kernel
def _grad_sums(dout, x_hat, gamma, beta, act, partial):
    # dy = dout act'(gamma x_hat + beta);  partial[t, 0] = sum dy,  partial[t, 1] = sum dy x_hat
    N, H, W, C = dout.shape
    n_chunks = partial.shape[0]
    rows = N * H
    for t in prange(n_chunks):
        s1 = np.empty(C, dtype=dout.dtype)
        s2 = np.empty(C, dtype=dout.dtype)
        for r in range(t * rows // n_chunks, (t + 1) * rows // n_chunks):
            n = r // H
            h = r - n * H
            for c in range(C):
                s1[c] = 0
                s2[c] = 0
            for v in range(W):
                for c in range(C):
                    xh = x_hat[n, h, v, c]
                    dy = _act_grad(dout[n, h, v, c], gamma[c] * xh + beta[c], act)
                    s1[c] += dy
                    s2[c] += dy * xh
            for c in range(C):
                partial[t, 0, c] += s1[c]
                partial[t, 1, c] += s2[c]


@kernel
def _input_grad_train(dout, x_hat, gamma, beta, act, k_dy, k_0, k_xhat, dx):
    # dx = (gamma inv_std / M) (M dy - dbeta - x_hat dgamma) = k_dy dy - k_0 - k_xhat x_hat
    N, H, W, C = dout.shape
    for r in prange(N * H):
        n = r // H
        h = r - n * H
        for v in range(W):
            for c in range(C):
                xh = x_hat[n, h, v, c]
                dy = _act_grad(dout[n, h, v, c], gamma[c] * xh + beta[c], act)
                dx[n, h, v, c] = k_dy[c] * dy - k_0[c] - k_xhat[c] * xh


@kernel
def _backward_eval(dout, x_hat, gamma, beta, act, k_dy, dx, partial):
    # constant statistics: dx = gamma inv_std dy, and the parameter sums in the same pass
    N, H, W, C = dout.shape
    n_chunks = partial.shape[0]
    rows = N * H
    for t in prange(n_chunks):
        s1 = np.empty(C, dtype=dout.dtype)
        s2 = np.empty(C, dtype=dout.dtype)
        for r in range(t * rows // n_chunks, (t + 1) * rows // n_chunks):
            n = r // H
            h = r - n * H
            for c in range(C):
                s1[c] = 0
                s2[c] = 0
            for v in range(W):
                for c in range(C):
                    xh = x_hat[n, h, v, c]
                    dy = _act_grad(dout[n, h, v, c], gamma[c] * xh + beta[c], act)
                    s1[c] += dy
                    s2[c] += dy * xh
                    dx[n, h, v, c] = k_dy[c] * dy
            for c in range(C):
                partial[t, 0, c] += s1[c]
                partial[t, 1, c] += s2[c]


@njit(cache=True)
def _batch_statistics(partial, shift, M, momentum, eps, running_mean, running_var, mean, inv_std):
    # mu = shift + E[d], var = E[d^2] - E[d]^2 with d = x - shift (biased); running statistics updated in place
    # with the unbiased variance var M / (M - 1); mean and inv_std written in the input's dtype
    C = shift.shape[0]
    for c in range(C):
        s1 = 0.0
        s2 = 0.0
        for t in range(partial.shape[0]):
            s1 += partial[t, 0, c]
            s2 += partial[t, 1, c]
        d_mean = s1 / M
        mu = shift[c] + d_mean
        var = max(s2 / M - d_mean * d_mean, 0.0)
        running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mu
        running_var[c] = (1 - momentum) * running_var[c] + (momentum * M / (M - 1)) * var
        mean[c] = mu
        var_t = mean.dtype.type(var)  # as the reference: var in the input's dtype, then 1 / sqrt(var + eps)
        inv_std[c] = 1 / np.sqrt(var_t + mean.dtype.type(eps))


@njit(cache=True)
def _parameter_gradients(partial, gamma, inv_std, M, training, dgamma, dbeta, k_dy, k_0, k_xhat):
    # dbeta = sum dy, dgamma = sum dy x_hat; dx = k_dy dy - k_0 - k_xhat x_hat with, in training mode,
    # k_dy = gamma inv_std, k_0 = gamma inv_std dbeta / M, k_xhat = gamma inv_std dgamma / M (else k_0 = k_xhat = 0)
    C = gamma.shape[0]
    for c in range(C):
        s1 = 0.0
        s2 = 0.0
        for t in range(partial.shape[0]):
            s1 += partial[t, 0, c]
            s2 += partial[t, 1, c]
        dbeta[c] = s1
        dgamma[c] = s2
        g = np.float64(gamma[c]) * inv_std[c]
        k_dy[c] = g
        k_0[c] = g * s1 / M if training else 0.0
        k_xhat[c] = g * s2 / M if training else 0.0


def bn_act_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, act, residual):
    """Shared body of the BatchNorm forwards: ``(y, x_hat, inv_std)``, running statistics updated in place."""
    dt = x.dtype
    N, H, W, C = x.shape
    x = np.ascontiguousarray(x)
    work = x.size
    mean = np.empty(C, dtype=dt)
    inv_std = np.empty(C, dtype=dt)
    if training:
        M = N * H * W
        if M < 2:
            raise ValueError(f"batchnorm: training mode needs more than one value per channel, got input shape "
                             f"{x.shape}")
        shift = x[0, 0, 0].copy()
        partial = np.zeros((num_chunks(N * H, work), 2, C), dtype=np.float64)
        _channel_sums.pick(work)(x, shift, partial)
        _batch_statistics(partial, shift, M, float(momentum), float(eps), running_mean, running_var, mean, inv_std)
    else:
        mean[:] = running_mean
        inv_std[:] = 1 / np.sqrt(running_var + dt.type(eps))
    y = np.empty_like(x)
    x_hat = np.empty_like(x)
    has_residual = residual is not None
    res = np.ascontiguousarray(residual, dtype=dt) if has_residual else x
    _normalize_act.pick(work)(x, mean, inv_std, np.ascontiguousarray(gamma, dtype=dt),
                              np.ascontiguousarray(beta, dtype=dt), act, res, has_residual, y, x_hat)
    return y, x_hat, inv_std


def bn_act_backward(dout, x_hat, inv_std, gamma, beta, training, act):
    """Shared body of the BatchNorm backwards: ``(dx, dgamma, dbeta)``."""
    dt = x_hat.dtype
    N, H, W, C = x_hat.shape
    work = x_hat.size
    dout = np.ascontiguousarray(dout, dtype=dt)
    gamma = np.ascontiguousarray(gamma, dtype=dt)
    beta = np.ascontiguousarray(beta, dtype=dt)
    partial = np.zeros((num_chunks(N * H, work), 2, C), dtype=np.float64)
    dx = np.empty_like(x_hat)
    dgamma, dbeta = np.empty(C, dtype=dt), np.empty(C, dtype=dt)
    k_dy, k_0, k_xhat = np.empty(C, dtype=dt), np.empty(C, dtype=dt), np.empty(C, dtype=dt)
    if not training:
        # constant statistics: dx = gamma inv_std dy, computed in the same pass as the sums
        np.multiply(gamma, inv_std, out=k_dy)
        _backward_eval.pick(work)(dout, x_hat, gamma, beta, act, k_dy, dx, partial)
        _parameter_gradients(partial, gamma, inv_std, N * H * W, False, dgamma, dbeta, k_dy, k_0, k_xhat)
        return dx, dgamma, dbeta
    _grad_sums.pick(work)(dout, x_hat, gamma, beta, act, partial)
    _parameter_gradients(partial, gamma, inv_std, N * H * W, True, dgamma, dbeta, k_dy, k_0, k_xhat)
    _input_grad_train.pick(work)(dout, x_hat, gamma, beta, act, k_dy, k_0, k_xhat, dx)
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
    y, x_hat, inv_std = bn_act_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, 0,
                                       None)
    return y, BatchNormCache(x_hat, inv_std, gamma, bool(training))


@serialized
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
    zeros = np.zeros_like(gamma)
    return bn_act_backward(dy, x_hat, inv_std, gamma, zeros, training, 0)


__all__ = ["batchnorm_backward", "batchnorm_forward"]
