"""``numpymnv2 convert model.pth weights.npz``: a saved torchvision MobileNetV2 state_dict to our weights file.

The ``.pth`` file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` (no arbitrary
pickled code runs); torch is imported here, when the command runs, and nowhere else in the package. The output
is written by :func:`numpymnv2.models.save_weights` and loads back with ``numpymnv2.models.load_weights(path)``.
"""
from __future__ import annotations

import argparse
import os
import sys
import zipfile

from numpymnv2._argtypes import check_distinct_output
from numpymnv2._memory import format_bytes
from numpymnv2._untrusted import byte_budget, regular_file_size, zip_claimed_bytes


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError("numpymnv2 convert needs PyTorch to read .pth files: pip install torch "
                           "(converting a state_dict already in memory needs no torch: "
                           "numpymnv2.interop.from_torchvision)") from exc
    return torch


# A torchvision MobileNetV2 state_dict is 14 MB (width 1.0) to 25 MB (1.4); even 21,000 classes stay below this.
MAX_PTH_BYTES = 1024 ** 3


def load_torch_state_dict(path, max_bytes: int = MAX_PTH_BYTES) -> dict:
    """Read a torchvision state_dict saved with ``torch.save(model.state_dict(), path)`` as numpy arrays.

    A checkpoint dict holding the weights under ``"state_dict"`` or ``"model"`` is unwrapped. Before torch
    reads the file, its size (and for the zip format of PyTorch >= 1.6, the uncompressed size of every record)
    is compared with ``max_bytes``, so a small hostile file cannot make it allocate gigabytes.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"convert: no such file: {path}")
    budget = byte_budget(max_bytes)
    claimed = zip_claimed_bytes(path) if zipfile.is_zipfile(path) else regular_file_size(path, "convert")
    if claimed > budget:
        raise ValueError(f"convert: {path} holds {format_bytes(claimed)} of tensors (uncompressed), more than the "
                         f"{format_bytes(budget)} a MobileNetV2 state_dict can need; not the file you meant, or "
                         f"hostile")
    torch = _import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"convert: cannot read {path} as a PyTorch state_dict ({type(exc).__name__}: {exc})") \
            from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(hasattr(v, "detach") for v in obj.values()):
        raise ValueError(f"convert: {path} does not hold a state_dict (a dict of tensors); save one with "
                         f"torch.save(model.state_dict(), path)")
    return {k: v.detach().cpu().numpy() for k, v in obj.items()}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="torchvision MobileNetV2 state_dict (.pth) from torch.save(model.state_dict())")
    p.add_argument("output", help="numpymnv2 weights file to write (.npz)")
    from numpymnv2 import _argtypes as T
    p.add_argument("--width", type=T.positive_float, default=1.0,
                   help="width multiplier the weights were trained with")
    p.add_argument("--num-classes", type=T.positive_int, default=None,
                   help="classifier outputs (default: read from the file)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="of the weights written (default: float32, as torchvision's)")


def run(args) -> int:
    from numpymnv2.interop.torchvision import from_torchvision
    from numpymnv2.models.io import save_weights

    check_distinct_output(args.output, args.source)
    try:
        state = load_torch_state_dict(args.source)
    except RuntimeError as exc:
        print(f"numpymnv2 convert: error: {exc}", file=sys.stderr)
        return 2
    model = from_torchvision(state, num_classes=args.num_classes, width_mult=args.width, dtype=args.dtype)
    save_weights(model, args.output)
    print(f"wrote {args.output}: MobileNetV2 width_mult={args.width} num_classes={model.num_classes}, "
          f"{model.num_parameters():,} parameters")
    return 0
