"""Which implementation of the operations the network runs on.

``"reference"`` runs the readable NumPy code in :mod:`numpymnv2.functional`; ``"fast"`` runs the Numba kernels
in :mod:`numpymnv2.kernels` wherever one exists (same inputs, same outputs, same caches). Layers look the
implementation up at call time through :func:`ops`, so switching takes effect on the next forward pass.
A backward pass must run on the backend its forward ran on; layers remember it in their cache.

>>> import numpymnv2 as mn
>>> mn.set_backend("reference")
>>> with mn.use_backend("fast"):
...     pass
"""
from __future__ import annotations

import contextlib
import importlib
import threading

BACKENDS = ("reference", "fast")
_state = threading.local()
_default = ["fast"]


def _module_name(name: str) -> str:
    return "numpymnv2.functional" if name == "reference" else "numpymnv2.kernels"


def get_backend() -> str:
    """Return the name of the active backend (``"reference"`` or ``"fast"``)."""
    return getattr(_state, "name", None) or _default[0]


def set_backend(name: str) -> None:
    """Make ``name`` (``"reference"`` or ``"fast"``) the backend for every thread that has not chosen one."""
    if name not in BACKENDS:
        raise ValueError(f"set_backend: expected one of {BACKENDS}, got {name!r}")
    _default[0] = name
    _state.name = None


@contextlib.contextmanager
def use_backend(name: str):
    """Run the body of a ``with`` block on backend ``name``, then restore the previous one."""
    if name not in BACKENDS:
        raise ValueError(f"use_backend: expected one of {BACKENDS}, got {name!r}")
    previous = getattr(_state, "name", None)
    _state.name = name
    try:
        yield
    finally:
        _state.name = previous


def ops(name: str | None = None):
    """Return the module holding the active backend's operations (``*_forward`` / ``*_backward`` pairs)."""
    return importlib.import_module(_module_name(name or get_backend()))
