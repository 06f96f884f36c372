"""Stochastic gradient descent with (Nesterov) momentum and L2 weight decay, as ``torch.optim.SGD``."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from numpymnv2.backend import get_backend
from numpymnv2.kernels import optim as fast
from numpymnv2.optim.optimizer import Optimizer


def sgd_update(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None = None, *,
               lr: float, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
               weight_decay: float = 0.0, first_step: bool = False,
               work: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """One SGD step on one array: writes the new ``param`` (and ``momentum_buffer``) in place.

    Parameters
    ----------
    param, grad, work
        θ (overwritten), g = dL/dθ (read only) and scratch space, as in the conventions of
        :mod:`numpymnv2.optim.optimizer`.
    momentum_buffer : ndarray, same shape and dtype, or None
        b, overwritten; needed when ``momentum != 0``.
    lr, momentum, dampening, weight_decay : float
        η, μ, τ, λ, as Python floats (so float32 arrays are updated in float32).
    nesterov : bool
        Use the Nesterov form of the momentum.
    first_step : bool
        True on the buffer's first update: it then starts as ``d`` itself (PyTorch's convention).

    Notes
    -----
    With d the gradient after L2 weight decay (PyTorch's convention: the decay is added to the gradient, so
    it passes through the momentum)::

        d   = g + λ θ
        b_1 = d                                   (first step)
        b_t = μ b_{t-1} + (1 - τ) d               (later steps)
        u   = d + μ b_t    if nesterov else  b_t   (u = d when μ = 0)
        θ  <- θ - η u

    This is ``torch.optim.SGD``. Sutskever et al. (2013) write momentum as v <- μ v - η g, θ <- θ + v; the two
    agree while η is constant and differ by when a change of η takes effect. Nesterov needs μ > 0 and τ = 0.
    """
    w0, w1 = work if work is not None else (np.empty_like(param), np.empty_like(param))
    d = grad
    if weight_decay != 0:
        np.multiply(param, weight_decay, out=w0)
        w0 += grad                                   # d = g + wd theta
        d = w0
    if momentum != 0:
        b = momentum_buffer
        if first_step:
            np.copyto(b, d)                          # b_1 = d
        else:
            b *= momentum                            # b_t = mu b_{t-1} ...
            if dampening == 0:
                b += d                               # ... + d
            else:
                np.multiply(d, 1.0 - dampening, out=w0)
                b += w0                              # ... + (1 - tau) d
        if nesterov:
            np.multiply(b, momentum, out=w1)
            w1 += d                                  # u = d + mu b_t
            d = w1
        else:
            d = b                                    # u = b_t
    np.multiply(d, lr, out=w1)
    param -= w1                                      # theta <- theta - lr u


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum, Nesterov momentum and L2 weight decay.

    Parameters
    ----------
    params : iterable
        As :class:`~numpymnv2.optim.Optimizer`.
    lr : float
        η, the learning rate (>= 0).
    momentum : float
        μ >= 0; 0 disables the momentum buffer.
    dampening : float
        τ in [0, 1], scales the gradient entering the buffer by (1 - τ).
    nesterov : bool
        Nesterov momentum; needs momentum > 0 and dampening 0.
    weight_decay : float
        λ >= 0, L2 penalty added to the gradient.

    Notes
    -----
    The update and its conventions are in :func:`sgd_update`; the result matches ``torch.optim.SGD`` with the
    same arguments. State: ``momentum_buffer`` per parameter when momentum > 0.
    """

    _option_kinds = dict(lr="float", momentum="float", dampening="float", nesterov="bool", weight_decay="float")

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                      weight_decay=weight_decay))
        self._many = {}       # the fast kernel's lists per (group, dtype, run), kept between steps (not state)

    def _check_group(self, group: dict, where: str) -> None:
        super()._check_group(group, where)
        self._require(group["momentum"] >= 0, f"momentum must be >= 0, got {group['momentum']}{where}")
        self._require(0 <= group["dampening"] <= 1,
                      f"dampening must be in [0, 1], got {group['dampening']}{where}")
        self._require(not group["nesterov"] or (group["momentum"] > 0 and group["dampening"] == 0),
                      f"nesterov=True needs momentum > 0 and dampening = 0, got momentum={group['momentum']}, "
                      f"dampening={group['dampening']}{where}")

    def _state_spec(self, group: dict) -> dict[str, float]:
        return {"momentum_buffer": 0.0} if group["momentum"] != 0 else {}

    def step(self) -> None:
        """Update every parameter from its ``.grad`` (see :func:`sgd_update`).

        On the fast backend (the default) the parameters of a group are updated in one Numba kernel launch, one
        pass over their arrays (:func:`numpymnv2.kernels.optim.sgd_update_many`), with the same result bit for
        bit; the reference backend runs :func:`sgd_update` itself, as does a parameter the kernel does not take.
        """
        use_kernel = get_backend() == "fast"
        batches = {}          # (group, dtype, run) -> the arrays the fast kernel updates in one launch
        run = 0               # parameters the kernel does not take split the others into runs, kept in order
        for group, p, state, work, created in self._each_param():
            buf = state.get("momentum_buffer")
            first_step = self.step_count == 0 or "momentum_buffer" in created
            if use_kernel and fast.accepts(p.data, p.grad, buf):
                key = (id(group), p.data.dtype, run)
                if key not in batches:
                    batches[key] = (group, [], [], [], [])
                _, params, grads, bufs, first_steps = batches[key]
                params.append(p.data)
                grads.append(p.grad)
                bufs.append(buf)
                first_steps.append(first_step)
                continue
            self._update_many(batches)
            run += 1
            sgd_update(p.data, p.grad, buf, lr=group["lr"], momentum=group["momentum"],
                       dampening=group["dampening"], nesterov=group["nesterov"],
                       weight_decay=group["weight_decay"], first_step=first_step, work=work)
        self._update_many(batches)
        self.step_count += 1

    def _update_many(self, batches: dict) -> None:
        """Run and empty ``batches``: each one launch of the fast kernel, with its lists kept between steps."""
        for key, (group, params, grads, bufs, first_steps) in batches.items():
            keep = self._many.setdefault(key, fast.ManyArrays())
            fast.sgd_update_many(params, grads, bufs, first_steps, lr=group["lr"], momentum=group["momentum"],
                                 dampening=group["dampening"], nesterov=group["nesterov"],
                                 weight_decay=group["weight_decay"], keep=keep)
        batches.clear()
