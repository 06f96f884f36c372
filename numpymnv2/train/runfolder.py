"""The output folder of a training run: one run at a time, writable, with room for its checkpoints.

Lock
----
A run holds an exclusive ``fcntl.flock`` on ``<out>/.numpymnv2.lock`` while it works. The kernel drops the lock
when the process ends, however it ends (``kill -9`` included), so a lock can never outlive its run. The file
also holds who took it (pid, host, start time, command) for the message a second run gets::

    runs/digits is in use by another training run: pid 4242 on node1, started 2025-01-01 12:00:00
    (numpymnv2 train --epochs 30); wait for it to end or stop it, or choose another --out

A run that ends normally deletes the file. A file found with nobody holding its lock is what a killed run left:
the new run takes it over and says so. Taking the lock is re-entrant within a process (the ``train`` command
takes it before it looks at the folder, and :meth:`~numpymnv2.train.trainer.Trainer.fit` takes it again).
On a file system without ``flock`` (some network mounts) the run goes ahead and says that concurrent runs are
not detected there.

Checks before training
----------------------
:func:`check_output_folder` creates the folder, proves it can create a file there and that its file system has
room for the checkpoints it will write (``last.npz``, ``best.npz`` and the temporary copy a save writes before it
replaces the old file): the run stops before its first step rather than after its first epoch.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:     # Windows: no flock
    fcntl = None

LOCK_NAME = ".numpymnv2.lock"

_held: dict[str, list] = {}      # resolved folder -> [fd, depth]
_held_guard = threading.Lock()


class RunFolderLocked(RuntimeError):
    """Another process is training into the same output folder."""

    exit_status = 2     # the command cannot run as asked (see numpymnv2.cli)


@contextlib.contextmanager
def lock_run_folder(folder, log: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of the run folder ``folder`` (created if needed) for the ``with`` block.

    Raises
    ------
    RunFolderLocked
        Another process holds it; the message names that process.
    FileExistsError, NotADirectoryError, PermissionError
        ``folder`` (or a parent) is a file, or cannot be written.
    """
    folder = Path(folder).expanduser()
    created = _missing_ancestors(folder)
    folder = make_folder(folder)
    key = str(folder.resolve())
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield folder
        finally:
            with _held_guard:
                entry[1] -= 1
        return
    try:
        fd = _acquire(folder, log or _print)
    except BaseException:
        _remove_if_empty(created)
        raise
    with _held_guard:
        _held[key] = [fd, 1]
    try:
        yield folder
    finally:
        with _held_guard:
            del _held[key]
        _release(folder, fd)
        _remove_if_empty(created)      # a run refused before it wrote anything leaves no empty folder behind


def _missing_ancestors(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            break
        missing.append(p)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for p in folders:
        try:
            p.rmdir()
        except OSError:     # not empty (the run wrote files), or already gone
            return


def make_folder(folder) -> Path:
    """``mkdir -p folder`` with errors that say which path is in the way."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, f"{folder} exists and is not a folder; choose another output "
                              f"folder") from None
    except NotADirectoryError:
        raise NotADirectoryError(errno.ENOTDIR, f"cannot create the output folder {folder}: a parent of it is a "
                                 f"file") from None
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot create the output folder {folder}: {exc.strerror}") from None
    if not folder.is_dir():
        raise FileExistsError(errno.EEXIST, f"{folder} exists and is not a folder; choose another output folder")
    return folder


def _acquire(folder: Path, log: Callable[[str], None]) -> int | None:
    path = folder / LOCK_NAME
    if fcntl is None:
        log(f"note: file locks are not available on this platform; a second run into {folder} is not detected")
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError as exc:
            raise PermissionError(errno.EACCES, f"cannot write to the output folder {folder} "
                                  f"({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderLocked(f"{folder} is in use by another training run: {_describe(holder)}; wait for "
                                  f"it to end or stop it, or choose another --out") from None
        except OSError as exc:      # ENOLCK, EOPNOTSUPP: a file system without flock
            os.close(fd)
            log(f"note: {folder} does not support file locks ({exc.strerror}); a second run into it is not "
                f"detected")
            return None
        # The holder we waited for may have deleted the file on release: then our lock is on a file nobody
        # else will open, and the path must be locked afresh.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _read_holder(fd)
    if previous is not None:
        log(f"note: taking over the lock of {folder} from a run that ended without releasing it "
            f"({_describe(previous)})")
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": command[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
    return fd


def _release(folder: Path, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(folder / LOCK_NAME)      # while still locked: nobody can take a lock on it in between
    os.close(fd)                           # closing drops the flock


def _read_holder(fd: int) -> dict | None:
    """The record in the lock file, None when it is empty (a run taking it this very moment writes it next)."""
    try:
        data = os.pread(fd, 4096, 0)
    except OSError:
        return None
    if not data.strip():
        return None
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"unreadable": True}
    return record if isinstance(record, dict) else {"unreadable": True}


def _describe(holder: dict | None) -> str:
    if not holder or holder.get("unreadable"):
        return "a process whose details are not recorded"
    text = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
    return text + (f" ({holder['command']})" if holder.get("command") else "")


def _print(message: str) -> None:
    print(message, file=sys.stderr)


def check_output_folder(folder, need_bytes: int) -> None:
    """Make sure a run can write ``folder``: create it, create and delete a file in it, and find ``need_bytes``
    free on its file system.

    Raises
    ------
    PermissionError, FileExistsError, NotADirectoryError
        The folder cannot be created or written.
    OSError
        With ``errno.ENOSPC``: not enough free space; the message says how much is needed and free.
    """
    folder = make_folder(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=folder)
    except PermissionError as exc:
        raise PermissionError(errno.EACCES, f"cannot write to the output folder {folder} ({exc.strerror})") \
            from None
    os.close(fd)
    os.unlink(probe)
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise OSError(errno.ENOSPC, f"not enough free space for the run's checkpoints in {folder}: "
                      f"{_size(free)} free, {_size(need_bytes)} needed (last.npz, best.npz and the temporary "
                      f"copy a save writes before it replaces the old file); free some space or choose another "
                      f"--out")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
