"""Which backend the network runs on: ``"reference"`` (readable NumPy) or ``"fast"`` (Numba kernels).

This module only holds the choice; :mod:`numpymnv2.ops` is the table that says, for every operation, which
function each backend runs. Layers ask the table at call time (``DEPTHWISE_CONV2D.active()``), so switching
takes effect on the next forward pass, and keep the pair they used so their backward runs on the same backend.

>>> import numpymnv2 as mn
>>> mn.set_backend("reference")
>>> with mn.use_backend("fast"):
...     pass
"""
from __future__ import annotations

import contextlib
import threading

BACKENDS = ("reference", "fast")
_state = threading.local()
_default = ["fast"]


def check_backend(name, where: str) -> str:
    """Return ``name`` if it is one of :data:`BACKENDS`, else raise ``ValueError`` naming ``where``."""
    if name not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return name


def get_backend() -> str:
    """Return the name of the active backend (``"reference"`` or ``"fast"``)."""
    return getattr(_state, "name", None) or _default[0]


def set_backend(name: str) -> None:
    """Make ``name`` (``"reference"`` or ``"fast"``) the backend for every thread that has not chosen one."""
    _default[0] = check_backend(name, "set_backend")
    _state.name = None


@contextlib.contextmanager
def use_backend(name: str):
    """Run the body of a ``with`` block on backend ``name`` (in this thread), then restore the previous one."""
    check_backend(name, "use_backend")
    previous = getattr(_state, "name", None)
    _state.name = name
    try:
        yield
    finally:
        _state.name = previous
