"""ONNX export: a trained MobileNetV2 as one ``.onnx`` file for onnxruntime, OpenVINO, TensorRT and friends.

The graph is written with the ``onnx`` package's own helpers (``onnx.helper``, ``onnx.numpy_helper``) from
:func:`numpymnv2.models.fold_batchnorm`, without torch. It computes what ``model.eval()(x)`` computes, in the
form onnxruntime runs fastest::

    input   (N, H, W, 3) float32, NHWC: exactly what model(x) takes (batch, height and width are dynamic)
    Transpose to NCHW, once
    for each folded step (BatchNorm folded into the convolution, see numpymnv2.models.fuse):
        Conv(w_folded, b_folded)        1x1 pointwise; 3x3 depthwise as Conv with group = channels; 3x3 stem
        Clip(0, 6)                      ReLU6 (Relu for "relu"; nothing for the linear bottleneck)
        Add(shortcut)                   the residual of an inverted residual block (use_res_connect)
    GlobalAveragePool -> Flatten -> Gemm(transB=1)    dropout is the identity at inference
    logits  (N, num_classes) float32

Weights go from our layouts to ONNX's (C_out, C_in / group, K, K) as for PyTorch (the table in
:mod:`numpymnv2.interop.torchvision`). The graph always computes in float32; a float64 model's folded weights are
rounded to float32.

With ``preprocess`` (a checkpoint's ``config["preprocess"]``) the graph instead takes raw pixels and applies
the checkpoint's evaluation transform (:func:`numpymnv2.train.config.make_transform`) itself::

    image   (N, H, W, 3) uint8 RGB, any H and W
    Cast to float32, Transpose to NCHW
    (grey-scale models) luminance as Pillow's convert("L"): floor((19595 R + 38470 G + 7471 B + 32768) / 2^16)
    Resize to resolution x resolution, bilinear with half-pixel centres (numpymnv2.data.bilinear_resize)
    x * (1 / (255 std)) - mean / std   per channel (x / 255, then Normalize; grey broadcast to 3 channels)
    ... the network as above ... [Softmax: probabilities (N, num_classes) instead of logits]

An image of the dataset's stored size then reaches the network exactly as a test image did in training (the
bilinear resize does not antialias: shrink much larger photos first, e.g. with Pillow's ``resize``, as
``numpymnv2 predict`` does). The luminance is exact in float32 (every partial sum stays below 2^24), so a
grey-scale model sees the same pixels as from Pillow's ``Image.convert("L")``.

The class names, the preprocessing record and the architecture go into the model's metadata
(``metadata_props``: ``classes``, ``preprocess``, ``numpymnv2_config`` as JSON; ``input_layout`` ``NHWC``).
onnx and onnxruntime are imported only when these functions run (``pip install "numpymnv2[onnx]"``).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from numpymnv2._atomic import atomic_write
from numpymnv2.interop.torchvision import ours_to_torch

DEFAULT_OPSET = 17
# Every opset in this range passes onnx.checker (full_check) and runs in onnxruntime (checked with onnx 1.23.2 and
# onnxruntime 1.32.0; the tests check them all). Older packages know fewer: the installed onnx is asked.
MIN_OPSET = 11
MAX_OPSET = 28
DEFAULT_TOLERANCE = 1e-4
# Pillow's ITU-R 601-2 luma in 16-bit fixed point (L = (19595 R + 38470 G + 7471 B + 32768) >> 16)
LUMA_WEIGHTS = (19595, 38470, 7471)
INSTALL_HINT = 'pip install "numpymnv2[onnx]" (or: pip install onnx onnxruntime)'


class OnnxMismatchError(ValueError):
    """onnxruntime's outputs on the exported file differ from numpymnv2's by more than the tolerance."""


def import_onnx():
    """``import onnx``, or an ImportError that says how to install it."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx package, which is not installed: {INSTALL_HINT}") from exc
    return onnx


