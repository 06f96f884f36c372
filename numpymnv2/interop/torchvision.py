"""Weights to and from torchvision's ``mobilenet_v2``: same keys, different array layouts.

Our modules carry torchvision's names, so a key such as ``features.3.conv.1.0.weight`` means the same layer on
both sides; only the memory layout of the convolution weights differs (we are NHWC, PyTorch is NCHW)::

    layer               ours                    torchvision                 ours -> torch
    Conv2d (stem)       (C_out, K, K, C_in)     (C_out, C_in, K, K)         w.transpose(0, 3, 1, 2)
    DepthwiseConv2d     (K, K, C)               (C, 1, K, K)                w.transpose(2, 0, 1)[:, None]
    PointwiseConv2d     T (C_out, C_in)         (C_out, C_in, 1, 1)         T[:, :, None, None]
    Linear, BatchNorm   same                    same                        -

BatchNorm buffers (``running_mean``, ``running_var``, ``num_batches_tracked`` as a 0-d int64) are copied as
they are. Nothing here imports torch: a state_dict whose values are torch tensors is accepted and converted
with ``.detach().cpu().numpy()``.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from numpymnv2.nn.layers import Conv2d, DepthwiseConv2d, PointwiseConv2d


def _layout(module) -> str:
    if isinstance(module, Conv2d):
        return "conv2d"
    if isinstance(module, DepthwiseConv2d):
        return "depthwise"
    if isinstance(module, PointwiseConv2d):
        return "pointwise"
    return "same"


def ours_to_torch(array: np.ndarray, layout: str) -> np.ndarray:
    """One weight from our layout to PyTorch's (see the table in the module docstring)."""
    if layout == "conv2d":
        return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    if layout == "depthwise":
        return np.ascontiguousarray(array.transpose(2, 0, 1)[:, None])
    if layout == "pointwise":
        return np.ascontiguousarray(array[:, :, None, None])
    return np.array(array, copy=True)


def torch_to_ours(array: np.ndarray, layout: str) -> np.ndarray:
    """One weight from PyTorch's layout to ours; the inverse of :func:`ours_to_torch`."""
    if layout == "conv2d":
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1))
    if layout == "depthwise":
        return np.ascontiguousarray(array[:, 0].transpose(1, 2, 0))
    if layout == "pointwise":
        return np.ascontiguousarray(array[:, :, 0, 0])
    return np.array(array, copy=True)


def _layouts(model) -> "OrderedDict[str, str]":
    """state-dict key -> layout name, in state-dict order."""
    out = OrderedDict()
    for mod_name, mod in model.named_modules():
        for key in list(mod._parameters) + list(mod._buffers):
            full = f"{mod_name}.{key}" if mod_name else key
            out[full] = _layout(mod) if key == "weight" else "same"
    return out


def to_torchvision(model, grads: bool = False) -> "OrderedDict[str, np.ndarray]":
    """Export ``model``'s weights (or, with ``grads=True``, its accumulated gradients) with torchvision's keys
    and layouts.

    Returns
    -------
    OrderedDict of str -> ndarray
        In torchvision's state-dict order; ``torch.from_numpy`` of each value gives a state_dict that
        ``torchvision.models.mobilenet_v2(...).load_state_dict`` accepts. With ``grads=True`` only the
        parameters appear (buffers have no gradient), as in ``{k: p.grad for k, p in named_parameters()}``.
    """
    layouts = _layouts(model)
    if grads:
        source = OrderedDict((k, p.grad) for k, p in model.named_parameters())
    else:
        source = model.state_dict()
    return OrderedDict((k, ours_to_torch(np.asarray(v), layouts[k])) for k, v in source.items())


def _as_numpy(key, value) -> np.ndarray:
    if hasattr(value, "detach"):            # a torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as exc:
        raise TypeError(f"from_torchvision: {key}: cannot convert a {type(value).__name__} to an array") from exc


# Widths tried by infer_width_mult, the usual ones first: any width that gives a state_dict's channel counts
# builds the same network, so the first that fits is reported.
_COMMON_WIDTHS = (1.0, 0.75, 0.5, 0.35, 1.4, 1.3, 0.25, 0.1, 1.25, 1.5, 2.0)
_WIDTH_GRID = _COMMON_WIDTHS + tuple(round(0.05 * i, 2) for i in range(1, 81)) + \
    tuple(round(0.01 * i, 2) for i in range(1, 401))


def _channel_counts(width_mult: float) -> tuple:
    """Channels of the stem, of each row of the paper's table and of the last layer, at ``width_mult``."""
    from numpymnv2.models.mobilenetv2 import DEFAULT_SETTING, make_divisible
    return ((make_divisible(32 * width_mult),) + tuple(make_divisible(c * width_mult) for _, c, _, _ in DEFAULT_SETTING)
            + (make_divisible(1280 * max(1.0, width_mult)),))


