"""Write a file so that readers see either the old version or the whole new one, never half of it.

The new bytes go to a temporary file in the same folder (so both are on the same file system), which is
flushed and ``fsync``-ed before ``os.replace`` swaps it in; ``os.replace`` is atomic on POSIX and Windows.
If anything fails before the swap, including a ``KeyboardInterrupt``, the temporary file is deleted and the
previous file is untouched. Every file numpymnv2 writes (checkpoints, weights, metrics, figures, reports) goes
through here.
"""
from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then move it onto ``path``.

    Parameters
    ----------
    path : str or Path
        The destination; its folder is created if needed.
    write : callable
        Receives the open temporary file and writes the whole content.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the permissions an ordinary open() would
        with contextlib.suppress(OSError, AttributeError):
            os.fchmod(fd, _ordinary_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)
    return path


def remove_temporary_files(folder, names) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` for the files ``names`` when the
    process was killed mid-save (``.<name>.<random>.tmp``); return what was deleted.

    Only call this while no other process can be writing those files (e.g. holding the run folder's lock).
    """
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{glob.escape(name)}.*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def atomic_write_text(path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 string."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_figure(path, figure, dpi: int = 100) -> Path:
    """:func:`atomic_write` of a matplotlib ``figure`` as a PNG at ``dpi``."""
    return atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=dpi))


def _ordinary_mode() -> int:
    """``0o666`` less the process's umask: the mode ``open(path, "w")`` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
