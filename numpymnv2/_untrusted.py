"""Reading files that may be damaged or hostile, with every claimed size checked before memory is spent on it.

A file's own header says how big its contents are: an ``.npy`` member of an ``.npz`` archive states its shape
and dtype, a zip archive states each member's uncompressed size, an IDX file states its dimensions. A hostile
file can claim anything (an entry of 2^40 elements in a 1 kB archive, 6 MB of zip that inflates to 3 GB), so
the readers of this package compare those claims with what the format and the model allow, and with the
memory the machine has, *before* allocating, and then read no more than was claimed:

* :func:`load_npz` reads ``.npz`` archives (checkpoints, weights) member by member: headers first, every claim
  checked against a byte budget, then exactly the claimed bytes, CRC-checked. No pickle, ever.
* :func:`zip_claimed_bytes` and :func:`regular_file_size` give the sizes to judge other files by, before a
  library (``torch.load``, ``np.fromfile``) reads them.
* :func:`byte_budget` is the default budget: half the available memory, at most :data:`MAX_FILE_BYTES`.
* :func:`check_state_values` rejects state arrays no trained model can hold (NaN, infinity, a negative
  BatchNorm variance).
"""
from __future__ import annotations

import math
import os
import stat
import tokenize
import zipfile
import zlib
from typing import Callable

import numpy as np

from numpymnv2._memory import available_memory, format_bytes

MAX_FILE_BYTES = 8 * 1024 ** 3       # no checkpoint, weights or dataset file of ours decodes to more than this
MAX_NPZ_MEMBERS = 100_000            # a width-1.4 checkpoint has about 700
_MAX_NPY_HEADER = 10_000             # NumPy's own default limit for .npy headers


class UntrustedFileError(ValueError):
    """A file is damaged, hostile, or claims more than may be read (the message names the file)."""


def byte_budget(limit: int | None = None) -> int:
    """How many bytes a reader may allocate: ``limit`` (default :data:`MAX_FILE_BYTES`), and never more than half
    the memory available now."""
    budget = MAX_FILE_BYTES if limit is None else int(limit)
    free = available_memory()
    return budget if free is None else min(budget, free // 2)


def load_npz(path, where: str, *, max_bytes: int | None = None,
             select: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    """Read the arrays of an ``.npz`` archive (as written by ``np.savez``) without trusting it.

    Parameters
    ----------
    path : str or Path
    where : str
        Starts every error message (e.g. ``"runs/a/last.npz"`` or ``"load_weights: w.npz"``).
    max_bytes : int, optional
        Budget for the arrays read together (default :func:`byte_budget`).
    select : callable, optional
        Read only the entries whose name (without ``.npy``) it accepts; the others are not decompressed.

    Returns
    -------
    dict of str to ndarray
        In archive order.

    Raises
    ------
    UntrustedFileError
        Not a zip archive, a member that is not an ``.npy`` array, an object (pickled) array, a header that
        disagrees with the member's size, claimed sizes beyond ``max_bytes``, a CRC error, a truncated file.
    """
    budget = byte_budget() if max_bytes is None else int(max_bytes)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise UntrustedFileError(f"{where}: not a readable .npz archive ({_reason(exc)})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_NPZ_MEMBERS:
            raise UntrustedFileError(f"{where}: the archive lists {len(infos):,} entries, more than the "
                                     f"{MAX_NPZ_MEMBERS:,} any file of ours has")
        chosen, seen = [], set()
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise UntrustedFileError(f"{where}: the archive holds {info.filename!r}, which is not an .npy "
                                         f"array (an .npz written by numpy.savez holds only those)")
            name = info.filename[:-4]
            if name in seen:
                raise UntrustedFileError(f"{where}: the archive holds the entry {name!r} twice")
            seen.add(name)
            if select is None or select(name):
                chosen.append((name, info))
        claimed = sum(info.file_size for _, info in chosen)
        if claimed > budget:
            raise UntrustedFileError(f"{where}: its entries claim {format_bytes(claimed)} uncompressed, more than "
                                     f"the {format_bytes(budget)} this file may take (a decompression bomb, or not "
                                     f"the file you meant)")
        arrays = {}
        for name, info in chosen:
            arrays[name] = _read_member(zf, info, f"{where}: entry {name!r}")
    return arrays


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=_MAX_NPY_HEADER)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=_MAX_NPY_HEADER)
            else:
                raise UntrustedFileError(f"{where}: .npy format version {version} is not supported")
            if dtype.hasobject:
                raise UntrustedFileError(f"{where}: holds Python objects (dtype {dtype}), which can only be read "
                                         f"by unpickling; refused")
            count = math.prod(shape)
            nbytes = count * dtype.itemsize
            header = f.tell()
            if header + nbytes != info.file_size:
                held = format_bytes(max(info.file_size - header, 0))
                raise UntrustedFileError(f"{where}: its header claims shape {shape} of {dtype} "
                                         f"({format_bytes(nbytes)}), but the entry holds {held} of data")
            flat = np.empty(count, dtype=dtype)
            view = memoryview(flat).cast("B") if nbytes else memoryview(b"")
            done = 0
            while done < nbytes:
                n = f.readinto(view[done:])
                if not n:
                    raise UntrustedFileError(f"{where}: truncated ({done} of {nbytes} bytes)")
                done += n
            if f.read(1):        # reading to the end also makes zipfile check the CRC
                raise UntrustedFileError(f"{where}: holds more bytes than its header announces")
    except UntrustedFileError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, NotImplementedError,
            RuntimeError, SyntaxError, tokenize.TokenError) as exc:
        # RuntimeError: an encrypted member; SyntaxError, TokenError: a damaged .npy header, which NumPy parses
        # as a Python literal
        raise UntrustedFileError(f"{where}: cannot be read ({_reason(exc)})") from None
    if fortran:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def npz_names(path) -> list[str]:
    """The entry names of an ``.npz`` archive (without ``.npy``), from its central directory only."""
    with zipfile.ZipFile(path) as zf:
        return [name[:-4] if name.endswith(".npy") else name for name in zf.namelist()]


