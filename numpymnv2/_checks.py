"""Input validation shared by every layer and entry point.

Errors name the thing that rejected the input (a layer such as ``BatchNorm2d(features.3.conv.1)`` or a file),
what it expected and what it got, so a user never meets an ``IndexError`` from inside a kernel.
"""
from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: The activations a BatchNorm layer can apply after normalising (None: linear).
ACTIVATION_NAMES = ("relu6", "relu")


class NonFiniteError(ValueError):
    """A computation produced NaN or infinity where the model's state must stay finite (BatchNorm's running
    statistics in training mode); the state was left as it was before the call. Training loops treat it as
    divergence."""


def resolve_dtype(dtype) -> np.dtype:
    """Return ``dtype`` as a NumPy float dtype (float32 or float64), or raise ``TypeError``."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dt}")
    return dt


def check_array(x, where: str, *, ndim: int | None = None, channels: int | None = None,
                dtype=None, finite: bool = True, what: str = "input") -> np.ndarray:
    """Validate an activation or gradient and return it.

    Parameters
    ----------
    x : object
        What the caller passed.
    where : str
        Who is asking, e.g. ``"Conv2d(features.0.0)"``; it starts every error message.
    ndim : int, optional
        Required number of dimensions (4 for NHWC activations).
    channels : int, optional
        Required size of the last axis.
    dtype : numpy dtype, optional
        Required floating dtype (the layer's parameter dtype). Without it any float32/float64 array passes.
    finite : bool
        Reject NaN and infinity (one extra read of ``x``).
    what : str
        The noun used in messages ("input", "gradient").
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{where}: expected the {what} to be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{where}: expected a float32 or float64 {what}, got dtype {x.dtype} "
                        f"(convert with x.astype(np.float32))")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{where}: expected a {np.dtype(dtype)} {what} to match the layer's parameters, "
                        f"got {x.dtype} (convert with x.astype(np.{np.dtype(dtype)}) or build the model "
                        f"with dtype='{x.dtype}')")
    if ndim is not None and x.ndim != ndim:
        layout = " (N, H, W, C)" if ndim == 4 else ""
        raise ValueError(f"{where}: expected a {ndim}-D {what}{layout}, got {x.ndim}-D with shape {x.shape}")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"{where}: expected {what} with {channels} channels, got {x.shape[-1]} "
                         f"(shape {x.shape})")
    if x.size == 0:
        raise ValueError(f"{where}: got an empty {what} with shape {x.shape}")
    if finite and not np.isfinite(x).all():
        n_bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{where}: the {what} contains {n_bad} NaN or infinite value(s) (shape {x.shape})")
    return x


def check_same_shape(dout: np.ndarray, shape: tuple, where: str) -> np.ndarray:
    """Validate the gradient handed to a backward pass against the forward output's shape."""
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"{where}: expected the gradient to be a numpy.ndarray, got {type(dout).__name__}")
    if tuple(dout.shape) != tuple(shape):
        raise ValueError(f"{where}: expected a gradient of shape {tuple(shape)} (the forward output's shape), "
                         f"got {tuple(dout.shape)}")
    if dout.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{where}: expected a float32 or float64 gradient, got dtype {dout.dtype}")
    return dout


def check_hyperparameter(value, name: str, where: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer ``>= minimum`` (a channel count, kernel size, stride or padding).

    Raises ``TypeError`` for a non-integer (``2.0``, ``True``) and ``ValueError`` for one below ``minimum``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: expected an integer {name}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{where}: expected {name} >= {minimum}, got {value}")
    return int(value)


def check_probability(value, name: str, where: str) -> float:
    """Return ``value`` as a float if it is a real number in ``[0, 1]`` (a dropout rate), else raise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: expected a number for {name}, got {value!r} ({type(value).__name__})")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: expected {name} in [0, 1], got {value!r}")
    return float(value)


def check_activation(activation, where: str):
    """Return ``activation`` if it is one of :data:`ACTIVATION_NAMES` or None, else raise ``ValueError``."""
    if activation is not None and activation not in ACTIVATION_NAMES:
        raise ValueError(f"{where}: activation must be one of {', '.join(map(repr, ACTIVATION_NAMES))} or None, "
                         f"got {activation!r}")
    return activation


def check_batch_statistics(shape: tuple, where: str) -> None:
    """Training-mode BatchNorm needs at least two values per channel (``N*H*W >= 2``) for a batch variance."""
    if shape[0] * shape[1] * shape[2] < 2:
        raise ValueError(f"{where}: training mode needs more than one value per channel (N*H*W >= 2) to "
                         f"compute batch statistics, got input shape {tuple(shape)}; use eval() or a larger batch")


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int, where: str, axis: str = "H") -> int:
    """Spatial output size of a convolution, ``floor((size + 2 p - k) / s) + 1``; raise if it is not positive.

    ``kernel_size`` and ``stride`` must be positive integers and ``padding`` a non-negative one (a stride of 0
    would otherwise surface as a ``ZeroDivisionError``).
    """
    check_hyperparameter(kernel_size, "kernel_size", where)
    check_hyperparameter(stride, "stride", where)
    check_hyperparameter(padding, "padding", where, minimum=0)
    out = (size + 2 * padding - kernel_size) // stride + 1
    if out < 1:
        raise ValueError(f"{where}: input {axis}={size} with kernel_size={kernel_size}, stride={stride}, "
                         f"padding={padding} gives an empty output ({axis}_out={out})")
    return out


def npz_signature_problem(path) -> str | None:
    """Why ``path`` cannot be an ``.npz`` archive (or ``.npy`` array), judged from its first bytes, or None.

    ``np.load`` takes a file that is neither a zip archive nor an ``.npy`` array for a pickle and answers with
    advice about ``allow_pickle``; checking the zip signature first lets callers say what is really wrong.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if head in (b"PK\x03\x04", b"PK\x05\x06") or head == b"\x93NUM":
        return None     # a zip archive, or a single .npy array that np.load reads safely and callers reject
    if not head:
        return "the file is empty"
    return f"it does not start with the zip signature of an .npz archive (first bytes {head!r})"
