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
import zlib
from pathlib import Path

import numpy as np

from numpymnv2.data.dataset import Dataset, check_split, find_file, resolve_data_dir

IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]

_FILE_STEMS = {"train": ("train-images", "train-labels"), "test": ("t10k-images", "t10k-labels")}


def _read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped when the name ends in ``.gz``; a damaged gzip stream is a ValueError."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path}: not a complete gzip file ({exc})") from exc


def read_idx(path, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) into an array in native byte order.

    Parameters
    ----------
    path : str or Path
    expected_magic : int, optional
        Reject any other magic number, e.g. ``IMAGES_MAGIC`` (2051) or ``LABELS_MAGIC`` (2049).

    Raises
    ------
    ValueError
        Wrong or unknown magic number, a header or body shorter than the header announces, or trailing bytes.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file: expected at least a 4-byte header, got {len(data)} bytes")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: wrong magic number: expected {expected_magic} (0x{expected_magic:08X}), "
                         f"got {magic} (0x{magic:08X}); is this the right file (images vs labels)?")
    zero, type_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or type_code not in IDX_TYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file: magic number 0x{magic:08X} does not start with two zero "
                         f"bytes, a known element type and a dimension count")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header: expected {header} bytes for {ndim} dimensions, "
                         f"got {len(data)}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_TYPES[type_code]
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        what = "truncated IDX file" if len(data) < expected else "IDX file has trailing bytes"
        raise ValueError(f"{path}: {what}: the header announces shape {shape} of {dtype.name}, so expected "
                         f"{expected} bytes, got {len(data)}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


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
