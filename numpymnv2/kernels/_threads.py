"""Thread pools of the fast backend, set once when :mod:`numpymnv2.kernels` is first imported.

Why
---
A training step alternates matrix products (the pointwise convolutions) with Numba parallel kernels (depthwise,
BatchNorm), a few hundred times per step. Each runtime keeps its own worker threads, and after a parallel region
those workers *spin* waiting for more work: OpenBLAS workers spin for about 0.1 s of CPU after every product
(measured here), and an OpenMP pool spins too. On a 2-core machine a kernel that starts while another pool
spins shares its cores with it. Measured on this project's 2-core machine, a train step at batch 32, 32x32,
width 1.0 took 6-9 s with Numba's OpenMP layer beside NumPy's OpenBLAS pool, both untamed, against 0.04-0.1 s.

The default: one pool for the whole step (``NUMPYMNV2_THREADING`` unset)
-------------------------------------------------------------------------
1. Numba's OpenMP layer. Its workers spin between kernels, so a kernel starts in about 0.004 ms (the workqueue
   layer: 0.07-0.15 ms) and kernels from 2^16 elements of work run in parallel
   (:data:`numpymnv2.kernels._launch.PARALLEL_MIN_WORK`).
2. Every product of the fast backend goes through :mod:`numpymnv2.kernels.gemm`: split over the same threads,
   each calling SciPy's BLAS (``np.dot`` inside a Numba kernel) on one thread. SciPy's own BLAS library is set
   to one thread for the process; **NumPy's BLAS is left alone** (where SciPy has no BLAS of its own and shares
   NumPy's, that one is set to one thread; :func:`info` names the libraries, ``blas_limited``).
3. While other work competes for the cores, kernels run on one thread (:mod:`numpymnv2.kernels._contention`):
   spinning workers beside a busy process had made steps 2.7-4x slower.
4. With an empty Numba cache, parallel copies compile in a background thread while the first steps run the
   serial ones (:class:`numpymnv2.kernels._launch.LaterCompiler`).
5. A child made by ``fork()`` runs every kernel serially (GNU OpenMP does not survive ``fork()``).

Measured on the 2-core machine, alternating processes, median of two rounds, against the workqueue layer that
was the default before (float32): train step at batch 16, 96x96, width 0.5: 55 ms against 77; batch 64, 32x32,
width 0.35: 26 against 33; batch 8, 224x224: 245 against 341; batch 32, 32x32, width 1.0: 40 against 41;
``model.fuse()`` at batch 1, 224x224: 6.2 ms against 8.1. See ``benchmarks/README.md``.

It needs SciPy, threadpoolctl (both installed with numpymnv2) and Numba's OpenMP layer (the system's GNU
libgomp); without them the workqueue layer below applies and :func:`info` says why.

``NUMPYMNV2_THREADING=workqueue``
---------------------------------
Numba's workqueue layer, whose workers sleep on a condition variable instead of spinning; the products are
NumPy's ``matmul`` on NumPy's BLAS threads, exactly as in the reference; small kernels run serially. The
workqueue layer must not be entered by two Python threads at once, so every parallel launch of this package
holds a lock (:data:`numpymnv2.kernels._launch.LAUNCH_LOCK`).

Other settings
--------------
- ``NUMBA_THREADING_LAYER`` set by the user, or Numba's pool already started: the layer is left as it is, and
  the products are not split.
- ``NUMPYMNV2_BLAS_THREADS=n`` limits every BLAS of the process to ``n`` threads (through threadpoolctl); the
  products are split only for ``n = 1``.
- ``NUMPYMNV2_THREADING=off`` leaves every thread pool alone (the benchmarks use it to measure the effect).

:func:`info` reports what was decided.
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
    if mode not in ("", "auto", "default", "omp", "workqueue"):
        raise ValueError(f"NUMPYMNV2_THREADING: expected omp, workqueue, off or nothing, got {mode!r}")
    wanted = os.environ.get("NUMPYMNV2_BLAS_THREADS", "").strip()
    if wanted and (not wanted.isdigit() or int(wanted) < 1):
        raise ValueError(f"NUMPYMNV2_BLAS_THREADS: expected a positive integer, got {wanted!r}")
    want_omp = mode != "workqueue"
    missing = _omp_missing() if want_omp else None
    if missing:
        _decisions["numpymnv2_threading"] = f"workqueue: the OpenMP mode needs {missing}"
    if os.environ.get("NUMBA_THREADING_LAYER"):
        _decisions["numba_threading_layer"] = f"{os.environ['NUMBA_THREADING_LAYER']} (NUMBA_THREADING_LAYER)"
    elif _numba_pool_started():
        _decisions["numba_threading_layer"] = "unchanged (Numba's pool was already running)"
    else:
        layer = "omp" if want_omp and not missing else "workqueue"
        numba.config.THREADING_LAYER = layer
        _decisions["numba_threading_layer"] = layer
    # only the OpenMP layer chosen here, not a user's NUMBA_THREADING_LAYER=omp, which keeps NumPy's BLAS as it is
    chosen_omp = _decisions["numba_threading_layer"] == "omp"
    if wanted or chosen_omp:
        _decisions["openblas_threads"] = _limit_blas(int(wanted) if wanted else 1,
                                                     scipy_only=chosen_omp and not wanted)
    else:
        _decisions["openblas_threads"] = "unchanged"
    # the products go to Numba's pool only where BLAS is on one thread (else two spinning pools would contend)
    _decisions["split_products"] = chosen_omp and _decisions["openblas_threads"] == 1
    if _decisions["split_products"]:
        # spinning workers: step aside while other work competes for the cores (see _contention)
        _decisions["contention_monitor"] = "on" if _contention.MONITOR.enable() else "off (no /proc/self/task)"
    return _decisions


def _omp_missing() -> str | None:
    """What the OpenMP mode lacks here, or None: Numba's OpenMP layer (the system's libgomp), SciPy
    (whose BLAS ``np.dot`` calls inside a Numba kernel) and threadpoolctl."""
    for module, what in (("numba.np.ufunc.omppool", "Numba's OpenMP layer (GNU libgomp)"),
                         ("scipy.linalg.cython_blas", "SciPy (pip install scipy)"),
                         ("threadpoolctl", "threadpoolctl (pip install threadpoolctl)")):
        try:
            importlib.import_module(module)
        except ImportError:
            return what
    return None


def _limit_blas(threads: int, scipy_only: bool):
    """Limit the BLAS libraries of the process to ``threads``: only SciPy's own (loaded first) when
    ``scipy_only``, unless SciPy has none of its own and shares NumPy's."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return "unchanged (threadpoolctl not installed)"
    if scipy_only:
        importlib.import_module("scipy.linalg.cython_blas")      # so that its BLAS is loaded
    controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    if scipy_only:
        controllers = [c for c in controllers if _belongs_to_scipy(c.filepath)] or controllers
    if not controllers:
        return "unchanged (no BLAS loaded)"
    for controller in controllers:
        controller.set_num_threads(threads)
    _decisions["blas_limited"] = sorted(os.path.basename(c.filepath) for c in controllers)
    return threads


def _belongs_to_scipy(filepath: str) -> bool:
    """Whether a loaded library is SciPy's own (a wheel's ``scipy.libs`` folder, or inside the package)."""
    import scipy
    path = os.path.realpath(filepath)
    package = os.path.realpath(os.path.dirname(scipy.__file__))
    return path.startswith(package + os.sep) or path.startswith(package + ".libs" + os.sep)


def split_products() -> bool:
    """Whether the OpenMP mode is in effect: Numba's OpenMP layer chosen here, SciPy's BLAS on one
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
