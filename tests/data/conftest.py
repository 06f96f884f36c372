"""Writers for small files in the real on-disk formats, so every reader is tested on bytes it would meet."""
import gzip
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file: two zero bytes, the element type, the number of dimensions, big-endian sizes, then the
    data big-endian (``type_code`` must match ``array.dtype``: 0x08 for uint8, 0x0C for int32...)."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def make_idx_split():
    """Write ``{prefix}-images-idx3-ubyte`` and ``{prefix}-labels-idx1-ubyte`` with n random samples."""
    def make(folder: Path, prefix: str = "train", n: int = 5, gz: bool = False, seed: int = 0):
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write(folder / f"{prefix}-images-idx3-ubyte", idx_bytes(images), gz)
        write(folder / f"{prefix}-labels-idx1-ubyte", idx_bytes(labels), gz)
        return images, labels
    return make


def cifar_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 binary records: a label byte, then the R, G and B planes of a 32x32 image."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1).astype(np.uint8).tobytes()


@pytest.fixture
def make_cifar_batch():
    def make(path: Path, n: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write(path, cifar_bytes(images, labels))
        return images, labels
    return make


@pytest.fixture
def fmt():
    """The byte writers above, as a fixture (test modules should not import conftest)."""
    return SimpleNamespace(idx_bytes=idx_bytes, write=write, cifar_bytes=cifar_bytes)
