"""Hypothesis strategies shared by the test suite."""
from __future__ import annotations

import os

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from numpymnv2.gradcheck import gradcheck


def nhwc_shapes(min_side=1, max_side=7, max_batch=4, max_channels=8):
    """``(N, H, W, C)`` with odd and even sides."""
    return st.tuples(st.integers(1, max_batch), st.integers(min_side, max_side), st.integers(min_side, max_side),
                     st.integers(1, max_channels))


def float_arrays(shape, dtype=np.float64, low=-1.0, high=1.0):
    """Arrays of ``shape`` with finite elements in ``[low, high]``."""
    return arrays(dtype, shape, elements=st.floats(low, high, allow_nan=False, allow_infinity=False,
                                                   width=np.dtype(dtype).itemsize * 8), fill=st.nothing())


def away_from_kinks(x: np.ndarray, kinks=(0.0, 6.0), margin: float = 1e-3) -> np.ndarray:
    """Move values within ``margin`` of a kink of ReLU/ReLU6 to ``margin`` away, where the derivative exists."""
    x = x.copy()
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] = k + np.where(x[near] >= k, margin, -margin) * 2
    return x


def randomize_bn(module, rng=0):
    """Give every BatchNorm in ``module`` non-trivial parameters and running statistics (so a gradient check
    exercises every term); return ``module``. ``rng``: a Generator or a seed."""
    from numpymnv2.nn import BatchNorm2d

    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    for bn in (m for m in module.modules() if isinstance(m, BatchNorm2d)):
        bn.weight.data[...] = rng.uniform(0.5, 1.5, bn.weight.shape)
        bn.bias.data[...] = rng.uniform(-0.3, 0.3, bn.bias.shape)
        bn.running_mean[...] = rng.uniform(-0.2, 0.2, bn.running_mean.shape)
        bn.running_var[...] = rng.uniform(0.5, 1.5, bn.running_var.shape)
    return module


def npz_round_trip(state: dict) -> dict:
    """``state`` written with ``np.savez`` and read back with ``allow_pickle=False``."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@st.composite
def seeds(draw):
    return draw(st.integers(0, 2**32 - 1))


# ---------------------------------------------------------------------------------------------------------
# gradient checks shared by the op tests

REL_TOL = 1e-6
"""Bound on the normwise relative error of every finite-difference check in the suite."""


def resolvable_rel_error(result, rel_tol: float = REL_TOL) -> float:
    """The worst normwise relative error of ``result``, each array's denominator at least ``roundoff / rel_tol``.

    A float64 central difference with step ``eps`` resolves a derivative ``g`` only to a relative accuracy of about
    ``u |out| / (eps g)`` (``result.roundoff / g``): with ``eps = 1e-6`` a relative error of ``1e-6`` can be asked
    only of gradients larger than about ``2e-4 |out|``. Hypothesis is good at finding the others (an input of
    ``1e-6`` next to a BatchNorm bias of 0.1 makes ``dL/dgamma`` a millionth of the output); for them the error is
    measured against the smallest gradient that the bound can be asked of. An ordinary gradient that is wrong is
    measured exactly as :func:`numpymnv2.gradcheck` reports it.
    """
    worst = 0.0
    for r in result.reports:
        used = r.max_abs_error / r.max_rel_error if r.max_rel_error > 0 else 0.0
        worst = max(worst, r.max_abs_error / max(used, result.roundoff / rel_tol, 1e-300))
    return worst


def record_rel_error(op: str, result) -> None:
    """Append ``op<TAB>resolvable rel. error<TAB>gradcheck's rel. error`` to the file ``NUMPYMNV2_GRADLOG`` names.

    ``NUMPYMNV2_GRADLOG=/tmp/grad.tsv pytest tests/functional`` then ``sort -k2 -g /tmp/grad.tsv | tail``.
    """
    path = os.environ.get("NUMPYMNV2_GRADLOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{op}\t{resolvable_rel_error(result):.6e}\t{result.max_rel_error:.6e}\n")


def check_grads(op: str, target, inputs, **kwargs):
    """Run :func:`numpymnv2.gradcheck` in float64 (a function pair or a module), record its error and assert it
    passes with a (resolvable) relative error below ``REL_TOL``."""
    result = gradcheck(target, inputs, **kwargs)
    record_rel_error(op, result)
    rel = resolvable_rel_error(result)
    assert rel < REL_TOL, f"{op}: relative error {rel:.3e}\n{result}"
    assert result.passed, f"{op}:\n{result}"
    return result


def kink_distance(x: np.ndarray, kinks=(0.0, 6.0)) -> float:
    """The smallest distance of any value of ``x`` to a kink."""
    return float(min(np.abs(x - k).min() for k in kinks)) if x.size else np.inf


def scales(shape, low=0.1, high=1.5, dtype=np.float64):
    """Arrays whose magnitudes lie in ``[low, high]``, either sign: a BatchNorm ``gamma`` that does not shrink
    the gradient below what a central difference resolves next to ``beta`` (with ``|gamma| = 1e-9`` the output
    changes by ``1e-15`` per step, which float64 cannot see against ``beta ~ 1``)."""
    return st.tuples(float_arrays(shape, dtype, low, high), arrays(np.bool_, shape)).map(
        lambda t: np.where(t[1], -t[0], t[0]))
