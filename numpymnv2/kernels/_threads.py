"""Thread pools of the fast backend, tamed once when :mod:`numpymnv2.kernels` is first imported.

Why
---
A training step alternates BLAS matrix products (the pointwise convolutions) with Numba parallel kernels
(depthwise, BatchNorm), a few hundred times per step. Each runtime keeps its own worker threads, and after a
parallel region those workers *spin* waiting for more work: NumPy's OpenBLAS workers spin for about 0.1 s of
CPU after every product (measured here), and an OpenMP pool spins too. On a 2-core machine a Numba kernel that
starts right after a product then shares its cores with spinning threads. Measured on this project's 2-core
machine, a train step at batch 32, 32x32, width 1.0 took 6-9 s with Numba's default layer (OpenMP) and NumPy's
default OpenBLAS pool, against about 0.06-0.1 s tamed (see ``benchmarks/README.md``).

What :func:`configure` does (each step skipped when the user already decided)
---------------------------------------------------------------------------------
1. Numba threading layer ``"workqueue"``: its workers sleep on a condition variable instead of spinning, so
   they leave the cores to BLAS as soon as a kernel ends. Skipped when ``NUMBA_THREADING_LAYER`` is set or
   Numba's pool already started. The workqueue layer must not be entered by two Python threads at once, so
   every parallel kernel launch of this package holds a lock (:data:`numpymnv2.kernels._launch.LAUNCH_LOCK`).
2. NumPy's BLAS is left with its own thread count. Limiting OpenBLAS to one thread keeps its workers from
   spinning while a Numba kernel runs, and that pays on a machine whose cores are busy with other work, but it
   halves the pointwise convolutions, where nearly all the multiply-adds are. Measured on the 2-core machine
   (train step, batch 32, 32x32, width 1.0, ``numpymnv2 bench --suite model/extra``): quiet, 28 ms with two
   BLAS threads against 38 ms with one; with another process busy on one core, 64 ms against 33 ms. Quiet
   machines are the common case, so the default favours them; ``NUMPYMNV2_BLAS_THREADS=1`` (any count) makes
   this module limit OpenBLAS through ``threadpoolctl`` for the process, which suits a loaded machine.

``NUMPYMNV2_THREADING=omp`` (opt-in, for a machine whose cores are free)
-----------------------------------------------------------------------
Numba's OpenMP layer instead, with every BLAS library of the process on one thread and the matrix products split
over Numba's pool by :mod:`numpymnv2.kernels.gemm` (one pool of threads for the whole step, so no BLAS worker
spins beside a Numba kernel). OpenMP's workers spin between parallel regions, so a kernel starts in about
0.004 ms instead of the workqueue layer's 0.07-0.15 ms, and kernels from 2^16 elements of work run in parallel
(:data:`numpymnv2.kernels._launch.PARALLEL_MIN_WORK`). Measured on the 2-core machine, train steps alternating
with the default (median of rounds): batch 16, 96x96, width 0.5: 59 ms against 101 ms; batch 64, 32x32, width
0.35: 26 against 46 ms; batch 8, 224x224: 344 against 449 ms; batch 32, 32x32, width 1.0: 51 against 56 ms.
The spinning is also why it is not the default: with another process busy on one core the same steps took
2.7-4x their quiet time (138 ms against 51 at batch 32, 32x32; 237 against 59 at 96x96), where the default
slows down 2x; a spin count short enough to keep that under control (``GOMP_SPINCOUNT=3000``) also gave back
the quiet gain. It needs SciPy (``np.dot`` in a Numba kernel calls SciPy's BLAS; ``pip install scipy``),
threadpoolctl and the system's GNU OpenMP runtime (libgomp); without them the default applies and
:func:`info` says why. It sets NumPy's BLAS to one thread for the whole process, and GNU OpenMP does not
survive ``fork()``: use the ``spawn`` start method for subprocesses that run numpymnv2.

``NUMPYMNV2_THREADING=off`` in the environment turns all of this off (the benchmarks use it to measure the
effect). :func:`info` reports what was decided.
"""
from __future__ import annotations

import importlib
import os

import numba

from numpymnv2.kernels import _contention

_decisions: dict = {}


def _numba_pool_started() -> bool:
    from numba.np.ufunc import parallel
    return bool(getattr(parallel, "_is_initialized", False))


