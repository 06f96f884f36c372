"""Memory for big arrays: keep freed blocks for the next training step instead of returning them to the kernel.

Why
---
A training step allocates its activations, caches and gradients afresh, and frees them by the next step. glibc's
``malloc`` serves a block larger than its mmap threshold (adaptive, at most 32 MB by default) with a fresh
``mmap`` and unmaps it on ``free``; the kernel then zero-fills every page of the next step's array again on first
touch. At batch 8 and 224x224 pixels the expanded activations of MobileNetV2's second block are 38.5 MB each, so
every step paid for that: measured on the 2-core machine (one thread, CPU time of a train step at batch 8,
224x224, ``benchmarks/profile_step.py --clock cpu``), 2,339 page faults per step and the BatchNorm forward at
125 ms, against 310 faults and 47 ms with the thresholds below, 510 ms against 457 ms for the whole step; peak
memory barely moves (747 MB against 764 MB over the baseline, the same blocks are reused every step).

What :func:`configure` does
---------------------------
With glibc, ``mallopt`` raises the mmap threshold and the trim threshold to :data:`THRESHOLD`: blocks up to that
size come from the heap and freed memory stays with the process for the next step. Any other C library is left
alone, and so is a process that sets ``NUMPYMNV2_MALLOC=off`` or glibc's own ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` variables (the user decided). :func:`info` reports what was decided.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

THRESHOLD = 1 << 30          # 1 GiB: more than any activation of the benchmarked batch sizes
_M_TRIM_THRESHOLD = -1       # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_decisions: dict = {}


def configure() -> dict:
    """Apply the allocator settings described in the module docstring once; return the decision."""
    if _decisions:
        return _decisions
    if os.environ.get("NUMPYMNV2_MALLOC", "").lower() in ("off", "0", "no", "false"):
        _decisions["malloc"] = "unchanged (NUMPYMNV2_MALLOC)"
    elif any(os.environ.get(v) for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        _decisions["malloc"] = "unchanged (glibc's MALLOC_*_THRESHOLD_ set)"
    else:
        _decisions["malloc"] = _set_glibc_thresholds()
    return _decisions


def _set_glibc_thresholds() -> str:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        gnu_get_libc_version = libc.gnu_get_libc_version       # glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return "unchanged (not glibc)"
    gnu_get_libc_version.restype = ctypes.c_char_p
    ok = mallopt(_M_MMAP_THRESHOLD, THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, THRESHOLD) == 1
    version = gnu_get_libc_version().decode()
    return f"glibc {version}: mmap and trim thresholds {THRESHOLD >> 20} MiB" if ok else \
        f"unchanged (glibc {version} refused the thresholds)"


def info() -> dict:
    """The decision of :func:`configure`."""
    return dict(_decisions)
