"""``numpymnv2 convert model.pth model.npz``: a saved torchvision MobileNetV2 state_dict to a numpymnv2 checkpoint.

The ``.pth`` file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` (no arbitrary
pickled code runs); torch is imported here, when the command runs, and nowhere else in the package. The width
multiplier and the number of classes are read from the tensors' shapes, DistributedDataParallel's ``module.``
prefix is removed, and the output is a checkpoint like those of ``numpymnv2 train`` (without training state):
the architecture (torchvision's ImageNet strides unless ``--arch`` says otherwise), the weights, ImageNet's
preprocessing (224x224, torchvision's mean and std) and the class names, so ``predict``, ``evaluate``,
``summary`` and ``export`` take it as it is. In Python it loads with
``numpymnv2.train.load_trained_model(path)``.
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


# torchvision's ImageNet evaluation preprocessing of its pretrained weights: Resize(256), CenterCrop(224) (the
# central 224/256 of the short side), Normalize(mean, std)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_CENTER_CROP = 224 / 256


def imagenet_preprocess(resolution: int = 224, dtype: str = "float32") -> dict:
    """The preprocessing record of a torchvision ImageNet model: RGB at ``resolution``, the central 87.5% of the
    image kept (as ``Resize(256)`` then ``CenterCrop(224)``), ImageNet mean and std."""
    return {"image_size": [resolution, resolution], "channels": 3, "resolution": resolution,
            "center_crop": IMAGENET_CENTER_CROP, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "dtype": dtype, "crop_padding": 0, "flip": False}


def read_class_names(path) -> list[str]:
    """One class name per line (blank lines skipped), in the order of the classifier's outputs."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def configure_parser(p: argparse.ArgumentParser) -> None:
    from numpymnv2 import _argtypes as T
    p.add_argument("source", type=T.path,
                   help="torchvision MobileNetV2 state_dict (.pth) from torch.save(model.state_dict()), also wrapped "
                        "in a dict under 'state_dict' or 'model', or saved from DDP")
    p.add_argument("output", type=T.path,
                   help="the numpymnv2 checkpoint to write (.npz), for predict, evaluate, summary and export")
    p.add_argument("--width", type=T.positive_float, default=None,
                   help="width multiplier the weights were trained with (default: read from the channel counts; "
                        "an error if given and the weights have other channels)")
    p.add_argument("--num-classes", type=T.positive_int, default=None,
                   help="classifier outputs (default: read from the file)")
    T.add_arch_argument(p, "imagenet", "imagenet, torchvision's; the weights do not record strides")
    p.add_argument("--classes", metavar="FILE", default=None, type=T.path,
                   help="class names, one per line in the classifier's order (default: the numbers 0 to K-1)")
    p.add_argument("--resolution", type=T.resolution, default=224,
                   help="input size predict and evaluate resize images to (default: 224, torchvision's)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="of the weights written (default: float32, as torchvision's)")


def run(args) -> int:
    from numpymnv2.interop.torchvision import check_width_mult, from_torchvision, infer_width_mult, strip_ddp_prefix
    from numpymnv2.models.mobilenetv2 import arch_kwargs
    from numpymnv2.train.inference import save_model_checkpoint

    check_distinct_output(args.output, args.source, *([args.classes] if args.classes else []))
    classes = read_class_names(args.classes) if args.classes else None
    try:
        state = load_torch_state_dict(args.source)
    except RuntimeError as exc:
        print(f"numpymnv2 convert: error: {exc}", file=sys.stderr)
        return 2
    state, stripped = strip_ddp_prefix(state)
    if args.width is None:
        width, width_from = infer_width_mult(state), "read from the channel counts"
    else:
        check_width_mult(state, args.width)
        width, width_from = args.width, "--width"
    model = from_torchvision(state, num_classes=args.num_classes, width_mult=width, dtype=args.dtype,
                             **arch_kwargs(args.arch))
    if classes is None:
        classes, classes_from = [str(k) for k in range(model.num_classes)], \
            f"0 to {model.num_classes - 1} (--classes FILE names them)"
    else:
        if len(classes) != model.num_classes:
            raise ValueError(f"--classes {args.classes} names {len(classes)} classes, but the classifier has "
                             f"{model.num_classes} outputs")
        classes_from = f"from {args.classes}"
    strides = ("stem stride 2, torchvision's ImageNet strides (--arch small or cifar if the weights were trained "
               "with those)" if args.arch == "imagenet" else f"--arch {args.arch}")
    path = save_model_checkpoint(args.output, model, imagenet_preprocess(args.resolution, args.dtype), classes,
                                 source={"converted_from": str(args.source), "format": "torchvision state_dict",
                                         "ddp_prefix_removed": stripped})
    print(f"read {args.source}: torchvision MobileNetV2 state_dict, {model.num_parameters():,} parameters"
          + ("; removed DistributedDataParallel's 'module.' key prefix" if stripped else ""))
    print(f"MobileNetV2 width_mult={width} ({width_from}), num_classes={model.num_classes}, arch {args.arch}: "
          f"{strides}")
    mean, std = ", ".join(map(str, IMAGENET_MEAN)), ", ".join(map(str, IMAGENET_STD))
    print(f"wrote {path}: a numpymnv2 checkpoint with ImageNet preprocessing (central 87.5%, "
          f"{args.resolution}x{args.resolution} RGB, mean {mean}, std {std}); classes {classes_from}")
    print(f"next: numpymnv2 predict --checkpoint {path} IMAGE ...")
    return 0