def state_channel_counts(state) -> tuple:
    """The same channel counts read from a torchvision ``mobilenet_v2`` state_dict's weight shapes."""
    from numpymnv2.models.mobilenetv2 import DEFAULT_SETTING
    keys = ["features.0.0.weight"]
    block = 0
    for t, _, n, _ in DEFAULT_SETTING:
        block += n                      # the last block of the row has the row's output channels
        keys.append(f"features.{block}.conv.{1 if t == 1 else 2}.weight")
    keys.append(f"features.{block + 1}.0.weight")
    missing = [k for k in keys if k not in state or len(getattr(state[k], "shape", ())) < 1]
    if missing:
        raise ValueError(f"not a torchvision MobileNetV2 state_dict (paper table): no {', '.join(missing[:3])}"
                         + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    return tuple(int(state[k].shape[0]) for k in keys)


def infer_width_mult(state) -> float:
    """The width multiplier of a torchvision ``mobilenet_v2`` state_dict, from its channel counts.

    ``make_divisible`` rounds channels to multiples of 8, so several widths can build the same network (0.5
    and 0.55); the most usual of them is returned (1.0, 0.75, 0.5, 0.35, 1.4, ... before the others).

    Raises
    ------
    ValueError
        A key is missing, or no width in 0.01 steps up to 4 gives these channel counts.
    """
    observed = state_channel_counts(state)
    for width in _WIDTH_GRID:
        if _channel_counts(width) == observed:
            return width
    raise ValueError(f"no width multiplier gives the channel counts of this state_dict (stem, rows, last layer: "
                     f"{observed}); is it a MobileNetV2 with torchvision's table?")


def check_width_mult(state, width_mult: float) -> None:
    """A ``ValueError`` naming the width that fits when ``width_mult`` does not build ``state``'s channels."""
    observed = state_channel_counts(state)
    if _channel_counts(width_mult) != observed:
        raise ValueError(f"--width {width_mult:g} does not fit the weights: it gives {_channel_counts(width_mult)} "
                         f"channels (stem, the table's rows, last layer), the file has {observed}, which width "
                         f"{infer_width_mult(state):g} gives; leave --width out to use that")


def strip_ddp_prefix(state: dict) -> tuple[dict, bool]:
    """``(state, stripped)``: without the ``module.`` that ``DistributedDataParallel``/``DataParallel`` put before
    every key (only when every key has it)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}, True
    return state, False


def from_torchvision(state_dict, num_classes: int = 1000, width_mult: float = 1.0, dtype="float32",
                     **model_kwargs):
    """Build a :class:`~numpymnv2.models.MobileNetV2` from a torchvision ``mobilenet_v2`` state_dict.

    Parameters
    ----------
    state_dict : dict of str -> ndarray (or torch.Tensor)
        torchvision's keys and layouts, e.g. ``torchvision.models.mobilenet_v2(weights=...).state_dict()``.
    num_classes : int or None
        Classifier outputs; None reads it from ``classifier.1.weight``.
    width_mult : float
        Must be the width the weights were trained with (it fixes every layer's channel count).
    dtype : "float32" or "float64"
    **model_kwargs
        Further :class:`~numpymnv2.models.MobileNetV2` arguments (``dropout``, ``inverted_residual_setting``,
        ``stem_stride``...).

    Returns
    -------
    MobileNetV2
        In evaluation mode, so ``model(x)`` gives the same predictions as the torchvision model in ``eval()``.

    Raises
    ------
    ValueError
        Listing every missing, unexpected or mis-shaped key (shapes in torchvision's layout), for example a
        state_dict of another width.
    """
    from numpymnv2.models.mobilenetv2 import MobileNetV2

    if not isinstance(state_dict, dict):
        raise TypeError(f"from_torchvision: expected a dict of arrays (a state_dict), got "
                        f"{type(state_dict).__name__}")
    state = {k: _as_numpy(k, v) for k, v in state_dict.items()}
    if num_classes is None:
        if "classifier.1.weight" not in state:
            raise ValueError("from_torchvision: num_classes=None needs the key 'classifier.1.weight' to read it "
                             "from, and the state_dict has none")
        num_classes = int(state["classifier.1.weight"].shape[0])
    model = MobileNetV2(num_classes=num_classes, width_mult=width_mult, dtype=dtype, **model_kwargs)
    expected = to_torchvision(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}"
                        + (f", ... ({len(missing) - 8} more)" if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}"
                        + (f", ... ({len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
    for k, v in expected.items():
        if k in state and state[k].shape != v.shape:
            problems.append(f"{k}: expected shape {v.shape} in torchvision's layout, got {state[k].shape}")
    if problems:
        shown = problems[:12] + ([f"... ({len(problems) - 12} more problems)"] if len(problems) > 12 else [])
        raise ValueError(f"from_torchvision: the state_dict does not fit MobileNetV2(num_classes={num_classes}, "
                         f"width_mult={width_mult}); was it saved from another width or number of classes?\n  - "
                         + "\n  - ".join(shown))
    layouts = _layouts(model)
    model.load_state_dict({k: torch_to_ours(state[k], layouts[k]) for k in expected})
    return model.eval()