def import_onnxruntime():
    """``import onnxruntime``, or an ImportError that says how to install it (or skip the check)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"checking the exported file needs onnxruntime, which is not installed: {INSTALL_HINT}; "
                          f"or skip the check (check=False, numpymnv2 export --no-check)") from exc
    return onnxruntime


# ----------------------------------------------------------------------------------------------------------
# building the graph
# ----------------------------------------------------------------------------------------------------------
class _GraphBuilder:
    """The nodes and initializers of one graph; a node is named after its output (from the layer names)."""

    def __init__(self, onnx):
        self.onnx, self.helper, self.numpy_helper = onnx, onnx.helper, onnx.numpy_helper
        self.nodes, self.initializers = [], []

    def constant(self, name: str, array) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs, output: str, name: str | None = None, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op, list(inputs), [output], name=name or output, **attrs))
        return output


def _check_opset(opset) -> int:
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"to_onnx: opset must be an integer from {MIN_OPSET} to {MAX_OPSET} (the range checked "
                         f"with onnxruntime), got {opset!r}")
    return int(opset)


def _check_installed_opset(onnx, opset: int) -> None:
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ValueError(f"to_onnx: the installed onnx {onnx.__version__} knows opsets up to {newest}, not "
                         f"{opset}; choose a lower opset or upgrade onnx (pip install -U onnx)")


def _check_preprocess(preprocess) -> dict:
    need = ("resolution", "channels", "mean", "std")
    if not isinstance(preprocess, dict) or any(k not in preprocess for k in need):
        raise ValueError(f"to_onnx: preprocess must be a checkpoint's config['preprocess'] record with "
                         f"{', '.join(need)}; got {preprocess!r}")
    mean = np.asarray(preprocess["mean"], np.float64).reshape(-1)
    std = np.asarray(preprocess["std"], np.float64).reshape(-1)
    if preprocess["channels"] not in (1, 3) or mean.shape != (3,) or std.shape != (3,) or (std <= 0).any():
        raise ValueError(f"to_onnx: preprocess needs channels 1 or 3 and three means and positive stds, got "
                         f"channels={preprocess['channels']!r}, mean={preprocess['mean']!r}, "
                         f"std={preprocess['std']!r}")
    R = preprocess["resolution"]
    if isinstance(R, bool) or not isinstance(R, (int, np.integer)) or R < 32:
        raise ValueError(f"to_onnx: preprocess['resolution'] must be an integer >= 32, got {R!r}")
    return preprocess


def _add_preprocessing(g: _GraphBuilder, image: str, preprocess: dict, opset: int) -> str:
    """uint8 NHWC RGB -> the normalised float32 NCHW batch at the checkpoint's resolution."""
    TensorProto = g.onnx.TensorProto
    x = g.node("Cast", [image], "image_float", to=TensorProto.FLOAT)
    x = g.node("Transpose", [x], "image_nchw", perm=[0, 3, 1, 2])
    if preprocess["channels"] == 1:
        # Pillow's convert("L"): every product and partial sum is an integer below 2^24, so exact in float32
        luma = np.asarray(LUMA_WEIGHTS, np.float32).reshape(1, 3, 1, 1)
        x = g.node("Conv", [x, g.constant("luma.weight", luma), g.constant("luma.bias", np.float32([32768]))],
                   "luma_fixed_point", kernel_shape=[1, 1])
        x = g.node("Mul", [x, g.constant("luma.scale", np.float32(2.0 ** -16))], "luma_scaled")
        x = g.node("Floor", [x], "luma")
    # Resize to (N, C, R, R): the sizes input is the input's first two dimensions and the resolution
    R = int(preprocess["resolution"])
    shape = g.node("Shape", [x], "image_shape")
    nc = g.node("Slice", [shape, g.constant("resize.starts", np.int64([0])),
                          g.constant("resize.ends", np.int64([2]))], "image_batch_channels")
    sizes = g.node("Concat", [nc, g.constant("resize.resolution", np.int64([R, R]))], "resize_sizes", axis=0)
    if opset >= 13:
        roi, scales = "", ""
    else:   # roi and scales are required inputs before opset 13; empty tensors mean "not given"
        roi = g.constant("resize.roi", np.zeros(0, np.float32))
        scales = g.constant("resize.scales", np.zeros(0, np.float32))
    x = g.node("Resize", [x, roi, scales, sizes], "image_resized", mode="linear",
               coordinate_transformation_mode="half_pixel")
    # ToFloat (x / 255) and Normalize ((x - mean) / std) as one multiply-add; a grey channel broadcasts to three
    mean = np.asarray(preprocess["mean"], np.float64)
    std = np.asarray(preprocess["std"], np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(1, 3, 1, 1)
    shift = (-mean / std).astype(np.float32).reshape(1, 3, 1, 1)
    x = g.node("Mul", [x, g.constant("normalize.scale", scale)], "image_scaled")
    return g.node("Add", [x, g.constant("normalize.shift", shift)], "image_normalized")


def _onnx_conv_weight(step) -> np.ndarray:
    return ours_to_torch(step.weight, step.kind).astype(np.float32)


def _add_network(g: _GraphBuilder, x: str, folded, logits: str) -> str:
    """The folded steps, pooling and classifier on the NCHW float32 tensor ``x``, writing ``logits``."""
    clip_min = clip_max = None
    shortcut = None
    for step in folded.steps:
        if step.block_start:
            shortcut = x
        w = _onnx_conv_weight(step)
        C_out, _, K, _ = w.shape
        group = C_out if step.kind == "depthwise" else 1
        p = int(step.padding)
        y = g.node("Conv", [x, g.constant(f"{step.name}.weight", w),
                            g.constant(f"{step.name}.bias", step.bias.astype(np.float32))],
                   f"{step.name}.conv", kernel_shape=[K, K], strides=[int(step.stride)] * 2, pads=[p] * 4,
                   group=group)
        if step.activation == "relu6":
            if clip_min is None:
                clip_min = g.constant("relu6.min", np.float32(0.0))
                clip_max = g.constant("relu6.max", np.float32(6.0))
            y = g.node("Clip", [y, clip_min, clip_max], f"{step.name}.relu6")
        elif step.activation == "relu":
            y = g.node("Relu", [y], f"{step.name}.relu")
        elif step.activation is not None:
            raise ValueError(f"to_onnx: {step.name}: unknown activation {step.activation!r} "
                             f"(expected 'relu6', 'relu' or None)")
        if step.add_residual:
            if shortcut is None:
                raise ValueError(f"to_onnx: {step.name} adds a residual but no block started before it")
            y = g.node("Add", [y, shortcut], f"{step.name}.residual")
            shortcut = None
        x = y
    x = g.node("GlobalAveragePool", [x], "pool")
    x = g.node("Flatten", [x], "pool_flat", axis=1)
    return g.node("Gemm", [x, g.constant("classifier.1.weight", folded.classifier_weight.astype(np.float32)),
                           g.constant("classifier.1.bias", folded.classifier_bias.astype(np.float32))],
                  logits, transB=1)


def build_onnx(model, *, opset: int = DEFAULT_OPSET, preprocess: dict | None = None, softmax: bool = False,
               classes=None):
    """The ONNX graph of ``model`` in evaluation mode, as an ``onnx.ModelProto`` (see the module docstring).

    Parameters
    ----------
    model : MobileNetV2
        Any mode; the graph computes evaluation mode (running statistics, no dropout). Not modified.
    opset : int
        ONNX opset of the default domain, ``MIN_OPSET`` to ``MAX_OPSET`` (default 17).
    preprocess : dict, optional
        A checkpoint's ``config["preprocess"]``: the graph then takes uint8 RGB images ``(N, H, W, 3)`` named
        ``image`` and normalises them itself. Without it the input is ``input``, ``(N, H, W, 3)`` float32.
    softmax : bool
        Output ``probabilities`` (softmax over the classes) instead of ``logits``.
    classes : sequence of str, optional
        Class names, one per output, stored in the metadata as JSON under ``classes``.
    """
    from numpymnv2.models import MobileNetV2, fold_batchnorm

    if not isinstance(model, MobileNetV2):
        raise TypeError(f"to_onnx: expected a numpymnv2 MobileNetV2, got {type(model).__name__}")
    opset = _check_opset(opset)
    num_classes = int(model.num_classes)
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(classes) != num_classes:
            raise ValueError(f"to_onnx: {len(classes)} class names for a model with {num_classes} outputs")
    if preprocess is not None:
        preprocess = _check_preprocess(preprocess)
    onnx = import_onnx()
    _check_installed_opset(onnx, opset)
    helper, TensorProto = onnx.helper, onnx.TensorProto

    g = _GraphBuilder(onnx)
    if preprocess is None:
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "height", "width", 3])
        inp.doc_string = "float32 images (N, H, W, 3), NHWC, preprocessed as for numpymnv2's model(x); H, W >= 32"
        x = g.node("Transpose", ["input"], "input_nchw", perm=[0, 3, 1, 2])
    else:
        inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", "height", "width", 3])
        inp.doc_string = (f"uint8 RGB images (N, H, W, 3); resized to {preprocess['resolution']}x"
                          f"{preprocess['resolution']} and normalised inside the graph")
        x = _add_preprocessing(g, "image", preprocess, opset)
    out_name = "probabilities" if softmax else "logits"
    logits = _add_network(g, x, fold_batchnorm(model), "class_logits" if softmax else "logits")
    if softmax:
        g.node("Softmax", [logits], out_name, axis=1)
    out = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", num_classes])
    out.doc_string = f"(N, {num_classes}) " + ("class probabilities" if softmax else "logits")
    graph = helper.make_graph(g.nodes, "numpymnv2_mobilenetv2", [inp], [out], g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    import numpymnv2
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="numpymnv2",
                              producer_version=numpymnv2.__version__,
                              ir_version=helper.find_min_ir_version_for(opsets),
                              doc_string="MobileNetV2 exported by numpymnv2 (evaluation mode, BatchNorm folded)")
    meta = {"numpymnv2_config": json.dumps(model.config), "input_layout": "NHWC", "output": out_name}
    if classes is not None:
        meta["classes"] = json.dumps(classes)
    if preprocess is not None:
        meta["preprocess"] = json.dumps(preprocess)
    helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    return proto


