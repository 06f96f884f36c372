"""The built-in offline dataset: the UCI ML hand-written digits (8x8 images, 10 classes).

The 1,797 images are the set scikit-learn ships as ``load_digits`` (a copy of the test part of the UCI
"Optical Recognition of Handwritten Digits" data, Alpaydin & Kaynak 1998, CC BY 4.0; see DIGITS_LICENSE.txt).
Each pixel counts the "on" pixels of a 4x4 block of a 32x32 bitmap, so it takes values 0..16.

``digits.npz`` (next to this file) holds three arrays, read with ``allow_pickle=False``:

- ``images``: uint8, shape (1797, 8, 8), values 0..16, in the order of the UCI/scikit-learn file;
- ``labels``: uint8, shape (1797,), the digit 0..9;
- ``test_index``: int64, shape (300,), sorted, the rows of the hold-out test split.

The split
---------
The test split holds 30 images of every digit (300 in all, stratified and balanced); the other 1,497 are the
train split. It was drawn once, when the file was built, by :func:`build_digits_npz`: for each digit in turn,
``rng.permutation`` of that digit's rows with ``rng = np.random.default_rng(0)``, keeping the first 30. The
indices are stored rather than recomputed, so the split never changes with the NumPy version.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from numpymnv2.data.dataset import Dataset, check_split

DIGITS_FILE = Path(__file__).with_name("digits.npz")
DIGITS_CLASSES = [str(d) for d in range(10)]
TEST_PER_CLASS = 30
SPLIT_SEED = 0


def load_digits(split: str = "train", raw: bool = False) -> Dataset:
    """The digits train (1,497 images) or test (300 images) split, shape (N, 8, 8, 1).

    Parameters
    ----------
    split : {"train", "test"}
    raw : bool
        False (default): pixels rescaled from 0..16 to 0..255 as ``round(v * 255 / 16)``, the range every
        other reader returns, so the same transforms apply. True: the original counts 0..16.
    """
    check_split(split, "load_digits")
    with np.load(DIGITS_FILE, allow_pickle=False) as f:
        images, labels, test_index = f["images"], f["labels"], f["test_index"]
    in_test = np.zeros(len(labels), dtype=bool)
    in_test[test_index] = True
    rows = in_test if split == "test" else ~in_test
    x = images[rows]
    if not raw:
        x = ((x.astype(np.uint16) * 255 + 8) // 16).astype(np.uint8)
    return Dataset(x[..., None], labels[rows].astype(np.int64), list(DIGITS_CLASSES), "digits")


def stratified_test_index(labels: np.ndarray, per_class: int = TEST_PER_CLASS, seed: int = SPLIT_SEED) -> np.ndarray:
    """Draw ``per_class`` rows of every class (classes in increasing order, one generator), sorted."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def build_digits_npz(csv_path, out_path=DIGITS_FILE) -> Path:
    """Build ``digits.npz`` from scikit-learn's ``sklearn/datasets/data/digits.csv.gz``. Not used at runtime.

    That file has one image per line: 64 pixel values (row-major 8x8) then the label, comma separated.
    Run once by the maintainers::

        import sklearn, pathlib
        build_digits_npz(pathlib.Path(sklearn.__file__).parent / "datasets/data/digits.csv.gz")
    """
    table = np.loadtxt(csv_path, delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65) or table[:, :64].min() < 0 or table[:, :64].max() > 16:
        raise ValueError(f"{csv_path}: expected 1797 rows of 64 pixels in 0..16 and a label, got {table.shape}")
    images = table[:, :64].reshape(-1, 8, 8).astype(np.uint8)
    labels = table[:, 64].astype(np.uint8)
    np.savez_compressed(out_path, images=images, labels=labels, test_index=stratified_test_index(labels))
    return Path(out_path)
