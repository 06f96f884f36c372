"""BatchNorm folding for inference: every BatchNorm merged into the convolution before it.

In evaluation mode BatchNorm is a fixed per-channel affine map of the convolution's output ``z = conv(x, w)``::

    BN(z) = gamma (z - running_mean) / sqrt(running_var + eps) + beta = scale z + (beta - scale running_mean)

with ``scale = gamma / sqrt(running_var + eps)``. A convolution is linear in its weight, so ``scale z`` is the
convolution with every output channel's filter multiplied by its ``scale``::

    w_folded = w * scale          (along the output-channel axis of each layout)
    b_folded = beta - scale * running_mean
    BN(conv(x, w)) = conv(x, w_folded) + b_folded

The design is deliberately small: :func:`fold_batchnorm` turns a trained :class:`MobileNetV2` into a
:class:`FoldedMobileNetV2`, a flat list of :class:`FoldedConv` steps (convolution, bias, optional ReLU6,
optional residual add) followed by pooling and the classifier. It is forward-only and has no modes; the original
model is not modified. Outputs equal the unfused model's evaluation-mode outputs up to float rounding.

How it runs: on the reference backend each step is the readable operation followed by NumPy's bias, clip and
add, as written in :meth:`FoldedMobileNetV2.forward_reference`. On the fast backend (the default) a step's
bias, activation and shortcut add are one Numba pass in place on the convolution's output
(:func:`numpymnv2.kernels.inference.bias_act`), the pointwise GEMMs write into buffers allocated once per input
shape and thread (:class:`_Buffers`), and the last step's pass also pools. This is the fastest inference
numpymnv2 has; the exported ONNX graph (:func:`numpymnv2.interop.to_onnx`) runs the same steps in onnxruntime.
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np

from numpymnv2.backend import get_backend
from numpymnv2.kernels import inference as fast_inference
from numpymnv2.nn.layers import BatchNorm2d, Conv2d, DepthwiseConv2d, PointwiseConv2d
from numpymnv2.ops import CONV2D, DEPTHWISE_CONV2D, POINTWISE_CONV2D


class FoldedConv(NamedTuple):
    """One convolution with its BatchNorm folded in: ``act(conv(x, weight) + bias) [+ shortcut]``."""
    name: str                 # the module it came from, e.g. "features.3.conv.1"
    kind: str                 # "conv2d" (weight (C_out, K, K, C_in)), "depthwise" ((K, K, C)), "pointwise"
    weight: np.ndarray        # in the layout of that kind, scaled by gamma / sqrt(running_var + eps)
    bias: np.ndarray          # (C_out,) beta - scale * running_mean
    stride: int
    padding: int
    activation: str | None    # "relu6", "relu" or None
    block_start: bool         # remember this step's input as the shortcut of a residual block
    add_residual: bool        # add the remembered shortcut after the activation


def _fold(name: str, conv, bn: BatchNorm2d, activation, block_start=False, add_residual=False) -> FoldedConv:
    dt = conv.weight.data.dtype
    scale = bn.weight.data.astype(np.float64) / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    bias = (bn.bias.data - scale * bn.running_mean).astype(dt)
    w = conv.weight.data.astype(np.float64)
    if isinstance(conv, Conv2d):        # (C_out, K, K, C_in)
        kind, w, stride, padding = "conv2d", w * scale[:, None, None, None], conv.stride, conv.padding
    elif isinstance(conv, DepthwiseConv2d):   # (K, K, C): the channel axis is last
        kind, w, stride, padding = "depthwise", w * scale, conv.stride, conv.padding
    elif isinstance(conv, PointwiseConv2d):   # (C_out, C_in)
        kind, w, stride, padding = "pointwise", w * scale[:, None], 1, 0
    else:
        raise TypeError(f"fold_batchnorm: cannot fold a BatchNorm into {type(conv).__name__} ({name})")
    return FoldedConv(name, kind, np.ascontiguousarray(w.astype(dt)), bias, stride, padding, activation,
                      block_start, add_residual)


def _conv_bn_pairs(module, name: str) -> list[tuple[str, object, BatchNorm2d]]:
    """The (name, convolution, BatchNorm) pairs of ``module``'s leaves in the order they run; every convolution
    must be followed by a BatchNorm (as everywhere in MobileNetV2)."""
    leaves = [(f"{name}.{n}" if n else name, m) for n, m in module.named_modules() if not m._modules]
    pairs = []
    for (conv_name, conv), (bn_name, bn) in zip(leaves[::2], leaves[1::2]):
        if not isinstance(bn, BatchNorm2d):
            raise TypeError(f"fold_batchnorm: {conv_name} ({type(conv).__name__}) is followed by {bn_name} "
                            f"({type(bn).__name__}), not a BatchNorm2d to fold into it")
        pairs.append((conv_name, conv, bn))
    if len(leaves) % 2:
        raise TypeError(f"fold_batchnorm: {leaves[-1][0]} ({type(leaves[-1][1]).__name__}) has no BatchNorm2d after it")
    return pairs


def fold_batchnorm(model) -> "FoldedMobileNetV2":
    """Return an inference-only copy of a :class:`~numpymnv2.models.MobileNetV2` with its BatchNorms folded.

    Uses the running statistics (evaluation mode), whatever mode ``model`` is in; ``model`` is not changed.
    """
    from numpymnv2.models.mobilenetv2 import InvertedResidual, MobileNetV2

    if not isinstance(model, MobileNetV2):
        raise TypeError(f"fold_batchnorm: expected a MobileNetV2, got {type(model).__name__}")
    steps = []
    for i, unit in enumerate(model.features):
        res = isinstance(unit, InvertedResidual) and unit.use_res_connect
        pairs = _conv_bn_pairs(unit, f"features.{i}")
        for j, (name, conv, bn) in enumerate(pairs):
            steps.append(_fold(name, conv, bn, bn.activation, block_start=res and j == 0,
                               add_residual=res and j == len(pairs) - 1))
    linear = model.classifier[1]
    return FoldedMobileNetV2(steps, linear.weight.data.copy(), linear.bias.data.copy(), model)


class _Buffers:
    """The output arrays of the pointwise steps for one input shape: step ``i`` writes ``slot_views[i]``.

    Pointwise outputs take turns in three slots, each step a slot that holds neither its input nor the shortcut
    of the block it is in (both are read while it writes); each slot is as large as the largest output it holds.
    """

    def __init__(self, steps, x_shape: tuple, dtype):
        N, H, W, _ = x_shape
        shapes = []
        for step in steps:
            if step.kind != "pointwise":
                K = step.weight.shape[1] if step.kind == "conv2d" else step.weight.shape[0]
                H = (H + 2 * step.padding - K) // step.stride + 1
                W = (W + 2 * step.padding - K) // step.stride + 1
            shapes.append((N, H, W, step.bias.shape[0]))
        slot_of, sizes = [], [0, 0, 0]
        held_input = held_shortcut = None      # the slots holding the next step's input and the block's shortcut
        for step, shape in zip(steps, shapes):
            if step.block_start:
                held_shortcut = held_input
            slot = None
            if step.kind == "pointwise":
                slot = next(k for k in range(3) if k not in (held_input, held_shortcut))
                sizes[slot] = max(sizes[slot], int(np.prod(shape)))
            slot_of.append(slot)
            held_input = slot
            if step.add_residual:
                held_shortcut = None
        slots = [np.empty(n, dtype=dtype) for n in sizes]
        self.out = [None if k is None else slots[k][:int(np.prod(shape))].reshape(shape)
                    for k, shape in zip(slot_of, shapes)]


class FoldedMobileNetV2:
    """MobileNetV2 for inference with BatchNorm folded into the convolutions (see :func:`fold_batchnorm`).

    ``folded(x)`` returns the logits ``(N, num_classes)`` of images ``x`` of shape ``(N, H, W, 3)``, validated
    as the original model validates them. Attributes: ``steps`` (list of :class:`FoldedConv`),
    ``classifier_weight`` ``(num_classes, last_channel)``, ``classifier_bias`` ``(num_classes,)``.

    On the fast backend (the default) it keeps, per thread, the buffers of the last input shape it saw (see the
    module docstring); the logits it returns are always a new array. The fast path reads the steps' weights
    when the model is built: after changing them in place, fold again.
    """

    def __init__(self, steps: list, classifier_weight: np.ndarray, classifier_bias: np.ndarray, source):
        self.steps = steps
        self.classifier_weight, self.classifier_bias = classifier_weight, classifier_bias
        self.config = dict(source.config)
        self._check = source.check_input     # the same input validation as the unfused model
        self._local = threading.local()      # .buffers: _Buffers of this thread's last input shape
        # the fast path multiplies by each pointwise weight transposed, (C_in, C_out), stored contiguously:
        # OpenBLAS ran MobileNetV2's products 12-20% faster from it than from the transposed view T.T
        self._pointwise_t = [np.ascontiguousarray(s.weight.T) if s.kind == "pointwise" else None for s in steps]

    def num_parameters(self) -> int:
        return int(sum(s.weight.size + s.bias.size for s in self.steps) + self.classifier_weight.size
                   + self.classifier_bias.size)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The logits of ``x``: :meth:`forward_fast` on the fast backend, :meth:`forward_reference` otherwise."""
        self._check(x)
        if get_backend() == "fast":
            return self.forward_fast(x)
        return self.forward_reference(x)

    def forward_reference(self, x: np.ndarray) -> np.ndarray:
        """Each step as the readable operation, then NumPy's bias, activation and residual add."""
        shortcut = None
        for step in self.steps:
            if step.block_start:
                shortcut = x
            if step.kind == "conv2d":
                y, _ = CONV2D.reference.forward(x, step.weight, step.stride, step.padding)
            elif step.kind == "depthwise":
                y, _ = DEPTHWISE_CONV2D.reference.forward(x, step.weight, step.stride, step.padding)
            else:
                y, _ = POINTWISE_CONV2D.reference.forward(x, step.weight)
            y += step.bias
            if step.activation == "relu6":
                np.clip(y, 0, 6, out=y)
            elif step.activation == "relu":
                np.maximum(y, 0, out=y)
            if step.add_residual:
                y += shortcut
            x = y
        pooled = x.mean(axis=(1, 2))
        return pooled @ self.classifier_weight.T + self.classifier_bias   # dropout is the identity at inference

    def forward_fast(self, x: np.ndarray) -> np.ndarray:
        """The same steps on the fast kernels: each convolution, then its bias, activation and residual add in
        one pass in place; the pointwise products write into this thread's buffers; the last pass pools."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None or buffers.key != (x.shape, x.dtype):
            buffers = _Buffers(self.steps, x.shape, x.dtype)
            buffers.key = (x.shape, x.dtype)
            self._local.buffers = buffers
        x = np.ascontiguousarray(x)
        shortcut = None
        last = len(self.steps) - 1
        for i, (step, out, T_t) in enumerate(zip(self.steps, buffers.out, self._pointwise_t)):
            if step.block_start:
                shortcut = x
            if step.kind == "conv2d":
                y, _ = CONV2D.fast.forward(x, step.weight, step.stride, step.padding)
            elif step.kind == "depthwise":
                y, _ = DEPTHWISE_CONV2D.fast.forward(x, step.weight, step.stride, step.padding)
            else:
                y = out
                np.matmul(x.reshape(-1, x.shape[-1]), T_t, out=y.reshape(-1, y.shape[-1]))
            if i == last:
                pooled = fast_inference.bias_act_pool(y, step.bias, step.activation)
                break
            fast_inference.bias_act(y, step.bias, step.activation, shortcut if step.add_residual else None)
            x = y
        return pooled @ self.classifier_weight.T + self.classifier_bias

    def __repr__(self) -> str:
        return (f"FoldedMobileNetV2({len(self.steps)} folded convolutions, "
                f"num_classes={self.classifier_weight.shape[0]}, width_mult={self.config['width_mult']})")
