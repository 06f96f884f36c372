"""The SGD update in one pass over memory: the fast path of :func:`numpymnv2.optim.sgd.sgd_update`.

The readable update runs four NumPy operations per parameter (``b *= mu``, ``b += d``, ``u = lr b``,
``param -= u``), each a pass over the arrays; for MobileNetV2's 2.2 million parameters that is about ten array
passes per step, bound by memory traffic. Here each element is read once and written once (``param`` and the
momentum buffer ``b``), with the same float32 operations in the same order and no fused multiply-adds, so the
result equals the reference bit for bit. Measured on the 2-core machine (one thread, CPU time, all 158
parameters of the width-1.0 network): 2.4 ms per step with the NumPy update against 1.1 ms.

:func:`sgd_update` is one launch per array; :func:`sgd_update_many`, what ``SGD.step`` runs, one launch for all
the arrays of a param group, whose Python cost per array (a launch of a kernel on a few hundred values) had
become most of the step's update.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.typed import List

from numpymnv2.kernels._launch import Kernel, num_chunks, parallel_rows

BLOCK = 16384    # elements of the raveled parameter per row of the kernel


@njit(cache=True)
def _sgd_block(param, grad, buf, lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step):
    """``d = g + wd theta``; ``b = d`` on the first step, else ``b = mu b + (1 - tau) d``; ``u = d + mu b``
    (Nesterov) or ``b``; ``theta -= lr u``, element by element."""
    # the loop starts at 0 so Numba knows the index is not negative and LLVM vectorises it (a loop from
    # r * BLOCK kept a negative-index check per access and ran 5x slower)
    for k in range(param.shape[0]):
        d = grad[k]
        if weight_decay != 0:
            d = weight_decay * param[k] + d
        if momentum != 0:
            if first_step:
                b = d
            elif one_minus_dampening == 1:
                b = momentum * buf[k] + d
            else:
                b = momentum * buf[k] + one_minus_dampening * d
            buf[k] = b
            d = momentum * b + d if nesterov else b
        param[k] = param[k] - lr * d


@njit(cache=True, inline="always")
def _sgd_row(inputs, r):
    """Block ``r`` (elements ``r BLOCK`` to ``(r + 1) BLOCK``) of the raveled arrays: :func:`_sgd_block`."""
    param, grad, buf, lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step = inputs
    lo = r * BLOCK
    hi = min(param.shape[0], lo + BLOCK)
    _sgd_block(param[lo:hi], grad[lo:hi], buf[lo:hi], lr, momentum, one_minus_dampening, weight_decay, nesterov,
               first_step)


_sgd = parallel_rows(_sgd_row)


def _sgd_many_loop(hyper, params, grads, bufs, first, owner, start, bounds, nesterov):
    """:func:`_sgd_block` on block ``r`` (elements ``start[r]`` to ``start[r] + BLOCK``) of parameter
    ``owner[r]``, for every block; thread ``t`` takes blocks ``bounds[t]`` to ``bounds[t + 1]``. ``hyper`` holds
    ``lr, momentum, 1 - dampening, weight_decay`` in the parameters' dtype."""
    lr, momentum, one_minus_dampening, weight_decay = hyper[0], hyper[1], hyper[2], hyper[3]
    for t in prange(bounds.shape[0] - 1):
        for r in range(bounds[t], bounds[t + 1]):
            i, lo = owner[r], start[r]
            param = params[i]
            hi = min(param.shape[0], lo + BLOCK)
            _sgd_block(param[lo:hi], grads[i][lo:hi], bufs[i][lo:hi], lr, momentum, one_minus_dampening,
                       weight_decay, nesterov, first[i] != 0)


_sgd_many = Kernel(_sgd_many_loop, "sgd_many")


