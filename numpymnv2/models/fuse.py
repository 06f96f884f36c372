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
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

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


class FoldedMobileNetV2:
    """MobileNetV2 for inference with BatchNorm folded into the convolutions (see :func:`fold_batchnorm`).

    ``folded(x)`` returns the logits ``(N, num_classes)`` of images ``x`` of shape ``(N, H, W, 3)``, validated
    as the original model validates them. Attributes: ``steps`` (list of :class:`FoldedConv`),
    ``classifier_weight`` ``(num_classes, last_channel)``, ``classifier_bias`` ``(num_classes,)``.
    """

    def __init__(self, steps: list, classifier_weight: np.ndarray, classifier_bias: np.ndarray, source):
        self.steps = steps
        self.classifier_weight, self.classifier_bias = classifier_weight, classifier_bias
        self.config = dict(source.config)
        self._check = source.check_input     # the same input validation as the unfused model

    def num_parameters(self) -> int:
        return int(sum(s.weight.size + s.bias.size for s in self.steps) + self.classifier_weight.size
                   + self.classifier_bias.size)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check(x)
        shortcut = None
        for step in self.steps:
            if step.block_start:
                shortcut = x
            if step.kind == "conv2d":
                y, _ = CONV2D.active().forward(x, step.weight, step.stride, step.padding)
            elif step.kind == "depthwise":
                y, _ = DEPTHWISE_CONV2D.active().forward(x, step.weight, step.stride, step.padding)
            else:
                y, _ = POINTWISE_CONV2D.active().forward(x, step.weight)
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

    def __repr__(self) -> str:
        return (f"FoldedMobileNetV2({len(self.steps)} folded convolutions, "
                f"num_classes={self.classifier_weight.shape[0]}, width_mult={self.config['width_mult']})")
