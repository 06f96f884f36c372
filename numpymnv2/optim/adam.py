"""Adam (Kingma & Ba 2015) with L2 weight decay, and AdamW (Loshchilov & Hutter 2019) with decoupled decay."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from numpymnv2.optim.optimizer import Optimizer


def adam_update(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray, *,
                step: int, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                work: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """One Adam or AdamW step on one array; updates ``param`` and the two moments in place.

    Parameters
    ----------
    param, grad, work
        θ (overwritten), g = dL/dθ (read only) and scratch space, as in the conventions of
        :mod:`numpymnv2.optim.optimizer`.
    exp_avg, exp_avg_sq : ndarray, same shape and dtype
        m and v, the running first and second moments of g (both start at 0), overwritten.
    step : int
        t >= 1, the number of this step (1 on the first call), for the bias corrections.
    lr, beta1, beta2, eps, weight_decay : float
        η, β1, β2, ε, λ as Python floats.
    decoupled_weight_decay : bool
        False: Adam's L2 penalty, added to the gradient. True: AdamW's decay, applied to θ directly.

    Notes
    -----
    As ``torch.optim.Adam`` / ``torch.optim.AdamW``::

        θ  <- (1 - η λ) θ                           (AdamW only: decay not scaled by the adaptive step)
        g  <- g + λ θ                               (Adam only: L2 penalty, passes through m and v)
        m  <- β1 m + (1 - β1) g                     (computed as m + (1 - β1)(g - m))
        v  <- β2 v + (1 - β2) g²
        θ  <- θ - η / (1 - β1^t) · m / (sqrt(v) / sqrt(1 - β2^t) + ε)

    The last line is Algorithm 1 of Kingma & Ba with the bias corrections m̂ = m / (1 - β1^t) and
    v̂ = v / (1 - β2^t) folded into the step size, ε added to sqrt(v̂) as the paper does. Loshchilov & Hutter
    argue that with adaptive methods the L2 penalty is not weight decay, because large-gradient weights get
    their penalty divided by a large sqrt(v̂); AdamW decays every weight by the same factor 1 - η λ.
    """
    w0, w1 = work if work is not None else (np.empty_like(param), np.empty_like(param))
    g = grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            param *= 1.0 - lr * weight_decay         # theta <- (1 - lr wd) theta
        else:
            np.multiply(param, weight_decay, out=w0)
            w0 += grad                               # g <- g + wd theta
            g = w0
    np.subtract(g, exp_avg, out=w1)
    w1 *= 1.0 - beta1
    exp_avg += w1                                    # m = m + (1 - beta1)(g - m)
    exp_avg_sq *= beta2
    np.multiply(g, 1.0 - beta2, out=w1)
    w1 *= g
    exp_avg_sq += w1                                 # v = beta2 v + (1 - beta2) g**2
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2_sqrt = (1.0 - beta2 ** step) ** 0.5
    step_size = lr / bias_correction1
    np.sqrt(exp_avg_sq, out=w1)
    w1 /= bias_correction2_sqrt
    w1 += eps                                        # sqrt(v_hat) + eps
    np.divide(exp_avg, w1, out=w1)
    w1 *= step_size
    param -= w1                                      # theta <- theta - lr m_hat / (sqrt(v_hat) + eps)


class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient, as ``torch.optim.Adam``.

    Parameters
    ----------
    params : iterable
        As :class:`~numpymnv2.optim.Optimizer`.
    lr : float
        η >= 0.
    betas : (float, float)
        (β1, β2), each in [0, 1).
    eps : float
        ε >= 0.
    weight_decay : float
        λ >= 0, the L2 penalty.

    Notes
    -----
    See :func:`adam_update`. State per parameter: ``exp_avg`` and ``exp_avg_sq``; the step count t is the
    optimizer's ``step_count`` (PyTorch keeps one per parameter; here every parameter steps together).
    """

    _option_kinds = dict(lr="float", betas="pair", eps="float", weight_decay="float")
    _decoupled = False

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check_group(self, group: dict, where: str) -> None:
        super()._check_group(group, where)
        for j, beta in enumerate(group["betas"]):
            self._require(0 <= beta < 1, f"betas[{j}] must be in [0, 1), got {beta}{where}")
        self._require(group["eps"] >= 0, f"eps must be >= 0, got {group['eps']}{where}")

    def _state_spec(self, group: dict) -> dict[str, float]:
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0}

    def step(self) -> None:
        """Update every parameter from its ``.grad`` (see :func:`adam_update`)."""
        t = self.step_count + 1
        for group, p, state, work, _ in self._each_param():
            beta1, beta2 = group["betas"]
            adam_update(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], step=t, lr=group["lr"],
                        beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                        decoupled_weight_decay=self._decoupled, work=work)
        self.step_count = t


class AdamW(Adam):
    """Adam with decoupled weight decay θ <- (1 - η λ) θ, as ``torch.optim.AdamW`` (default λ = 1e-2).

    Parameters are those of :class:`Adam`; see :func:`adam_update` with ``decoupled_weight_decay=True``.
    """

    _decoupled = True

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
