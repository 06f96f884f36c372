"""``numpymnv2 evaluate``: accuracy (and top-5 accuracy for more than 5 classes), per-class accuracy and confusion
matrix of a checkpoint on a dataset split.

The model, the dataset and the preprocessing all come from the checkpoint, so only ``--checkpoint`` is
needed. ``--split train`` and ``--split val`` score exactly the images the run trained and validated on (the
checkpoint stores their rows), for every dataset the trainer accepts; ``--split test`` the dataset's test split.
The confusion matrix is printed and saved as a PNG (the counts, and beside them each row normalised by its
class's images), the numbers as JSON, next to the checkpoint unless ``--out`` says otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from numpymnv2.train.config import EVAL_SPLITS

TOP_K = 5       # top-5 accuracy is reported for more than 5 classes (with 5 or fewer it is 100%)


def configure_parser(parser) -> None:
    from numpymnv2._argtypes import path
    parser.add_argument("--checkpoint", required=True, metavar="PATH", type=path,
                        help="a checkpoint (.npz) written by `numpymnv2 train`, or a run folder (its last.npz)")
    parser.add_argument("--split", choices=EVAL_SPLITS, default="test",
                        help="test: the dataset's test split; train / val: the images the run trained / validated "
                             "on (the checkpoint stores which; val is a held-out part of the train split unless "
                             "the run had --val-fraction 0) (default: test)")
    parser.add_argument("--data-dir", default=None, metavar="DIR", type=path,
                        help="where the dataset's files are, if not where training found them; for a checkpoint "
                             "without a training run (numpymnv2 convert), an image folder with one sub-folder per "
                             "class")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate a random subset of at most N images")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per forward pass; only speed and memory depend on it (default: 256)")
    parser.add_argument("--out", default=None, metavar="DIR", type=path,
                        help="where to write the confusion matrix PNG and JSON (default: the checkpoint's folder)")
    parser.add_argument("--backend", choices=("fast", "reference"), default="fast",
                        help="the Numba kernels or the readable NumPy code (default: fast)")


def image_folder_for(ckpt, data_dir, split: str):
    """``(cfg, dataset, description)`` for a checkpoint that records no training run (``numpymnv2 convert``):
    the image folder ``data_dir``, its test/ (or val/) part if it has one, else every image of its class
    sub-folders, each fitted to the checkpoint's resolution as ``numpymnv2 predict`` fits it by default and as
    torchvision evaluates (:func:`numpymnv2.data.images.crop_resize`: centre cut to the aspect ratio, the
    checkpoint's ``center_crop`` share kept, resized), not stretched."""
    from numpymnv2.data import load_dataset
    from numpymnv2.data.folder import SPLIT_FOLDERS
    from numpymnv2.train.config import TrainConfig

    if data_dir is None:
        raise ValueError(f"{ckpt.path} records no training run (converted weights?), so there is no dataset to "
                         f"read: pass --data-dir DIR, an image folder with one sub-folder of images per class named "
                         f"as the checkpoint's classes (or DIR/test/<class>/)")
    if split != "test":
        raise ValueError(f"--split {split}: {ckpt.path} records no training run, so it has no {split} images; "
                         f"--split test scores the folder --data-dir")
    pre = ckpt.config["preprocess"]
    cfg = TrainConfig(dataset="folder", data_dir=str(data_dir), resolution=int(pre["resolution"]),
                      dtype=pre["dtype"], val_fraction=0)
    root = Path(data_dir).expanduser()
    fraction = float(pre.get("center_crop", 1.0))
    kept = f", the central {100 * fraction:g}% kept" if fraction < 1 else ""
    fitted = f"centre-cropped to the aspect ratio{kept} and resized to {cfg.resolution}x{cfg.resolution} (as predict)"
    folder = "test" if any((root / s).is_dir() for s in SPLIT_FOLDERS) else "train"
    data = load_dataset("folder", str(root), split=folder, size=cfg.resolution, center_crop=fraction)
    if folder == "test":
        return cfg, data, f"the test/ (or val/) images of {root}, {fitted}"
    return cfg, data, f"every image in the class sub-folders of {root}, {fitted}"


def evaluate_with_top_k(model, loader, num_classes: int, parallel=None):
    """:func:`~numpymnv2.train.trainer.evaluate_model` plus the top-:data:`TOP_K` accuracy when there are more
    than :data:`TOP_K` classes: ``(loss, acc, predictions (N,), labels (N,), top-k accuracy or None)``."""
    from numpymnv2.train.trainer import evaluate_model, top_k_accuracy
    top_k = TOP_K if num_classes > TOP_K else 1
    loss, acc, ranked, labels = evaluate_model(model, loader, parallel, top_k=top_k)
    if top_k == 1:
        return loss, acc, ranked, labels, None
    return loss, acc, ranked[:, 0], labels, top_k_accuracy(ranked, labels)


def run(args) -> int:
    from numpymnv2._atomic import atomic_write_text
    from numpymnv2.backend import use_backend
    from numpymnv2.data import DataLoader
    from numpymnv2.train.config import TrainConfig, load_evaluation_split, make_transform
    from numpymnv2.train.inference import load_trained_model
    from numpymnv2.train.metrics import (confusion_matrix, format_confusion, per_class_accuracy,
                                         plot_confusion)

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    model, ckpt = load_trained_model(args.checkpoint)
    saved = dict(ckpt.config.get("train") or {})
    if "dataset" not in saved:
        cfg, data, what = image_folder_for(ckpt, args.data_dir, args.split)
    else:
        if args.data_dir is not None:
            saved["data_dir"] = args.data_dir
        cfg = TrainConfig.from_dict(saved)
        data, what = load_evaluation_split(cfg, args.split, ckpt.split, ckpt.config.get("data"))
    classes = ckpt.config["classes"]
    if list(data.classes) != list(classes):
        raise ValueError(f"{ckpt.path} was trained on the classes {classes}, but {cfg.dataset} ({args.split}) "
                         f"has {data.classes}")
    if args.limit is not None and len(data) > args.limit:
        data = data.subset(np.sort(np.random.default_rng(0).permutation(len(data))[:args.limit]))
    loader = DataLoader(data, args.batch_size, shuffle=False,
                        transform=make_transform(ckpt.config["preprocess"], train=False), dtype=cfg.dtype)
    with use_backend(args.backend):
        loss, acc, predictions, labels, top_acc = evaluate_with_top_k(model, loader, len(classes))
    cm = confusion_matrix(labels, predictions, len(classes))
    per_class = per_class_accuracy(cm)

    epochs = len(ckpt.history)
    spec = ckpt.config["model"]
    print(f"checkpoint: {ckpt.path} (after {epochs} epoch{'s' if epochs != 1 else ''}; MobileNetV2 width "
          f"{spec.get('width_mult')}, {len(classes)} classes)")
    print(f"data: {cfg.dataset}, --split {args.split}: {what}, {len(data)} images")
    print(f"accuracy: {100 * acc:.2f}% ({int(np.trace(cm))}/{len(data)}), mean cross-entropy {loss:.4f}")
    if top_acc is not None:
        print(f"top-{TOP_K} accuracy: {100 * top_acc:.2f}% (the label among the {TOP_K} most likely classes)")
    print("\nper-class accuracy:")
    width = max(5, max(len(str(c)) for c in classes))
    print(f"  {'class'.ljust(width)}  images  correct  accuracy")
    for k, name in enumerate(classes):
        shown = "       -" if np.isnan(per_class[k]) else f"{100 * per_class[k]:7.2f}%"
        print(f"  {str(name).ljust(width)}  {int(cm[k].sum()):6d}  {int(cm[k, k]):7d}  {shown}")
    print("\nconfusion matrix (rows: true class, columns: predicted class):")
    print(format_confusion(cm, classes))

    out = Path(args.out) if args.out else ckpt.path.parent
    stem = f"{ckpt.path.stem}_{args.split}"
    png = plot_confusion(out / f"{stem}_confusion.png", cm, classes,
                         title=f"{cfg.dataset} {args.split}: {100 * acc:.2f}% ({ckpt.path.name})")
    report = {"checkpoint": str(ckpt.path), "dataset": cfg.dataset, "split": args.split, "images": len(data),
              "accuracy": acc, f"top{TOP_K}_accuracy": top_acc, "loss": loss, "classes": list(classes),
              "per_class_accuracy": [None if np.isnan(a) else float(a) for a in per_class],
              "confusion_matrix": cm.tolist()}
    js = atomic_write_text(out / f"{stem}_evaluation.json", json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {png} and {js}")
    return 0
