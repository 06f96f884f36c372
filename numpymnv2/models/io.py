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

import numpy as np

from numpymnv2._atomic import atomic_write
from numpymnv2._checks import npz_signature_problem
from numpymnv2._untrusted import UntrustedFileError, byte_budget, check_state_values, load_npz
from numpymnv2.models.footprint import check_model_fits, mobilenetv2_footprint

CONFIG_KEY = "__config__"


# what changes the computation without changing any weight's shape (the shapes are checked by load_state_dict)
SHAPELESS_KEYS = ("stem_stride", "strides", "linear_bottleneck", "use_shortcut")


def save_weights(model, path) -> str:
    """Write ``model.state_dict()`` (and ``model.config`` when it has one) to ``path`` atomically; return the path.

    Parameters
    ----------
    model : Module
        Any module; a :class:`~numpymnv2.models.MobileNetV2` also stores its architecture.
    path : str or os.PathLike
        Written exactly as given (no ``.npz`` is appended), with the permissions an ordinary new file gets.

    Raises
    ------
    ValueError
        A parameter or buffer holds NaN or infinity (nothing is written).
    """
    path = os.fspath(path)
    arrays = dict(model.state_dict())
    if CONFIG_KEY in arrays:
        raise ValueError(f"save_weights: {CONFIG_KEY!r} is reserved and cannot be a state-dict key")
    check_state_values(arrays, f"save_weights: refusing to write {path}")
    config = getattr(model, "config", None)
    if config is not None:
        arrays[CONFIG_KEY] = np.array(json.dumps(config))
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def _budget(config, model) -> int:
    """Bytes the arrays of a weights file may claim: the model's state (or the stored configuration's) in
    float64, plus slack."""
    count = None
    if model is not None:
        count = sum(np.asarray(v).size for v in model.state_dict().values())
    elif isinstance(config, dict):
        try:
            fp = mobilenetv2_footprint(**config)
            count = fp.parameters + fp.buffers
        except (TypeError, ValueError, OverflowError):
            count = None        # judged when the model is built from it
    return byte_budget(None if count is None else 8 * count + (1 << 20))


def read_weights(path, model=None) -> tuple[dict, dict | None]:
    """Read a file written by :func:`save_weights`: ``(state, config)``, ``config`` None when absent.

    The stored configuration is read first: it (or ``model``, when given) bounds how much the arrays may claim,
    so a hostile file cannot make this allocate more than the model holds.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for anything that is not
    a readable ``.npz`` of finite numeric arrays (a negative BatchNorm variance is refused too).
    """
    path = os.fspath(path)
    where = f"load_weights: {path}"
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_weights: no such file: {path}")
    problem = npz_signature_problem(path)
    if problem:
        raise ValueError(f"load_weights: {path} is not a readable .npz weights file ({problem})")
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise ValueError(f"load_weights: {path} is not a usable weights file (it holds a single array, not a "
                             f"set of named weights)")
    try:
        head = load_npz(path, where, max_bytes=64 * 1024 ** 2, select=lambda name: name == CONFIG_KEY)
        config = None
        if CONFIG_KEY in head:
            try:
                config = json.loads(str(head[CONFIG_KEY]))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: the stored model configuration is corrupt ({exc})") from None
        state = load_npz(path, where, max_bytes=_budget(config, model), select=lambda name: name != CONFIG_KEY)
    except UntrustedFileError as exc:
        raise ValueError(f"load_weights: {path} is not a readable .npz weights file ({exc})") from None
    bad = [k for k, v in state.items() if v.dtype.kind not in "fiub"]
    if bad:
        raise ValueError(f"load_weights: {path}: non-numeric arrays {bad}")
    check_state_values(state, where)
    return state, config


def load_weights(path, model=None, dtype=None):
    """Load weights saved by :func:`save_weights` (or by ``numpymnv2 convert``); return the model.

    Parameters
    ----------
    path : str or os.PathLike
    model : Module, optional
        Load into this model (keys and shapes are checked first; on any mismatch a ``ValueError`` lists every
        missing, unexpected or mis-shaped key and the model is left unchanged). When the file stores an
        architecture and the model has a ``config``, the two must agree (the same shapes with other strides
        would load but compute something else). Without it a :class:`~numpymnv2.models.MobileNetV2` is built
        from the configuration stored in the file.
    dtype : "float32" or "float64", optional
        When building the model: its dtype (default: the one it was saved with).
    """
    state, config = read_weights(path, model)
    if model is None:
        if config is None:
            raise ValueError(f"load_weights: {os.fspath(path)} stores no model configuration; pass the model to "
                             f"load into, e.g. load_weights(path, MobileNetV2(num_classes=..., width_mult=...))")
        from numpymnv2.models.mobilenetv2 import MobileNetV2

        kwargs = dict(config)
        if dtype is not None:
            kwargs["dtype"] = dtype
        try:
            check_model_fits(kwargs)
            model = MobileNetV2(**kwargs)
        except TypeError as exc:
            raise ValueError(f"load_weights: {os.fspath(path)}: the stored configuration {config} does not "
                             f"describe a MobileNetV2 ({exc})") from exc
    elif isinstance(config, dict) and isinstance(getattr(model, "config", None), dict):
        stored, ours = _shapeless(config), _shapeless(model.config)
        differ = [k for k in SHAPELESS_KEYS if k in stored and k in ours and stored[k] != ours[k]]
        if differ:
            detail = "; ".join(f"{k}: the file has {stored[k]!r}, the model {ours[k]!r}" for k in differ)
            raise ValueError(f"load_weights: {os.fspath(path)} holds the weights of another architecture than "
                             f"{model.label} ({detail}); build the model with load_weights(path), which uses "
                             f"the stored architecture")
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"load_weights: {os.fspath(path)} does not fit {model.label}: {exc}") from exc
    return model


def _shapeless(config: dict) -> dict:
    """The architecture choices that no weight shape reveals: stem stride, block strides, the ablation flags."""
    out = {k: config[k] for k in ("stem_stride", "linear_bottleneck", "use_shortcut") if k in config}
    try:
        out["strides"] = [int(row[3]) for row in config["inverted_residual_setting"]]
    except (KeyError, TypeError, IndexError, ValueError):
        pass
    return out