# ----------------------------------------------------------------------------------------------------------
# checking with onnxruntime
# ----------------------------------------------------------------------------------------------------------
@dataclass
class OnnxCheck:
    """onnxruntime against numpymnv2 on a few inputs: per input shape, the largest absolute and relative error.

    The relative error of one input is ``max |onnx - numpymnv2| / max |numpymnv2|`` over the whole output.
    """

    shapes: list = field(default_factory=list)
    max_abs: list = field(default_factory=list)
    max_rel: list = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def worst_rel(self) -> float:
        return max(self.max_rel, default=0.0)

    @property
    def worst_abs(self) -> float:
        return max(self.max_abs, default=0.0)

    @property
    def ok(self) -> bool:
        return self.worst_rel <= self.tolerance

    def __str__(self) -> str:
        rows = ", ".join(f"{tuple(s)}: {r:.2e}" for s, r in zip(self.shapes, self.max_rel))
        return (f"onnxruntime vs numpymnv2: largest relative difference {self.worst_rel:.2e} (absolute "
                f"{self.worst_abs:.2e}; tolerance {self.tolerance:g}) on inputs {rows}")


def luma(images: np.ndarray) -> np.ndarray:
    """Pillow's ``convert("L")`` of uint8 RGB images ``(N, H, W, 3)``, as ``(N, H, W, 1)`` uint8."""
    weights = np.asarray(LUMA_WEIGHTS, np.int64)
    return ((images.astype(np.int64) @ weights + 32768) >> 16).astype(np.uint8)[..., None]


