"""The common return type of every reader, the single entry point ``load_dataset``, and file look-up.

Every reader returns a :class:`Dataset`: the whole split in memory as ``uint8`` pixels in NHWC layout, the
same layout the network uses (see DESIGN.md), with ``int64`` labels. Conversion to float, resizing and
augmentation happen later, batch by batch, in :mod:`numpymnv2.data.transforms`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

DATASET_NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "folder")
SPLITS = ("train", "test")


@dataclass
class Dataset:
    """A labelled image set held in memory.

    Attributes
    ----------
    images : ndarray of uint8, shape (N, H, W, C)
        Pixels, NHWC, values 0..255. C is 1 (grayscale) or 3 (RGB).
    labels : ndarray of int64, shape (N,)
        Class indices into ``classes``.
    classes : list of str
        Class names; ``classes[k]`` names label ``k``.
    name : str
        Which reader produced it ("digits", "mnist", "fashion-mnist", "cifar10", "folder").
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str

    def __post_init__(self):
        where = f"Dataset({self.name!r})"
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8 or self.images.ndim != 4:
            got = (f"dtype {self.images.dtype}, shape {self.images.shape}" if isinstance(self.images, np.ndarray)
                   else type(self.images).__name__)
            raise ValueError(f"{where}: images must be a uint8 array of shape (N, H, W, C), got {got}")
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"{where}: expected {self.images.shape[0]} labels (one per image), "
                             f"got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{where}: labels must be integers, got dtype {labels.dtype}")
        self.labels = labels.astype(np.int64, copy=False)
        self.classes = [str(c) for c in self.classes]
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"{where}: labels must lie in 0..{len(self.classes) - 1} "
                             f"({len(self.classes)} classes), got {self.labels.min()}..{self.labels.max()}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(self.images.shape[1:])

    def subset(self, indices) -> "Dataset":
        """The images and labels at ``indices`` (a copy), with the same classes and name."""
        indices = np.asarray(indices)
        return Dataset(self.images[indices], self.labels[indices], list(self.classes), self.name)

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, images={self.images.dtype}{list(self.images.shape)}, "
                f"classes={len(self.classes)})")


def default_data_dir() -> Path:
    """Where downloaded data lives when ``data_dir`` is not given: ``$NUMPYMNV2_DATA``, else ``~/.cache/numpymnv2``."""
    return Path(os.environ.get("NUMPYMNV2_DATA") or Path.home() / ".cache" / "numpymnv2").expanduser()


def resolve_data_dir(data_dir) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


def check_split(split: str, where: str, allowed: Sequence[str] = SPLITS) -> str:
    if split not in allowed:
        raise ValueError(f"{where}: split must be one of {', '.join(repr(s) for s in allowed)}, got {split!r}")
    return split


def find_file(names: Iterable[str], folders: Sequence[Path], dataset: str, how_to_get: str) -> Path:
    """Return the first existing ``folder / name``, trying every name in every folder, in order.

    Raises ``FileNotFoundError`` naming the first file name and every folder searched, and how to get the data.
    """
    names = list(names)
    for folder in folders:
        for name in names:
            path = folder / name
            if path.is_file():
                return path
    also = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    searched = ", ".join(str(f) for f in folders)
    raise FileNotFoundError(f"{dataset}: could not find {names[0]}{also}; searched {searched}. {how_to_get}")


def load_dataset(name: str, data_dir=None, split: str = "train", **kwargs) -> Dataset:
    """Load a whole split of a dataset into memory.

    Parameters
    ----------
    name : {"digits", "mnist", "fashion-mnist", "cifar10", "folder"}
        "digits" is built into the package and needs no files or network.
    data_dir : str or Path, optional
        Where the files are. For "mnist", "fashion-mnist" and "cifar10" either the folder that holds the files
        or its conventional parent (``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-bin`` below it);
        defaults to :func:`default_data_dir`. For "folder" it is the image root and is required. Ignored by
        "digits".
    split : {"train", "test"}
        "folder" also accepts "val".
    **kwargs
        Passed to the reader: ``raw`` for "digits" (:func:`~numpymnv2.data.digits.load_digits`); ``size`` and
        ``extensions`` for "folder" (:func:`~numpymnv2.data.folder.load_image_folder`).

    Returns
    -------
    Dataset
    """
    from numpymnv2.data.cifar import load_cifar10
    from numpymnv2.data.digits import load_digits
    from numpymnv2.data.folder import load_image_folder
    from numpymnv2.data.mnist import load_fashion_mnist, load_mnist

    key = name.lower().replace("_", "-")
    if key == "digits":
        return load_digits(split=split, **kwargs)
    if key == "mnist":
        return load_mnist(data_dir, split=split, **kwargs)
    if key in ("fashion-mnist", "fashionmnist"):
        return load_fashion_mnist(data_dir, split=split, **kwargs)
    if key in ("cifar10", "cifar-10"):
        return load_cifar10(data_dir, split=split, **kwargs)
    if key == "folder":
        if data_dir is None:
            raise ValueError("load_dataset('folder'): pass data_dir, the folder holding one sub-folder per class "
                             "(or train/ and test/ sub-folders that do)")
        return load_image_folder(data_dir, split=split, **kwargs)
    raise ValueError(f"load_dataset: unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
