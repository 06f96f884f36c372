"""Our own weight files: a model's ``state_dict`` in a plain ``.npz``, readable with ``numpy.load`` alone.

The file holds one array per state-dict key (torchvision's keys, our NHWC layouts: see :mod:`numpymnv2.interop`
for the layouts) and, under ``__config__``, the model's constructor arguments as a JSON string, so
``load_weights(path)`` can rebuild the architecture. Nothing is pickled: files are read with
``allow_pickle=False``. Writes are atomic: the data goes to a temporary file in the same folder, is flushed to
disk, and replaces the target in one ``os.replace``, so a crash never leaves a half-written weights file.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from numpymnv2._checks import npz_signature_problem

CONFIG_KEY = "__config__"


def save_weights(model, path) -> str:
    """Write ``model.state_dict()`` (and ``model.config`` when it has one) to ``path`` atomically; return the path.

    Parameters
    ----------
    model : Module
        Any module; a :class:`~numpymnv2.models.MobileNetV2` also stores its architecture.
    path : str or os.PathLike
        Written exactly as given (no ``.npz`` is appended).
    """
    path = os.fspath(path)
    arrays = dict(model.state_dict())
    if CONFIG_KEY in arrays:
        raise ValueError(f"save_weights: {CONFIG_KEY!r} is reserved and cannot be a state-dict key")
    config = getattr(model, "config", None)
    if config is not None:
        arrays[CONFIG_KEY] = np.array(json.dumps(config))
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:        # make the rename itself durable; not possible on every platform
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def read_weights(path) -> tuple[dict, dict | None]:
    """Read a file written by :func:`save_weights`: ``(state, config)``, ``config`` None when absent.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for anything that is not
    a readable ``.npz`` of numeric arrays.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_weights: no such file: {path}")
    problem = npz_signature_problem(path)
    if problem:
        raise ValueError(f"load_weights: {path} is not a readable .npz weights file ({problem})")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("it holds a single array, not a set of named weights")
            state = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"load_weights: {path} is not a readable .npz weights file ({exc})") from exc
    except ValueError as exc:
        raise ValueError(f"load_weights: {path} is not a usable weights file ({exc})") from exc
    config = None
    if CONFIG_KEY in state:
        try:
            config = json.loads(str(state.pop(CONFIG_KEY)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"load_weights: {path}: the stored model configuration is corrupt ({exc})") from exc
    bad = [k for k, v in state.items() if v.dtype.kind not in "fiub"]
    if bad:
        raise ValueError(f"load_weights: {path}: non-numeric arrays {bad}")
    return state, config


def load_weights(path, model=None, dtype=None):
    """Load weights saved by :func:`save_weights` (or by ``numpymnv2 convert``); return the model.

    Parameters
    ----------
    path : str or os.PathLike
    model : Module, optional
        Load into this model (keys and shapes are checked first; on any mismatch a ``ValueError`` lists every
        missing, unexpected or mis-shaped key and the model is left unchanged). Without it a
        :class:`~numpymnv2.models.MobileNetV2` is built from the configuration stored in the file.
    dtype : "float32" or "float64", optional
        When building the model: its dtype (default: the one it was saved with).
    """
    state, config = read_weights(path)
    if model is None:
        if config is None:
            raise ValueError(f"load_weights: {os.fspath(path)} stores no model configuration; pass the model to "
                             f"load into, e.g. load_weights(path, MobileNetV2(num_classes=..., width_mult=...))")
        from numpymnv2.models.mobilenetv2 import MobileNetV2

        kwargs = dict(config)
        if dtype is not None:
            kwargs["dtype"] = dtype
        try:
            model = MobileNetV2(**kwargs)
        except TypeError as exc:
            raise ValueError(f"load_weights: {os.fspath(path)}: the stored configuration {config} does not "
                             f"describe a MobileNetV2 ({exc})") from exc
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"load_weights: {os.fspath(path)} does not fit {model.label}: {exc}") from exc
    return model
