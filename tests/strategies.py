"""Hypothesis strategies shared by the test suite."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays


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


@st.composite
def seeds(draw):
    return draw(st.integers(0, 2**32 - 1))
