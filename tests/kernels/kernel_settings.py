"""Shared settings of the kernel tests.

A plain module rather than ``conftest``: importing ``conftest`` by name picks up whichever test folder's
conftest was imported first (``pytest tests/nn tests/kernels`` failed to collect).

With ``NUMBA_DISABLE_JIT=1`` (CI's second run, so coverage sees the kernels' source) the kernels run as plain
Python loops; the tests then draw smaller shapes so the run stays short.
"""
import numba

NO_JIT = bool(numba.config.DISABLE_JIT)
MAX_SIDE = 6 if NO_JIT else 12
MAX_BATCH = 2 if NO_JIT else 4
MAX_CHANNELS = 5 if NO_JIT else 20
