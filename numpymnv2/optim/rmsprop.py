"""RMSProp in two conventions: TensorFlow 1's (the MobileNetV2 paper's) and PyTorch's.

The paper (Sandler et al. 2018, ImageNet training setup) trains in TensorFlow with RMSProp, decay and momentum
both 0.9, i.e. TensorFlow 1's ``tf.train.RMSPropOptimizer``. That optimizer differs from ``torch.optim.RMSprop``
in:

* the denominator: TensorFlow sqrt(v + ε), PyTorch sqrt(v) + ε;
* the running mean square v before the first step: TensorFlow 1 starts it at 1 (its ``rms`` slot has a ones
  initialiser), PyTorch at 0;
* where the learning rate goes: TensorFlow keeps it inside the momentum buffer (m <- μ m + η g / s,
  θ <- θ - m), PyTorch applies it outside (b <- μ b + g / s, θ <- θ - η b);
* the default ε: 1e-10 in TensorFlow 1 (1e-7 in TF2's Keras), 1e-8 in PyTorch; and the default decay α:
  0.9 in TensorFlow, 0.99 in PyTorch.

Where the learning rate goes matters only when η changes during training (a schedule): TensorFlow's buffer
keeps the old η in the accumulated momentum, PyTorch applies the new η to the whole buffer at once. Starting v
at 1 makes the first steps about η g; starting at 0 makes the first step η g / (sqrt(1 - α) |g|), a large
sign-like step. With ε inside the root, 1e-10 is negligible; TF-slim's ImageNet training script defaults to
``opt_epsilon = 1.0``, a much stronger damping. The paper does not state its ε.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from numpymnv2.optim.optimizer import Optimizer


def _decayed_grad(param, grad, weight_decay, w0):
    if weight_decay == 0:
        return grad
    np.multiply(param, weight_decay, out=w0)
    w0 += grad                                       # g <- g + wd theta
    return w0


def _update_averages(g, square_avg, grad_avg, alpha, w1):
    """v <- α v + (1 - α) g², and (centered) ḡ <- α ḡ + (1 - α) g, in place."""
    square_avg *= alpha
    np.multiply(g, 1.0 - alpha, out=w1)
    w1 *= g
    square_avg += w1                                 # v = alpha v + (1 - alpha) g**2
    if grad_avg is not None:
        np.subtract(g, grad_avg, out=w1)
        w1 *= 1.0 - alpha
        grad_avg += w1                               # gbar = alpha gbar + (1 - alpha) g, written as a lerp


def rmsprop_update(param: np.ndarray, grad: np.ndarray, square_avg: np.ndarray,
                   momentum_buffer: np.ndarray | None = None, grad_avg: np.ndarray | None = None, *,
                   lr: float, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                   weight_decay: float = 0.0, work: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """One RMSProp step in PyTorch's convention (ε outside the root); updates the arrays in place.

    Parameters
    ----------
    param, grad, work
        θ (overwritten), g = dL/dθ (read only) and scratch space, as in the conventions of
        :mod:`numpymnv2.optim.optimizer`.
    square_avg : ndarray, same shape and dtype
        v, the running mean of g², overwritten (starts at 0 in PyTorch).
    momentum_buffer : ndarray, same shape and dtype, or None
        b, overwritten; needed when ``momentum > 0``.
    grad_avg : ndarray, same shape and dtype, or None
        ḡ, the running mean of g; give it for the centered variant, None otherwise.
    lr, alpha, eps, momentum, weight_decay : float
        η, α, ε, μ, λ as Python floats.

    Notes
    -----
    This is ``torch.optim.RMSprop``::

        g  <- g + λ θ                                   (L2 weight decay)
        v  <- α v + (1 - α) g²
        ḡ  <- α ḡ + (1 - α) g                           (centered only)
        s  = sqrt(v - ḡ²) + ε   (centered)   or   sqrt(v) + ε
        b  <- μ b + g / s,   θ <- θ - η b               (μ > 0)
        θ  <- θ - η g / s                               (μ = 0)

    Hinton's lecture 6e (2012) divides the gradient by the root of the running mean square; the centered
    form (Graves 2013) divides by an estimate of the standard deviation instead.
    """
    w0, w1 = work if work is not None else (np.empty_like(param), np.empty_like(param))
    g = _decayed_grad(param, grad, weight_decay, w0)
    _update_averages(g, square_avg, grad_avg, alpha, w1)
    if grad_avg is not None:
        np.multiply(grad_avg, grad_avg, out=w1)
        np.subtract(square_avg, w1, out=w1)
        np.sqrt(w1, out=w1)                          # sqrt(v - gbar**2)
    else:
        np.sqrt(square_avg, out=w1)                  # sqrt(v)
    w1 += eps                                        # s
    np.divide(g, w1, out=w1)                         # g / s
    if momentum > 0:
        momentum_buffer *= momentum
        momentum_buffer += w1                        # b = mu b + g / s
        np.multiply(momentum_buffer, lr, out=w1)
    else:
        w1 *= lr
    param -= w1                                      # theta <- theta - lr b   (or lr g / s)


def rmsprop_tf_update(param: np.ndarray, grad: np.ndarray, square_avg: np.ndarray,
                      momentum_buffer: np.ndarray | None = None, grad_avg: np.ndarray | None = None, *,
                      lr: float, alpha: float = 0.9, eps: float = 1e-10, momentum: float = 0.0,
                      weight_decay: float = 0.0, work: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """One RMSProp step in TensorFlow 1's convention (ε inside the root, η inside the momentum); in place.

    Parameters
    ----------
    param, grad, work
        θ (overwritten), g = dL/dθ (read only) and scratch space, as in the conventions of
        :mod:`numpymnv2.optim.optimizer`.
    square_avg : ndarray, same shape and dtype
        v, TensorFlow's ``rms`` slot, overwritten; TensorFlow 1 starts it at 1.
    momentum_buffer : ndarray, same shape and dtype, or None
        m, TensorFlow's ``momentum`` slot, overwritten; needed when ``momentum > 0``.
    grad_avg : ndarray, same shape and dtype, or None
        ḡ, TensorFlow's ``mg`` slot (starts at 0); give it for the centered variant.
    lr, alpha, eps, momentum, weight_decay : float
        η, α (TensorFlow's ``decay``), ε, μ, λ as Python floats.

    Notes
    -----
    TensorFlow 1's ``ApplyRMSProp`` / ``ApplyCenteredRMSProp``, the optimizer of the MobileNetV2 paper::

        g  <- g + λ θ                 (L2 weight decay: TF-slim adds λ/2 |θ|² to the loss, same gradient)
        v  <- α v + (1 - α) g²        (TensorFlow writes v <- v + (1 - α)(g² - v))
        ḡ  <- α ḡ + (1 - α) g         (centered only)
        s  = sqrt(v - ḡ² + ε)   (centered)   or   sqrt(v + ε)
        m  <- μ m + η g / s
        θ  <- θ - m

    With μ = 0 the buffer is not kept and θ <- θ - η g / s, the same step.
    """
    w0, w1 = work if work is not None else (np.empty_like(param), np.empty_like(param))
    g = _decayed_grad(param, grad, weight_decay, w0)
    _update_averages(g, square_avg, grad_avg, alpha, w1)
    if grad_avg is not None:
        np.multiply(grad_avg, grad_avg, out=w1)
        np.subtract(square_avg, w1, out=w1)          # v - gbar**2
        w1 += eps
    else:
        np.add(square_avg, eps, out=w1)              # v + eps
    np.sqrt(w1, out=w1)                              # s
    np.divide(g, w1, out=w1)
    w1 *= lr                                         # lr g / s
    if momentum > 0:
        momentum_buffer *= momentum
        momentum_buffer += w1                        # m = mu m + lr g / s
        param -= momentum_buffer                     # theta <- theta - m
    else:
        param -= w1


class RMSprop(Optimizer):
    """RMSProp with momentum; by default the paper's TensorFlow 1 convention and hyperparameters.

    Parameters
    ----------
    params : iterable
        As :class:`~numpymnv2.optim.Optimizer`.
    lr : float
        η >= 0. The paper starts at 0.045 (batch 96 per worker, 16 workers).
    alpha : float
        α in [0, 1], the decay of the running mean square (TensorFlow's ``decay``, paper 0.9; PyTorch's
        default is 0.99).
    eps : float or None
        ε >= 0. None means the default of the chosen convention: 1e-10 (TensorFlow 1) or 1e-8 (PyTorch).
    momentum : float
        μ >= 0 (paper 0.9; PyTorch's default is 0).
    weight_decay : float
        λ >= 0, L2 penalty added to the gradient (the paper: 4e-5).
    centered : bool
        Normalise by the estimated standard deviation of the gradient instead of its root mean square.
    eps_inside_sqrt : bool
        True (default): TensorFlow 1's RMSProp as a whole, see :func:`rmsprop_tf_update`: ε inside the root,
        η inside the momentum buffer, v starting at 1. False: ``torch.optim.RMSprop`` exactly, see
        :func:`rmsprop_update`.
    initial_square_avg : float or None
        Starting value of v; None means 1.0 with ``eps_inside_sqrt`` (TensorFlow 1) and 0.0 without (PyTorch).

    Notes
    -----
    The module docstring tabulates how the two conventions differ. State per parameter: ``square_avg``,
    ``momentum_buffer`` (momentum > 0) and ``grad_avg`` (centered). ``eps_inside_sqrt`` may be overridden per
    param group, but the None defaults of ``eps`` and ``initial_square_avg`` are resolved once, from the
    constructor's ``eps_inside_sqrt``.
    """

    _option_kinds = dict(lr="float", alpha="float", eps="float", momentum="float", weight_decay="float",
                         centered="bool", eps_inside_sqrt="bool", initial_square_avg="float")

    def __init__(self, params: Iterable, lr: float, alpha: float = 0.9, eps: float | None = None,
                 momentum: float = 0.9, weight_decay: float = 0.0, centered: bool = False,
                 eps_inside_sqrt: bool = True, initial_square_avg: float | None = None):
        tf_style = bool(eps_inside_sqrt)
        if eps is None:
            eps = 1e-10 if tf_style else 1e-8
        if initial_square_avg is None:
            initial_square_avg = 1.0 if tf_style else 0.0
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay,
                                      centered=centered, eps_inside_sqrt=eps_inside_sqrt,
                                      initial_square_avg=initial_square_avg))

    def _check_group(self, group: dict, where: str) -> None:
        super()._check_group(group, where)
        self._require(0 <= group["alpha"] <= 1, f"alpha must be in [0, 1], got {group['alpha']}{where}")
        self._require(group["eps"] >= 0, f"eps must be >= 0, got {group['eps']}{where}")
        self._require(group["momentum"] >= 0, f"momentum must be >= 0, got {group['momentum']}{where}")
        self._require(group["initial_square_avg"] >= 0,
                      f"initial_square_avg must be >= 0, got {group['initial_square_avg']}{where}")

    def _state_spec(self, group: dict) -> dict[str, float]:
        spec = {"square_avg": group["initial_square_avg"]}
        if group["momentum"] > 0:
            spec["momentum_buffer"] = 0.0
        if group["centered"]:
            spec["grad_avg"] = 0.0
        return spec

    def step(self) -> None:
        """Update every parameter from its ``.grad``."""
        for group, p, state, work, _ in self._each_param():
            update = rmsprop_tf_update if group["eps_inside_sqrt"] else rmsprop_update
            update(p.data, p.grad, state["square_avg"],
                   state.get("momentum_buffer") if group["momentum"] > 0 else None,
                   state.get("grad_avg") if group["centered"] else None,
                   lr=group["lr"], alpha=group["alpha"], eps=group["eps"], momentum=group["momentum"],
                   weight_decay=group["weight_decay"], work=work)
        self.step_count += 1
