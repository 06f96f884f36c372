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

``NUMPYMNV2_THREADING=off`` in the environment turns all of this off (the benchmarks use it to measure the
effect). :func:`info` reports what was decided.
"""
from __future__ import annotations

import os

import numba

_decisions: dict = {}


def _numba_pool_started() -> bool:
    from numba.np.ufunc import parallel
    return bool(getattr(parallel, "_is_initialized", False))


def configure() -> dict:
    """Apply the thread-pool settings described in the module docstring once; return the decisions."""
    if _decisions:
        return _decisions
    if os.environ.get("NUMPYMNV2_THREADING", "").lower() in ("off", "0", "no", "false"):
        _decisions["numpymnv2_threading"] = "off (NUMPYMNV2_THREADING)"
        return _decisions
    if os.environ.get("NUMBA_THREADING_LAYER"):
        _decisions["numba_threading_layer"] = f"{os.environ['NUMBA_THREADING_LAYER']} (NUMBA_THREADING_LAYER)"
    elif _numba_pool_started():
        _decisions["numba_threading_layer"] = "unchanged (Numba's pool was already running)"
    else:
        numba.config.THREADING_LAYER = "workqueue"
        _decisions["numba_threading_layer"] = "workqueue"
    wanted = os.environ.get("NUMPYMNV2_BLAS_THREADS", "").strip()
    if not wanted:
        _decisions["openblas_threads"] = "unchanged"
    else:
        if not wanted.isdigit() or int(wanted) < 1:
            raise ValueError(f"NUMPYMNV2_BLAS_THREADS: expected a positive integer, got {wanted!r}")
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _decisions["openblas_threads"] = "unchanged (threadpoolctl not installed)"
        else:
            openblas = ThreadpoolController().select(internal_api="openblas")
            if openblas.lib_controllers:
                openblas.limit(limits=int(wanted))
                _decisions["openblas_threads"] = int(wanted)
            else:
                _decisions["openblas_threads"] = "unchanged (no OpenBLAS loaded)"
    return _decisions


def info() -> dict:
    """The decisions of :func:`configure`, plus Numba's thread count and, once a kernel ran, its threading layer."""
    out = dict(_decisions)
    out["numba_num_threads"] = numba.get_num_threads()
    if _numba_pool_started():
        out["numba_threading_layer_running"] = numba.threading_layer()
    return out
