"""``numpymnv2 export SOURCE OUT.onnx``: a trained model as an ONNX file, checked in onnxruntime.

``SOURCE`` is a training checkpoint (``.npz`` from ``numpymnv2 train``, or a run folder meaning its
``last.npz``; also one written by ``numpymnv2 convert``) or a weights file (``numpymnv2.models.save_weights``).
A checkpoint and a weights file written by numpymnv2 describe their own architecture; ``--arch``, ``--width``
and ``--num-classes`` are needed only for a weights file without that record, and must agree with it when given.
The graph is built by :func:`numpymnv2.interop.onnx.to_onnx`; see that module for what it computes.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from numpymnv2.models.mobilenetv2 import arch_of


def configure_parser(p: argparse.ArgumentParser) -> None:
    from numpymnv2._argtypes import add_arch_argument, path
    from numpymnv2.interop.onnx import DEFAULT_OPSET, DEFAULT_TOLERANCE, MAX_OPSET, MIN_OPSET

    p.add_argument("source", metavar="CHECKPOINT_OR_WEIGHTS", type=path,
                   help="a checkpoint or run folder from `numpymnv2 train`, or a weights .npz")
    p.add_argument("output", metavar="OUT.onnx", type=path, help="the ONNX file to write (replaced atomically)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    p.add_argument("--preprocess", action="store_true",
                   help="take uint8 RGB images (N, H, W, 3) and apply the checkpoint's preprocessing inside the "
                        "graph (resize to its resolution, normalise); default: float32 NHWC input as model(x)")
    p.add_argument("--softmax", action="store_true", help="output class probabilities instead of logits")
    check = p.add_mutually_exclusive_group()
    check.add_argument("--check", dest="check", action="store_true", default=True,
                       help="run the file in onnxruntime on random inputs and compare with numpymnv2 (default)")
    check.add_argument("--no-check", dest="check", action="store_false", help="skip that comparison")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="T",
                   help=f"largest relative difference the check accepts (default {DEFAULT_TOLERANCE:g})")
    arch = p.add_argument_group("architecture of a weights file that does not record it")
    add_arch_argument(arch, None, "imagenet, as torchvision's weights")
    arch.add_argument("--width", type=float, default=None, metavar="W", help="width multiplier (default 1.0)")
    arch.add_argument("--num-classes", type=int, default=None, metavar="K",
                      help="classifier outputs (default: read from the weights)")


def run(args) -> int:
    from numpymnv2._argtypes import check_distinct_output
    from numpymnv2.interop.onnx import to_onnx

    if not 0 < args.tolerance < 1:
        raise ValueError(f"--tolerance must be between 0 and 1, got {args.tolerance}")
    check_distinct_output(args.output, args.source)
    try:
        check_replaceable(args.output)
        model, preprocess, classes, kind = load_source(args.source, args.arch, args.width, args.num_classes)
        if args.preprocess and preprocess is None:
            raise ValueError(f"--preprocess needs the preprocessing record of a training checkpoint, and "
                             f"{args.source} is a weights file without one; export it without --preprocess (the "
                             f"graph then takes float32 images normalised as in training)")
        print(f"{kind} {args.source}: {describe(model)}")
        result = to_onnx(model, args.output, opset=args.opset, preprocess=preprocess if args.preprocess else None,
                         softmax=args.softmax, classes=classes, check=args.check, tolerance=args.tolerance)
    except (ImportError, OSError) as exc:
        print(f"numpymnv2 export: error: {exc}", file=sys.stderr)
        return 2
    if args.preprocess:
        R = preprocess["resolution"]
        shape = f"uint8 RGB (batch, height, width, 3), resized to {R}x{R} and normalised in the graph"
    else:
        shape = "float32 (batch, height, width, 3) NHWC, preprocessed as for model(x)"
    if model.config["dtype"] != "float32":
        print(f"note: the model is {model.config['dtype']}; the graph computes in float32 (its weights rounded)")
    print(f"wrote {result.path}: {result.size_bytes / 1e6:.1f} MB, opset {result.opset}; input "
          f"'{result.input_name}' {shape}; output '{result.output_name}' (batch, {model.num_classes})")
    if result.check is None:
        print("not checked in onnxruntime (--no-check)")
    else:
        print(f"checked: {result.check}")
    return 0


def check_replaceable(output) -> None:
    """An existing ``output`` is replaced only when it is an ONNX model (a re-export), never another file.

    ``numpymnv2 export best.npz notes.txt`` is far more likely a slip than a wish to lose the notes.
    """
    from numpymnv2.interop.onnx import import_onnx

    p = Path(output)
    if not p.is_file():
        return                      # absent (written), or a folder (to_onnx says what to give instead)
    onnx = import_onnx()
    is_onnx = False
    if p.stat().st_size < 2 ** 31:  # protobuf's limit; ONNX files above it keep their weights elsewhere
        try:
            proto = onnx.load_model_from_string(p.read_bytes())
            is_onnx = proto.ir_version > 0 and len(proto.graph.node) > 0
        except Exception:           # protobuf's DecodeError and friends: not an ONNX model
            is_onnx = False
    if not is_onnx:
        raise ValueError(f"{p} exists and is not an ONNX model; export replaces only an earlier export: remove "
                         f"the file or choose another name")


def describe(model) -> str:
    c = model.config
    arch = arch_of(c) or f"stem_stride={c['stem_stride']}, inverted_residual_setting={c['inverted_residual_setting']}"
    extra = "".join(f", {k}=False" for k in ("linear_bottleneck", "use_shortcut") if not c.get(k, True))
    return f"MobileNetV2(width_mult={c['width_mult']:g}, num_classes={c['num_classes']}, arch {arch}{extra})"


def arch_spec(arch: str, width: float, num_classes: int) -> dict:
    """The MobileNetV2 constructor arguments of an ``--arch`` name, as ``numpymnv2 train`` builds them."""
    from numpymnv2.train.config import TrainConfig, model_spec

    spec = model_spec(TrainConfig(arch=arch, width=width), num_classes)
    return {k: v for k, v in spec.items() if k not in ("name", "seed")}


def _agree(config: dict, arch, width, num_classes, source) -> None:
    """The architecture options, when given, must match what the file records."""
    stored = {"--arch": arch_of(config), "--width": config["width_mult"], "--num-classes": config["num_classes"]}
    given = {"--arch": arch, "--width": width, "--num-classes": num_classes}
    wrong = [f"{k} {given[k]} (the file has {stored[k]})" for k in given
             if given[k] is not None and given[k] != stored[k]]
    if wrong:
        raise ValueError(f"{source} records its architecture, {describe_config(config)}, and the options disagree: "
                         f"{'; '.join(wrong)}. Leave them out (they are only for weights files that lack the "
                         f"record)")


def describe_config(config: dict) -> str:
    return f"width {config['width_mult']:g}, {config['num_classes']} classes, arch {arch_of(config) or 'custom'}"


def load_source(path, arch=None, width=None, num_classes=None):
    """``(model, preprocess, classes, kind)`` from a checkpoint, run folder or weights file; model in eval mode.

    ``preprocess`` and ``classes`` are None for a weights file; ``kind`` is "checkpoint" or "weights".
    """
    from numpymnv2.models import MobileNetV2, load_weights, read_weights
    from numpymnv2.train.inference import load_trained_model

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no such checkpoint or weights file: {p}")
    names = _archive_names(p)
    if p.is_dir() or "meta/format.npy" in names:
        model, ckpt = load_trained_model(p)
        _agree(model.config, arch, width, num_classes, ckpt.path)
        return model, ckpt.config["preprocess"], ckpt.config["classes"], "checkpoint"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise ValueError(f"{p} is a PyTorch file (torch.save); convert it to a numpymnv2 checkpoint first: "
                         f"numpymnv2 convert {p} model.npz, then numpymnv2 export model.npz OUT.onnx")
    state, config = read_weights(p)
    if config is not None:
        _agree(config, arch, width, num_classes, p)
        return load_weights(p).eval(), None, None, "weights"
    if num_classes is None:
        head = state.get("classifier.1.weight")
        if head is None or head.ndim != 2:
            raise ValueError(f"{p} records no architecture and has no classifier.1.weight to read the number of "
                             f"classes from; is it a MobileNetV2 weights file? Pass --num-classes")
        num_classes = int(head.shape[0])
    spec = arch_spec(arch or "imagenet", 1.0 if width is None else width, num_classes)
    try:
        model = load_weights(p, MobileNetV2(**spec))
    except ValueError as exc:
        lines = str(exc).splitlines()
        shown = lines[:6] + ([f"  ... ({len(lines) - 6} more lines)"] if len(lines) > 6 else [])
        raise ValueError("\n".join(shown) + f"\n{p} records no architecture: pass the --arch, --width and "
                         f"--num-classes it was trained with (tried {describe_config(spec)})") from None
    return model.eval(), None, None, "weights"


def _archive_names(p: Path) -> set:
    """Member names of a zip archive (an ``.npz`` or a ``torch.save`` file); empty for anything else."""
    if p.is_dir() or not zipfile.is_zipfile(p):
        return set()
    try:
        with zipfile.ZipFile(p) as z:
            return set(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return set()
