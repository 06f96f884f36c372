"""Softmax cross-entropy, the classification loss, averaged over the batch."""
from __future__ import annotations

import numpy as np


def softmax_cross_entropy(logits: np.ndarray, labels, label_smoothing: float = 0.0):
    """Mean cross-entropy of ``softmax(logits)`` against integer labels, and its gradient.

    Parameters
    ----------
    logits : ndarray, shape (N, K), float32 or float64
    labels : array of int, shape (N,), values in ``[0, K)``
    label_smoothing : float in [0, 1)
        PyTorch's convention: the target is ``(1 - eps) onehot + eps / K``.

    Returns
    -------
    loss : numpy scalar of the logits' dtype
    dlogits : ndarray, shape (N, K)
        ``dL/dlogits`` of the mean loss.

    Notes
    -----
    With ``q`` the (smoothed) target distribution and ``p = softmax(logits)``::

        log p_k = (l_k - m) - log sum_j exp(l_j - m),   m = max_j l_j   (stable: no overflow)
        L       = -(1/N) sum_n sum_k q_nk log p_nk
        dL/dl   = (p - q) / N
    """
    if not isinstance(logits, np.ndarray) or logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy: expected logits of shape (N, K), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    if logits.dtype not in (np.float32, np.float64):
        raise TypeError(f"softmax_cross_entropy: expected float32 or float64 logits, got {logits.dtype}")
    N, K = logits.shape
    labels = np.asarray(labels)
    if labels.shape != (N,):
        raise ValueError(f"softmax_cross_entropy: expected labels of shape ({N},) for logits {logits.shape}, "
                         f"got {labels.shape}")
    if N == 0 or K == 0:
        raise ValueError(f"softmax_cross_entropy: expected at least one sample and one class, got logits of shape "
                         f"{logits.shape} (the mean over an empty batch is undefined)")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"softmax_cross_entropy: expected integer labels, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= K:
        raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {K}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"softmax_cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    if not np.isfinite(logits).all():
        raise ValueError("softmax_cross_entropy: the logits contain NaN or infinite values")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    q = np.full_like(logits, label_smoothing / K)
    q[np.arange(N), labels] += 1 - label_smoothing
    loss = -(q * log_p).sum() / N
    # forward was: L = -(1/N) sum q log_p with log_p = shifted - log sum exp(shifted); since sum_k q_k = 1,
    # dL/dlogits = (softmax - q) / N (the max shift is a constant and drops out)
    dlogits = (np.exp(log_p) - q) / logits.dtype.type(N)
    return logits.dtype.type(loss), dlogits