class ManyArrays:
    """What :func:`sgd_update_many` keeps between steps for one group of parameters: Numba lists of their raveled
    arrays (rebuilt only when an array is replaced) and the table of blocks (rebuilt only when the sizes
    change). Building the lists costs about 1.4 microseconds per array, more than the update of a small one."""

    def __init__(self):
        self.arrays = None          # the (params, grads, buffers) the lists were built from
        self.lists = None           # None when two parameters' arrays overlap (see _overlapping)
        self.table_key = None       # the (sizes, threads) the table was built for
        self.table = None           # (owner, start, bounds)

    def lists_for(self, params, grads, bufs):
        arrays = (params, grads, bufs)
        if self.arrays is None or any(len(new) != len(old) or any(a is not b for a, b in zip(new, old))
                                      for new, old in zip(arrays, self.arrays)):
            self.arrays = tuple(list(group) for group in arrays)
            self.lists = None if _overlapping(*arrays) else tuple(List([a.reshape(-1) for a in group])
                                                                  for group in arrays)
        return self.lists

    def table_for(self, sizes: tuple, threads: int):
        """``(owner, start, bounds)``: the parameter and first element of every block, and each of ``threads``
        threads' run of blocks, with about the same number of elements each."""
        if (sizes, threads) != self.table_key:
            blocks = [(i, lo) for i, n in enumerate(sizes) for lo in range(0, n, BLOCK)]
            owner = np.array([i for i, _ in blocks], dtype=np.int64)
            start = np.array([lo for _, lo in blocks], dtype=np.int64)
            ends = np.cumsum([min(BLOCK, sizes[i] - lo) for i, lo in blocks], dtype=np.int64)
            cuts = np.searchsorted(ends, [ends[-1] * t // threads for t in range(1, threads)], side="right")
            bounds = np.concatenate([[0], cuts, [len(blocks)]]).astype(np.int64)
            self.table_key, self.table = (sizes, threads), (owner, start, bounds)
        return self.table


def _overlapping(params, grads, bufs) -> bool:
    """Whether the memory that one parameter's update writes (its value and momentum buffer) overlaps any array
    of another parameter (tied weights: two Parameters sharing one array). One launch would then update both at
    once, where one update after the other is the contract."""
    spans = []
    for role, group in enumerate((params, bufs, grads)):
        if role == 1 and group is params:
            continue
        for i, a in enumerate(group):
            if a.size:
                start = a.__array_interface__["data"][0]
                spans.append((start, start + a.nbytes, i, role < 2))
    spans.sort()
    active = []                 # (end, parameter, written) of the spans that reach past the current start
    for start, end, i, written in spans:
        active = [s for s in active if s[0] > start]
        if any(j != i and (written or w) for _, j, w in active):
            return True
        active.append((end, i, written))
    return False


def sgd_update_many(params: list, grads: list, momentum_buffers: list | None, first_step: list, *, lr: float,
                    momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                    weight_decay: float = 0.0, keep: ManyArrays) -> None:
    """:func:`sgd_update` on many arrays of one dtype with the same hyperparameters, in one kernel launch
    (``first_step`` per array); every array must be one that :func:`accepts`. ``keep`` carries the Numba
    lists from one step to the next. Each element gets the same operations as in :func:`sgd_update`, so the
    result is the same bit for bit. Measured on the 2-core machine (``SGD.step`` alone with momentum, the 158
    float32 parameters of the width-1.0 network, median of 100 steps): 0.86 ms against 1.53 ms with one launch
    per parameter (0.47 ms for the same update of one flat array of all 2.2 million values)."""
    sizes = tuple(p.size for p in params)
    work = sum(sizes)
    if work == 0:
        return
    bufs = momentum_buffers if momentum != 0 else params
    lists = keep.lists_for(params, grads, bufs)
    if lists is None:           # tied arrays: one parameter after the other, as the contract says
        for p, g, b, first in zip(params, grads, bufs, first_step):
            sgd_update(p, g, b if momentum != 0 else None, lr=lr, momentum=momentum, dampening=dampening,
                       nesterov=nesterov, weight_decay=weight_decay, first_step=first)
        return
    owner, start, bounds = keep.table_for(sizes, num_chunks(work // BLOCK + 1, work))
    hyper = np.array([lr, momentum, 1.0 - dampening, weight_decay], dtype=params[0].dtype)
    _sgd_many.launch(work, hyper, *lists, np.array(first_step, dtype=np.uint8), owner, start, bounds,
                     bool(nesterov))


def accepts(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None) -> bool:
    """Whether :func:`sgd_update` can update these arrays in place: C-contiguous floating arrays of one dtype
    (the buffer only when there is one); the optimizer runs the NumPy update for anything else."""
    dt = param.dtype
    ok = dt.kind == "f" and param.flags.c_contiguous and grad.flags.c_contiguous and grad.dtype == dt
    if momentum_buffer is not None:
        ok = ok and momentum_buffer.flags.c_contiguous and momentum_buffer.dtype == dt
    return ok


def sgd_update(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None = None, *,
               lr: float, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
               weight_decay: float = 0.0, first_step: bool = False,
               work: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """One SGD step on one array, in place; the contract and the equations of
    :func:`numpymnv2.optim.sgd.sgd_update` for arrays that :func:`accepts` (``work`` is not needed).

    Parameters
    ----------
    param : ndarray
        θ, overwritten.
    grad : ndarray, shape and dtype of ``param``
    momentum_buffer : ndarray, shape and dtype of ``param``, or None
        Overwritten; needed when ``momentum != 0``.
    lr, momentum, dampening, weight_decay : float
    nesterov, first_step : bool
    work : ignored
    """
    if not accepts(param, grad, momentum_buffer if momentum != 0 else None) or grad.shape != param.shape:
        raise ValueError(f"sgd_update: expected C-contiguous arrays of one floating dtype and shape, got param "
                         f"{param.shape} {param.dtype}, grad {grad.shape} {grad.dtype}")
    dt = param.dtype
    flat = param.reshape(-1)
    buf = momentum_buffer.reshape(-1) if momentum != 0 else flat
    # the hyperparameters in the parameters' dtype, as NumPy's weak Python scalars are in the reference
    _sgd(flat.size, (flat.size + BLOCK - 1) // BLOCK,
         (flat, grad.reshape(-1), buf, dt.type(lr), dt.type(momentum), dt.type(1.0 - dampening),
          dt.type(weight_decay), bool(nesterov), bool(first_step)))


__all__ = ["ManyArrays", "accepts", "sgd_update", "sgd_update_many"]
