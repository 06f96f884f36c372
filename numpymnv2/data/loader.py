"""Mini-batches from an in-memory Dataset, reproducible epoch by epoch.

The contract the trainer relies on
----------------------------------
Everything random about epoch ``e`` is a function of ``(seed, e)`` only, never of what ran before:

- the sample order is ``np.random.default_rng([seed, e, 0]).permutation(N)`` (``arange(N)`` without shuffle);
- batch ``b`` of that epoch is augmented with its own generator ``np.random.default_rng([seed, e, 1, b])``.

So ``loader.epoch(e)`` yields the same batches, bit for bit, in any process, after any number of other
epochs, on the same NumPy version. A run stopped after epoch ``e - 1`` and resumed with ``loader.epoch(e)``
sees exactly the data an uninterrupted run would have seen; ``loader.epoch(e, start_batch=b)`` even resumes
in the middle of an epoch. (Order and augmentation use separate generators so changing the transform never
changes which samples share a batch.)

``for x, y in loader`` is a convenience for ``loader.epoch(loader.next_epoch)`` that then advances
``next_epoch``; a trainer that checkpoints should call ``epoch(e)`` explicitly.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from numpymnv2._checks import resolve_dtype
from numpymnv2.data.transforms import ToFloat


class DataLoader:
    """Yield ``(x, y)`` batches: ``x`` float (B, H, W, C), ``y`` int64 (B,).

    Parameters
    ----------
    dataset : Dataset
        Anything with ``images`` (N, H, W, C) and ``labels`` (N,) arrays.
    batch_size : int
    shuffle : bool
        Visit the samples in a fresh random order each epoch (see the module docstring).
    drop_last : bool
        Skip the last batch when it has fewer than ``batch_size`` samples.
    transform : callable ``t(x, rng) -> x``, optional
        Applied to each uint8 batch (see :mod:`numpymnv2.data.transforms`). Without one the pixels are only
        scaled to [0, 1]. If the transform returns integers they are scaled the same way.
    seed : int
        Non-negative; with the epoch number it fixes order and augmentation.
    dtype : {"float32", "float64"}
        The dtype of ``x``.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, drop_last: bool = False,
                 transform=None, seed: int = 0, dtype="float32"):
        images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
        if not isinstance(images, np.ndarray) or images.ndim != 4:
            raise TypeError("DataLoader: expected a dataset with an images array of shape (N, H, W, C), "
                            f"got {type(dataset).__name__}")
        if labels is None or len(labels) != len(images):
            raise ValueError(f"DataLoader: expected one label per image ({len(images)}), "
                             f"got {None if labels is None else len(labels)}")
        if int(batch_size) < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if int(seed) < 0:
            raise ValueError(f"DataLoader: seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.seed = int(seed)
        self.dtype = resolve_dtype(dtype)
        self._to_float = ToFloat(self.dtype)
        self.next_epoch = 0
        if self.drop_last and len(self.images) < self.batch_size:
            raise ValueError(f"DataLoader: drop_last=True with {len(self.images)} samples and batch_size "
                             f"{self.batch_size} leaves no batch at all")

    @property
    def num_samples(self) -> int:
        return int(len(self.images))

    def __len__(self) -> int:
        """Number of batches per epoch."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def order(self, e: int) -> np.ndarray:
        """The sample indices of epoch ``e`` in the order they are served, shape (N,)."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, int(e), 0]).permutation(self.num_samples)

    def epoch(self, e: int, start_batch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate over the batches of epoch ``e`` (>= 0), starting at batch ``start_batch``."""
        if int(e) < 0:
            raise ValueError(f"DataLoader.epoch: epoch must be >= 0, got {e}")
        return self._batches(int(e), int(start_batch))

    def _batches(self, e: int, start_batch: int):
        idx = self.order(e)
        for b in range(start_batch, len(self)):
            rows = idx[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[rows]
            if self.transform is not None:
                x = self.transform(x, np.random.default_rng([self.seed, e, 1, b]))
            if not np.issubdtype(x.dtype, np.floating):
                x = self._to_float(x)
            yield x.astype(self.dtype, copy=False), self.labels[rows]

    def __iter__(self):
        e = self.next_epoch
        self.next_epoch += 1
        return self.epoch(e)

    def __repr__(self):
        return (f"DataLoader(samples={self.num_samples}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, seed={self.seed}, dtype='{self.dtype}', transform={self.transform!r})")