def configure() -> dict:
    """Apply the thread-pool settings described in the module docstring once; return the decisions."""
    if _decisions:
        return _decisions
    mode = os.environ.get("NUMPYMNV2_THREADING", "").strip().lower()
    if mode in ("off", "0", "no", "false"):
        _decisions["numpymnv2_threading"] = "off (NUMPYMNV2_THREADING)"
        return _decisions
    if mode not in ("", "omp", "default"):
        raise ValueError(f"NUMPYMNV2_THREADING: expected omp, off or nothing, got {mode!r}")
    wanted = os.environ.get("NUMPYMNV2_BLAS_THREADS", "").strip()
    if wanted and (not wanted.isdigit() or int(wanted) < 1):
        raise ValueError(f"NUMPYMNV2_BLAS_THREADS: expected a positive integer, got {wanted!r}")
    missing = _omp_missing() if mode == "omp" else None
    if mode == "omp" and missing:
        _decisions["numpymnv2_threading"] = f"default: NUMPYMNV2_THREADING=omp needs {missing}"
    if os.environ.get("NUMBA_THREADING_LAYER"):
        _decisions["numba_threading_layer"] = f"{os.environ['NUMBA_THREADING_LAYER']} (NUMBA_THREADING_LAYER)"
    elif _numba_pool_started():
        _decisions["numba_threading_layer"] = "unchanged (Numba's pool was already running)"
    else:
        layer = "omp" if mode == "omp" and not missing else "workqueue"
        numba.config.THREADING_LAYER = layer
        _decisions["numba_threading_layer"] = layer
    # only the OpenMP layer chosen here, not a user's NUMBA_THREADING_LAYER=omp, which keeps NumPy's BLAS as it is
    chosen_omp = _decisions["numba_threading_layer"] == "omp"
    if wanted or chosen_omp:
        _decisions["openblas_threads"] = _limit_blas(int(wanted) if wanted else 1, with_scipy=chosen_omp)
    else:
        _decisions["openblas_threads"] = "unchanged"
    # the products go to Numba's pool only where BLAS is on one thread (else two spinning pools would contend)
    _decisions["split_products"] = chosen_omp and _decisions["openblas_threads"] == 1
    if _decisions["split_products"]:
        # spinning workers: step aside while other work competes for the cores (see _contention)
        _decisions["contention_monitor"] = "on" if _contention.MONITOR.enable() else "off (no /proc/self/task)"
    return _decisions


def _omp_missing() -> str | None:
    """What ``NUMPYMNV2_THREADING=omp`` lacks here, or None: Numba's OpenMP layer (the system's libgomp), SciPy
    (whose BLAS ``np.dot`` calls inside a Numba kernel) and threadpoolctl."""
    for module, what in (("numba.np.ufunc.omppool", "Numba's OpenMP layer (GNU libgomp)"),
                         ("scipy.linalg.cython_blas", "SciPy (pip install scipy, or the [omp] extra)"),
                         ("threadpoolctl", "threadpoolctl (pip install threadpoolctl)")):
        try:
            importlib.import_module(module)
        except ImportError:
            return what
    return None


def _limit_blas(threads: int, with_scipy: bool):
    """Limit every OpenBLAS of the process to ``threads``; SciPy's is loaded first when ``with_scipy``."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return "unchanged (threadpoolctl not installed)"
    if with_scipy:
        importlib.import_module("scipy.linalg.cython_blas")      # so that the limit reaches SciPy's OpenBLAS
    openblas = ThreadpoolController().select(internal_api="openblas")
    if not openblas.lib_controllers:
        return "unchanged (no OpenBLAS loaded)"
    openblas.limit(limits=threads)
    return threads


def split_products() -> bool:
    """Whether ``NUMPYMNV2_THREADING=omp`` is in effect: Numba's OpenMP layer chosen here, every BLAS on one
    thread, and :mod:`numpymnv2.kernels.gemm` splitting the products over Numba's pool. Only then do small
    kernels run in parallel (:data:`numpymnv2.kernels._launch.PARALLEL_MIN_WORK`): beside BLAS threads that
    spin too (a user's ``NUMBA_THREADING_LAYER=omp``, or ``NUMPYMNV2_BLAS_THREADS`` above 1) they made a step
    several times slower."""
    return bool(_decisions.get("split_products"))


def info() -> dict:
    """The decisions of :func:`configure`, plus Numba's thread count and, once a kernel ran, its threading layer."""
    out = dict(_decisions)
    out["numba_num_threads"] = numba.get_num_threads()
    if _numba_pool_started():
        out["numba_threading_layer_running"] = numba.threading_layer()
    if _contention.MONITOR.enabled:
        out["contention"] = _contention.MONITOR.info()
    from numpymnv2.kernels import _launch          # (it imports this module)
    if _launch.LATER.enabled:
        out["parallel_copies_compiled_later"] = _launch.LATER.info()
    return out
