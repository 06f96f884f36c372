"""CIFAR-10 from its binary version (https://www.cs.toronto.edu/~kriz/cifar.html, "suitable for C programs").

Each ``.bin`` file is a sequence of 3,073-byte records and nothing else: one label byte (0..9), then the
32x32 image as 1,024 red bytes, 1,024 green, 1,024 blue, each plane row-major. So a record's pixels reshape
to (3, 32, 32) (CHW), which we transpose to HWC. The official files hold 10,000 records each:
``data_batch_1.bin`` .. ``data_batch_5.bin`` are the train split, ``test_batch.bin`` the test split, and
``batches.meta.txt`` names the classes, one per line.

Subsets are allowed: a file may hold any whole number of records (a partial record is an error), and the
train split reads whichever of ``data_batch_1..5.bin`` exist, in order, as long as at least one does. Missing
batches are reported with a ``UserWarning`` so a silently smaller training set cannot go unnoticed.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from numpymnv2._memory import format_bytes
from numpymnv2._untrusted import byte_budget, regular_file_size
from numpymnv2.data.dataset import Dataset, check_split, find_file, resolve_data_dir

RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_FILES = [f"data_batch_{k}.bin" for k in range(1, 6)]
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
SUBFOLDER = "cifar-10-batches-bin"
MAX_META_BYTES = 1 << 20


def read_cifar_batch(path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary file.

    Returns
    -------
    images : ndarray of uint8, shape (N, 32, 32, 3)
    labels : ndarray of int64, shape (N,)

    Raises
    ------
    ValueError
        The file is empty, its size is not a whole number of 3,073-byte records, or a label is >= num_classes.
    """
    path = Path(path)
    size = regular_file_size(path, "cifar10")
    n, extra = divmod(size, RECORD_BYTES)
    if n == 0 or extra:
        raise ValueError(f"{path}: expected a whole, non-zero number of {RECORD_BYTES}-byte records "
                         f"(1 label byte + 3072 pixel bytes), got {size} bytes = {n} records and "
                         f"{extra} bytes of a partial record")
    budget = byte_budget()
    if size > budget:
        raise ValueError(f"{path}: {format_bytes(size)} of records, more than the {format_bytes(budget)} a file "
                         f"may take here")
    data = np.fromfile(path, dtype=np.uint8, count=size)
    if data.size != size:
        raise ValueError(f"{path}: the file shrank while it was read ({data.size} of {size} bytes)")
    records = data.reshape(n, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise ValueError(f"{path}: expected labels 0..{num_classes - 1}, got {labels[bad]} in record {bad}")
    # (N, 3072) -> (N, C=3, H=32, W=32) planes -> (N, H, W, C)
    images = np.ascontiguousarray(records[:, 1:].reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def _read_class_names(folder: Path) -> list[str]:
    path = folder / META_FILE
    if not path.is_file():
        return list(CIFAR10_CLASSES)
    if regular_file_size(path, "cifar10") > MAX_META_BYTES:
        raise ValueError(f"{path}: larger than {MAX_META_BYTES} bytes; expected one class name per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc}); expected one class name per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: expected one class name per line, got an empty file")
    return names


def load_cifar10(data_dir=None, split: str = "train") -> Dataset:
    """CIFAR-10, 32x32 RGB, shape (N, 32, 32, 3); officially 50,000 train and 10,000 test images.

    ``data_dir`` may hold the ``.bin`` files or be the parent of ``cifar-10-batches-bin`` (the folder the
    official archive unpacks to). Class names come from ``batches.meta.txt`` when it is there.
    """
    check_split(split, "load_dataset('cifar10')")
    root = resolve_data_dir(data_dir)
    folders = [root, root / SUBFOLDER]
    how = (f"Download it with numpymnv2.data.download('cifar10', {str(root)!r}), or unpack "
           f"cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html there.")
    if split == "test":
        paths = [find_file([TEST_FILE], folders, "cifar10", how)]
    else:
        folder = next((f for f in folders if any((f / name).is_file() for name in TRAIN_FILES)), None)
        if folder is None:
            find_file(TRAIN_FILES, folders, "cifar10", how)  # raises FileNotFoundError
        paths = [folder / name for name in TRAIN_FILES if (folder / name).is_file()]
        missing = [name for name in TRAIN_FILES if not (folder / name).is_file()]
        if missing:
            warnings.warn(f"cifar10: {folder} lacks {', '.join(missing)}; the train split holds only "
                          f"{', '.join(p.name for p in paths)}", UserWarning, stacklevel=2)
    classes = _read_class_names(paths[0].parent)
    parts = [read_cifar_batch(p, num_classes=len(classes)) for p in paths]
    images = np.concatenate([im for im, _ in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([lb for _, lb in parts]) if len(parts) > 1 else parts[0][1]
    return Dataset(images, labels, classes, "cifar10")
