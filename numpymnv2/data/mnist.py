"""MNIST and Fashion-MNIST from their IDX files.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a header and a dense big-endian array:

======  =========================================================================
bytes   meaning
======  =========================================================================
0-1     zero
2       element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
3       number of dimensions d
4..     d sizes, each a big-endian uint32
then    prod(sizes) elements, row-major
======  =========================================================================

So the "magic number" (bytes 0-3 read as one big-endian int) is 2051 = 0x00000803 for an image file
(uint8, 3 dimensions: N, 28, 28) and 2049 = 0x00000801 for a label file (uint8, 1 dimension: N). Both data
sets use the same four file names; each may also be gzip-compressed (``.gz``), as they are distributed.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from numpymnv2._memory import format_bytes
from numpymnv2._untrusted import byte_budget
from numpymnv2.data.dataset import Dataset, check_split, find_file, resolve_data_dir

IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]

_FILE_STEMS = {"train": ("train-images", "train-labels"), "test": ("t10k-images", "t10k-labels")}


def _open_idx(path: Path):
    """The file, or its decompressed stream when the name ends in ``.gz``."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_exactly(f, n: int) -> bytearray:
    """Up to ``n`` bytes (fewer only at the end of the stream). The buffer grows with what is really read, so a
    header announcing more than the file holds costs nothing."""
    buf = bytearray()
    while len(buf) < n:
        piece = f.read(min(n - len(buf), 1 << 24))
        if not piece:
            break
        buf += piece
    return buf


def read_idx(path, expected_magic: int | None = None, max_bytes: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) into an array in native byte order.

    The header is read first and the data size it announces is checked (against the file size for a raw
    file, against ``max_bytes``) before any of the data is read; a ``.gz`` file is decompressed as a stream that
    stops at the announced size, so a small archive that inflates to gigabytes is refused, not inflated.

    Parameters
    ----------
    path : str or Path
    expected_magic : int, optional
        Reject any other magic number, e.g. ``IMAGES_MAGIC`` (2051) or ``LABELS_MAGIC`` (2049).
    max_bytes : int, optional
        The most data a header may announce (default: half the available memory, at most 8 GB).

    Raises
    ------
    ValueError
        Wrong or unknown magic number, a header or body shorter than the header announces, trailing bytes, an
        announced size beyond ``max_bytes``, or a damaged gzip stream.
    """
    path = Path(path)
    budget = byte_budget(max_bytes)
    try:
        with _open_idx(path) as f:
            head = _read_exactly(f, 4)
            if len(head) < 4:
                raise ValueError(f"{path}: truncated IDX file: expected at least a 4-byte header, got "
                                 f"{len(head)} bytes")
            magic = int.from_bytes(head, "big")
            if expected_magic is not None and magic != expected_magic:
                raise ValueError(f"{path}: wrong magic number: expected {expected_magic} (0x{expected_magic:08X}), "
                                 f"got {magic} (0x{magic:08X}); is this the right file (images vs labels)?")
            zero, type_code, ndim = head[0:2], head[2], head[3]
            if zero != b"\x00\x00" or type_code not in IDX_TYPES or ndim == 0:
                raise ValueError(f"{path}: not an IDX file: magic number 0x{magic:08X} does not start with two "
                                 f"zero bytes, a known element type and a dimension count")
            header = 4 + 4 * ndim
            sizes = _read_exactly(f, 4 * ndim)
            if len(sizes) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header: expected {header} bytes for {ndim} dimensions, "
                                 f"got {4 + len(sizes)}")
            shape = tuple(int.from_bytes(sizes[4 * i: 4 * i + 4], "big") for i in range(ndim))
            dtype = IDX_TYPES[type_code]
            nbytes = math.prod(shape) * dtype.itemsize
            expected = header + nbytes
            if path.suffix != ".gz":
                actual = os.fstat(f.fileno()).st_size
                if actual != expected:
                    what = "truncated IDX file" if actual < expected else "IDX file has trailing bytes"
                    raise ValueError(f"{path}: {what}: the header announces shape {shape} of {dtype.name}, so "
                                     f"expected {expected} bytes, got {actual}")
            if nbytes > budget:
                raise ValueError(f"{path}: the header announces shape {shape} of {dtype.name} "
                                 f"({format_bytes(nbytes)}), more than the {format_bytes(budget)} a file may take")
            data = _read_exactly(f, nbytes)
            trailing = f.read(1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: not a complete gzip file ({exc})") from exc
    except OSError as exc:
        if path.suffix == ".gz" and not isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise ValueError(f"{path}: not a complete gzip file ({exc})") from exc
        raise
    if len(data) < nbytes or trailing:
        got = header + len(data) + len(trailing)
        what = "truncated IDX file" if len(data) < nbytes else "IDX file has trailing bytes"
        raise ValueError(f"{path}: {what}: the header announces shape {shape} of {dtype.name}, so expected "
                         f"{expected} bytes, got {got}{' or more' if trailing else ''}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)     # writable: it views a bytearray
    return array.astype(dtype.newbyteorder("="), copy=False)    # native byte order (no copy for bytes)


def _load_idx_pair(data_dir, split: str, dataset: str, subfolder: str, classes: list[str]) -> Dataset:
    where = f"load_dataset({dataset!r})"
    check_split(split, where)
    root = resolve_data_dir(data_dir)
    folders = [root, root / subfolder / "raw", root / subfolder]
    how = (f"Download the four IDX files with numpymnv2.data.download({dataset!r}, {str(root)!r}), "
           f"or copy them into one of those folders.")

    def locate(stem: str, idx: str) -> Path:
        names = [f"{stem}-{idx}-ubyte", f"{stem}-{idx}-ubyte.gz", f"{stem}.{idx}-ubyte", f"{stem}.{idx}-ubyte.gz"]
        return find_file(names, folders, dataset, how)

    images_stem, labels_stem = _FILE_STEMS[split]
    images_path, labels_path = locate(images_stem, "idx3"), locate(labels_stem, "idx1")
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{dataset}: {images_path.name} holds {images.shape[0]} images but {labels_path.name} "
                         f"holds {labels.shape[0]} labels; expected the same count (folder {labels_path.parent})")
    if labels.size and labels.max() >= len(classes):
        raise ValueError(f"{labels_path}: expected labels 0..{len(classes) - 1}, got a label {labels.max()}")
    return Dataset(images[..., None], labels.astype(np.int64), list(classes), dataset)


def load_mnist(data_dir=None, split: str = "train") -> Dataset:
    """MNIST, 28x28 grayscale, shape (N, 28, 28, 1); 60,000 train and 10,000 test images.

    ``data_dir`` may hold the IDX files or be the parent of ``MNIST/raw`` (torchvision's layout, which
    :func:`numpymnv2.data.download` writes).
    """
    return _load_idx_pair(data_dir, split, "mnist", "MNIST", MNIST_CLASSES)


def load_fashion_mnist(data_dir=None, split: str = "train") -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017), same format and sizes as MNIST; sub-folder ``FashionMNIST/raw``."""
    return _load_idx_pair(data_dir, split, "fashion-mnist", "FashionMNIST", FASHION_MNIST_CLASSES)
