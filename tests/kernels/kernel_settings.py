"""Settings and helpers shared by the kernel tests.

A plain module rather than ``conftest``: importing ``conftest`` by name picks up whichever test folder's
conftest was imported first (``pytest tests/nn tests/kernels`` failed to collect).

With ``NUMBA_DISABLE_JIT=1`` (CI's second run, which measures the kernels' line coverage) the kernels run as
plain Python loops; the tests then draw smaller shapes so the run stays short.
"""
import contextlib

import numba
import numpy as np

from numpymnv2.kernels import _contention, _launch

NO_JIT = bool(numba.config.DISABLE_JIT)
MAX_SIDE = 6 if NO_JIT else 12
MAX_BATCH = 2 if NO_JIT else 4
MAX_CHANNELS = 5 if NO_JIT else 20

# Every kernel has a serial and a parallel copy (numpymnv2.kernels._launch.Kernel); the test shapes are far
# below the work at which the parallel one runs, so the tests force each copy in turn.
COPIES = ("serial", "parallel")
TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5}


@contextlib.contextmanager
def kernel_copy(copy: str):
    """Run every kernel launched in the ``with`` body on its ``"serial"`` or its ``"parallel"`` copy (the parallel
    one compiled at once rather than in the background, and whatever else runs on the machine)."""
    saved = _launch.PARALLEL_MIN_WORK, _launch.LATER.enabled, _contention.MONITOR.enabled
    _launch.PARALLEL_MIN_WORK = {"serial": 1 << 62, "parallel": 0}[copy]
    if copy == "parallel":
        _launch.LATER.enabled = _contention.MONITOR.enabled = False
    try:
        yield
    finally:
        _launch.PARALLEL_MIN_WORK, _launch.LATER.enabled, _contention.MONITOR.enabled = saved


def assert_close(fast, ref, dtype=None):
    """``fast`` has ``ref``'s dtype (``dtype`` when given) and shape, and equals it to :data:`TOL` of the
    dtype, relative to ``max(1, max |ref|)``."""
    dtype = np.dtype(dtype or ref.dtype)
    assert fast.dtype == ref.dtype == dtype
    assert fast.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max(initial=0)))
    np.testing.assert_allclose(fast, ref, rtol=0, atol=TOL[dtype] * scale)