def reference_outputs(model, x: np.ndarray, preprocess: dict | None = None, softmax: bool = False) -> np.ndarray:
    """What the exported graph should output for ``x``, computed by numpymnv2 in evaluation mode.

    ``x`` is a float batch for model(x) or, with ``preprocess``, uint8 RGB images (transformed as in
    :func:`numpymnv2.train.config.make_transform`, grey-scale models first through :func:`luma`). The modes of
    ``model`` and its sub-modules are restored afterwards.
    """
    if preprocess is not None:
        from numpymnv2.train.config import make_transform
        images = luma(x) if preprocess["channels"] == 1 else x
        record = dict(preprocess, image_size=list(images.shape[1:3]), dtype=model.config["dtype"])
        x = make_transform(record, train=False)(images, None)
    modes = [(m, m.training) for m in model.modules()]
    try:
        logits = model.eval()(np.asarray(x, dtype=model.config["dtype"]))
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    if not softmax:
        return logits
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def default_check_inputs(model, preprocess: dict | None = None, seed: int = 0) -> list:
    """A few random inputs at two batch sizes and two (one non-square) resolutions.

    Float batches are standard normal (what a normalised image looks like); with ``preprocess``, uint8 images
    of the dataset's stored size and of a larger, non-square size.
    """
    rng = np.random.default_rng(seed)
    if preprocess is None:
        R = 64
        shapes = [(1, R, R, 3), (3, R + 8, R + 24, 3)]
        return [rng.standard_normal(s).astype(np.float32) for s in shapes]
    H, W = preprocess.get("image_size", [preprocess["resolution"]] * 2)
    shapes = [(1, H, W, 3), (3, H + 5, W + 11, 3)]
    return [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]


