"""Per-layer table of a network: output shape, parameters and multiply-adds, and the ``numpymnv2 summary`` command.

Counting conventions, those of the paper and torchvision (so the totals can be compared with published numbers):

* parameters are the trainable ones (BatchNorm weight and bias included, running statistics excluded);
* multiply-adds (MAdds) are those of the convolutions and the classifier, for one image: a convolution with
  weight ``w`` and output ``H_out x W_out`` costs ``H_out W_out w.size`` (each output value is a dot product of
  one filter with one patch), a Linear layer ``w.size``. BatchNorm, ReLU6, residual adds and pooling are not
  counted.

Nothing runs forward: shapes are propagated from the layers' sizes and strides, so a summary of the widest
model at a large resolution is instant.
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from numpymnv2._checks import conv_output_size
from numpymnv2.nn.layers import (BatchNorm2d, Conv2d, ConvBNAct, DepthwiseConv2d, Dropout, GlobalAvgPool2d, Linear,
                                 PointwiseConv2d, ReLU, ReLU6)
from numpymnv2.nn.module import Module, Sequential


@dataclasses.dataclass
class SummaryRow:
    name: str                 # "features.3", or "features.3.conv.1.0" in a per-leaf summary
    layer: str                # what it is, e.g. "InvertedResidual 24->24 t=6 s=1 +x"
    output_shape: tuple       # (H, W, C) per image, or (C,) after pooling
    params: int
    madds: int


@dataclasses.dataclass
class Summary:
    """The result of :func:`summary`: ``rows`` and the totals ``total_params`` and ``total_madds``."""
    rows: list
    input_shape: tuple        # (H, W, C)
    total_params: int
    total_madds: int

    def __str__(self) -> str:
        shapes = ["x".join(str(d) for d in r.output_shape) for r in self.rows]
        w_name = max([len(r.name) for r in self.rows] + [5])
        w_layer = max([len(r.layer) for r in self.rows] + [5])
        w_shape = max(len(s) for s in shapes + ["output"])
        header = (f"{'name':<{w_name}}  {'layer':<{w_layer}}  {'output':>{w_shape}}  {'params':>11}  "
                  f"{'MAdds':>13}")
        lines = [f"input {'x'.join(str(d) for d in self.input_shape)}", header, "-" * len(header)]
        for r, shape in zip(self.rows, shapes):
            lines.append(f"{r.name:<{w_name}}  {r.layer:<{w_layer}}  {shape:>{w_shape}}  {r.params:>11,}  "
                         f"{r.madds:>13,}")
        lines.append("-" * len(header))
        lines.append(f"total parameters {self.total_params:,} ({self.total_params / 1e6:.2f}M); "
                     f"multiply-adds {self.total_madds:,} ({self.total_madds / 1e6:.1f}M) per image")
        return "\n".join(lines)


def _leaf_step(m: Module, shape: tuple, name: str) -> tuple[tuple, int]:
    """Output shape and multiply-adds of one leaf layer given its input shape ``(H, W, C)`` or ``(C,)``."""
    if isinstance(m, (Conv2d, DepthwiseConv2d)):
        H, W, _ = shape
        C_out = m.out_channels if isinstance(m, Conv2d) else m.channels
        H_out = conv_output_size(H, m.kernel_size, m.stride, m.padding, f"summary: {name}", "H")
        W_out = conv_output_size(W, m.kernel_size, m.stride, m.padding, f"summary: {name}", "W")
        return (H_out, W_out, C_out), H_out * W_out * m.weight.data.size
    if isinstance(m, PointwiseConv2d):
        H, W, _ = shape
        return (H, W, m.out_channels), H * W * m.weight.data.size
    if isinstance(m, Linear):
        return (m.out_features,), m.weight.data.size
    if isinstance(m, GlobalAvgPool2d):
        return (shape[-1],), 0
    if isinstance(m, (BatchNorm2d, ReLU6, ReLU, Dropout)):
        return shape, 0
    raise TypeError(f"summary: does not know how to count layer {name} ({type(m).__name__})")


def _describe(m: Module) -> str:
    from numpymnv2.models.mobilenetv2 import InvertedResidual

    if isinstance(m, InvertedResidual):
        text = f"InvertedResidual {m.inp}->{m.oup} t={m.expand_ratio} s={m.stride}"
        return text + (" +x" if m.use_res_connect else "")
    if isinstance(m, ConvBNAct):
        conv = m.conv
        kind = {Conv2d: "conv", DepthwiseConv2d: "dwconv", PointwiseConv2d: "conv"}[type(conv)]
        k = getattr(conv, "kernel_size", 1)
        text = f"{kind}{k}x{k} s{getattr(conv, 'stride', 1)}+BN"
        return text + (f"+{m.activation}" if m.activation else "")
    if isinstance(m, Conv2d):
        return f"conv{m.kernel_size}x{m.kernel_size} s{m.stride}"
    if isinstance(m, DepthwiseConv2d):
        return f"dwconv{m.kernel_size}x{m.kernel_size} s{m.stride}"
    if isinstance(m, PointwiseConv2d):
        return "conv1x1"
    if isinstance(m, Dropout):
        return f"Dropout p={m.p}"
    return type(m).__name__


def _units(model: Module, leaves: bool) -> list[tuple[str, Module]]:
    """The rows: children of the model, with its Sequential children opened one level (features.3, ...)."""
    if leaves:
        return [(name, m) for name, m in model.named_modules() if not m._modules]
    units = []
    for name, child in model._modules.items():
        if isinstance(child, Sequential):
            units.extend((f"{name}.{key}", grandchild) for key, grandchild in child._modules.items())
        else:
            units.append((name, child))
    return units


def summary(model: Module, resolution=224, leaves: bool = False) -> Summary:
    """Per-layer output shapes, parameters and multiply-adds of ``model`` for one ``resolution`` image.

    Parameters
    ----------
    model : MobileNetV2 (or a Module built from the same layers, run in registration order)
    resolution : int or (int, int)
        Input height and width.
    leaves : bool
        One row per leaf layer (convolution, BatchNorm, ...) instead of one per block.

    Returns
    -------
    Summary
        Printable; ``.rows``, ``.total_params`` (trainable parameters) and ``.total_madds`` (per image).
    """
    H, W = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if min(H, W) < 1:
        raise ValueError(f"summary: resolution must be positive, got {resolution!r}")
    check_input = getattr(model, "check_input", None)
    if check_input is not None:     # the model's own rule (MobileNetV2: at least 32x32), on a stand-in batch
        check_input(np.broadcast_to(np.zeros((), model.param_dtype()), (1, H, W, 3)), finite=False)
    shape = (H, W, 3)
    rows = []
    for name, unit in _units(model, leaves):
        madds = 0
        for leaf_name, leaf in unit.named_modules(name):
            if leaf._modules:
                continue
            shape, m = _leaf_step(leaf, shape, leaf_name)
            madds += m
        rows.append(SummaryRow(name, _describe(unit), shape, unit.num_parameters(), madds))
    return Summary(rows, (H, W, 3), model.num_parameters(), sum(r.madds for r in rows))


# ---------------------------------------------------------------------------------------------------------
# the command line: `numpymnv2 summary`


def configure_parser(p: argparse.ArgumentParser) -> None:
    from numpymnv2 import _argtypes as T
    p.description = ("Per-layer table of MobileNetV2: output shapes, parameters and multiply-adds per image. "
                     "Without --checkpoint, of a freshly built network (by default the paper's: width 1.0, 1000 "
                     "classes, 224x224); with it, of the trained model the file holds.")
    p.add_argument("--checkpoint", metavar="PATH", default=None, type=T.path,
                   help="the model of a checkpoint or run folder (numpymnv2 train, numpymnv2 convert) or of a "
                        "weights file; its architecture and resolution are read from the file")
    p.add_argument("--width", type=T.positive_float, default=None, help="width multiplier (default 1.0)")
    p.add_argument("--resolution", type=T.resolution, default=None,
                   help="input height and width (default: the checkpoint's, else 224)")
    p.add_argument("--num-classes", type=T.positive_int, default=None, help="classifier outputs (default 1000)")
    T.add_arch_argument(p, None, "imagenet, the paper's network; with --checkpoint, the file's")
    T.add_deprecated_preset_argument(p)
    p.add_argument("--leaves", action="store_true", help="one row per layer instead of per block")


def run(args) -> int:
    from numpymnv2.models.footprint import check_model_fits
    from numpymnv2.models.mobilenetv2 import MobileNetV2, arch_kwargs, arch_of

    if args.checkpoint is not None:
        from numpymnv2.interop.export import describe, load_source
        model, preprocess, _, kind = load_source(args.checkpoint, args.arch, args.width, args.num_classes)
        resolution = args.resolution or (preprocess or {}).get("resolution", 224)
        print(f"{kind} {args.checkpoint}: {describe(model)}")
    else:
        width = 1.0 if args.width is None else args.width
        num_classes = 1000 if args.num_classes is None else args.num_classes
        arch = args.arch or "imagenet"
        check_model_fits(dict(num_classes=num_classes, width_mult=width))
        model = MobileNetV2(num_classes=num_classes, width_mult=width, dropout=0.0, **arch_kwargs(arch))
        resolution = args.resolution or 224
        print(f"MobileNetV2 width_mult={width:g} num_classes={num_classes} arch={arch_of(model.config)}")
    print(summary(model, resolution=resolution, leaves=args.leaves))
    return 0
