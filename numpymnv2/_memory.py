"""How much memory there is, and refusing work that needs more before it starts.

Work whose size the user chooses (the batch, the width of the network, a file's claimed contents) is compared
with the memory available *before* it is allocated: a clear message then replaces a ``MemoryError`` after
seconds of work or, with the operating system's overcommit, a machine that swaps.
"""
from __future__ import annotations

import os


def available_memory() -> int | None:
    """Bytes of memory the operating system can give without swapping (Linux ``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


class InsufficientMemoryError(MemoryError):
    """The work asked for would need more memory than the machine has; raised before any of it is done."""

    exit_status = 2     # refused before work: the options ask too much (see numpymnv2.cli)


def check_memory(need_bytes: int, what: str, advice: str) -> None:
    """Raise :class:`InsufficientMemoryError` before any work if ``need_bytes`` is more than the memory available.

    ``what`` says what needs it ("a training step of 64 images of 224x224"), ``advice`` what to change.
    Does nothing where the available memory cannot be read.
    """
    free = available_memory()
    if free is not None and need_bytes > free:
        raise InsufficientMemoryError(f"{what} needs about {format_bytes(need_bytes)} of memory, but only "
                                      f"{format_bytes(free)} is available; {advice}")


def format_bytes(n: float) -> str:
    """``12.3 GB``, ``4.5 MB``, ... (powers of 1000)."""
    if n >= 1e21:
        return f"{n:.1e} bytes"
    for unit, scale in (("EB", 1e18), ("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"