def ort_session(source, threads: int | None = None):
    """An onnxruntime CPU session of an exported graph (path, bytes or ModelProto), all graph optimisations on.

    ``threads`` sets ``intra_op_num_threads`` (default: onnxruntime's choice, one per core).
    """
    ort = import_onnxruntime()
    if hasattr(source, "SerializeToString"):
        source = source.SerializeToString()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(source if isinstance(source, bytes) else os.fspath(source), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:    # onnxruntime's own exception classes are not importable by a stable name
        raise ValueError(f"onnxruntime {ort.__version__} cannot load the graph ({type(exc).__name__}: {exc}); an "
                         f"older onnxruntime may not know the opset: export with a lower opset or upgrade "
                         f"onnxruntime") from exc


def check_onnx(source, model, inputs=None, *, preprocess: dict | None = None, softmax: bool = False,
               tolerance: float = DEFAULT_TOLERANCE, seed: int = 0) -> OnnxCheck:
    """Run an exported graph in onnxruntime and compare it with numpymnv2 (:func:`reference_outputs`).

    Parameters
    ----------
    source : str, os.PathLike, bytes or onnx.ModelProto
    model : MobileNetV2
        The model that was exported.
    inputs : list of ndarray, optional
        Default: :func:`default_check_inputs`.
    preprocess, softmax
        As given to :func:`build_onnx`.
    tolerance : float
        Largest relative difference (see :class:`OnnxCheck`) accepted.

    Raises
    ------
    OnnxMismatchError
        When some input's relative difference exceeds ``tolerance``.
    """
    sess = ort_session(source)
    name = sess.get_inputs()[0].name
    inputs = default_check_inputs(model, preprocess, seed) if inputs is None else inputs
    report = OnnxCheck(tolerance=float(tolerance))
    for x in inputs:
        got = sess.run(None, {name: x})[0]
        want = reference_outputs(model, x, preprocess, softmax)
        diff = float(np.max(np.abs(got.astype(np.float64) - want)))
        scale = float(np.max(np.abs(want)))
        report.shapes.append(x.shape)
        report.max_abs.append(diff)
        report.max_rel.append(diff / scale if scale > 0 else diff)
    if not report.ok:
        raise OnnxMismatchError(f"the exported graph does not reproduce numpymnv2: {report}. This is a bug in "
                                f"the exporter; please report it with the model's configuration")
    return report


# ----------------------------------------------------------------------------------------------------------
# the public entry point
# ----------------------------------------------------------------------------------------------------------
@dataclass
class OnnxExport:
    """What :func:`to_onnx` wrote: the path, the opset, the input and output names, and the check (or None)."""

    path: str
    opset: int
    input_name: str
    output_name: str
    size_bytes: int
    check: OnnxCheck | None


def to_onnx(model, path, *, opset: int = DEFAULT_OPSET, preprocess: dict | None = None, softmax: bool = False,
            classes=None, check: bool = True, tolerance: float = DEFAULT_TOLERANCE) -> OnnxExport:
    """Export ``model`` (evaluation behaviour, BatchNorm folded) to the ONNX file ``path``.

    >>> from numpymnv2.interop import to_onnx
    >>> to_onnx(model, "model.onnx")                       # NHWC float32 in, logits out, checked in onnxruntime

    Parameters
    ----------
    model : MobileNetV2
        If it (or any sub-module) is in training mode, a warning says that evaluation mode is exported; the
        model itself is not changed.
    path : str or os.PathLike
        Written atomically (temporary file, fsync, rename): a failed export leaves an existing file as it was.
    opset, preprocess, softmax, classes
        See :func:`build_onnx`.
    check : bool
        Before writing, run the graph in onnxruntime on a few random inputs (two batch sizes, two resolutions)
        and compare with numpymnv2's outputs; a relative difference above ``tolerance`` raises
        :class:`OnnxMismatchError` and nothing is written.

    Returns
    -------
    OnnxExport
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"to_onnx: {path} is a folder; give the file to write, e.g. "
                                f"{os.path.join(path, 'model.onnx')}")
    proto = build_onnx(model, opset=opset, preprocess=preprocess, softmax=softmax, classes=classes)
    if any(m.training for m in model.modules()):
        warnings.warn("to_onnx: the model is in training mode; the ONNX graph computes evaluation mode (BatchNorm "
                      "with its running statistics, no dropout), as after model.eval()", UserWarning, stacklevel=2)
    data = proto.SerializeToString()
    report = None
    if check:
        report = check_onnx(data, model, preprocess=preprocess, softmax=softmax, tolerance=tolerance)
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as exc:
        message = (f"to_onnx: cannot write {path} ({exc.strerror or exc}); choose a path in a folder you can "
                   f"write to")
        error = type(exc)(message)
        error.errno = exc.errno
        raise error from exc
    return OnnxExport(path, int(opset), proto.graph.input[0].name, proto.graph.output[0].name, len(data), report)