def zip_claimed_bytes(path) -> int:
    """The total uncompressed size the members of a zip archive claim (its central directory only)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise UntrustedFileError(f"{path}: not a readable zip archive ({_reason(exc)})") from None


def regular_file_size(path, where: str) -> int:
    """The size of ``path``, which must be a regular file (not a device such as /dev/zero, a pipe or a folder)."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{where}: {path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedFileError(f"{where}: {path} is not a regular file (a device or a pipe?)")
    return st.st_size


def check_state_values(state: dict, where: str) -> None:
    """Reject model state no training can produce: NaN or infinity anywhere, a negative BatchNorm
    ``running_var`` or ``num_batches_tracked``.

    Raises ``ValueError`` listing the offending entries.
    """
    bad = nonfinite_names(state)
    if bad:
        raise ValueError(f"{where}: {_listing(bad)} hold{'s' if len(bad) == 1 else ''} NaN or infinite values, "
                         f"as a run that diverged leaves them; use an earlier checkpoint")
    negative = [k for k, v in state.items()
                if (k.endswith("running_var") or k.endswith("num_batches_tracked"))
                and isinstance(v, np.ndarray) and v.dtype.kind in "fi" and v.size and v.min() < 0]
    if negative:
        raise ValueError(f"{where}: {_listing(negative)} hold{'s' if len(negative) == 1 else ''} negative "
                         f"values, which a BatchNorm variance or batch count cannot be")


def nonfinite_names(arrays: dict) -> list[str]:
    """The names of the floating-point arrays that hold NaN or infinity."""
    return [k for k, v in arrays.items()
            if isinstance(v, np.ndarray) and v.dtype.kind in "fc" and not np.isfinite(v).all()]


def _listing(names: list[str], show: int = 4) -> str:
    text = ", ".join(names[:show])
    return text + (f" and {len(names) - show} more" if len(names) > show else "")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["UntrustedFileError", "load_npz", "byte_budget", "check_state_values",
           "nonfinite_names", "npz_names", "regular_file_size", "zip_claimed_bytes", "MAX_FILE_BYTES"]
