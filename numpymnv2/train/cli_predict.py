"""``numpymnv2 predict``: the top-k classes of image files (or of every image in a folder) under a checkpoint.

Each image is read with Pillow and preprocessed as the checkpoint's training data was (see
:mod:`numpymnv2.train.inference`): fitted to the training images' aspect ratio (``--resize``), shrunk by area
averaging, and inverted when its brightness says it is the negative of what the model learnt (``--invert``).
An image that cannot be read is reported on stderr and skipped; the others are still predicted, and the exit
status is then 1.
"""
from __future__ import annotations

import sys
from pathlib import Path


def configure_parser(parser) -> None:
    from numpymnv2._argtypes import path, positive_int
    from numpymnv2.data.images import RESIZE_MODES
    parser.add_argument("images", nargs="+", metavar="IMAGE", type=path,
                        help="image files (PNG, JPEG, ...) or folders, meaning every image file directly inside "
                             "them, in name order")
    parser.add_argument("--checkpoint", required=True, metavar="PATH", type=path,
                        help="a checkpoint (.npz) written by `numpymnv2 train` or `numpymnv2 convert`, or a run "
                             "folder (its last.npz)")
    parser.add_argument("--top-k", type=positive_int, default=3, metavar="K",
                        help="how many classes to show (default: 3)")
    invert = parser.add_mutually_exclusive_group()
    invert.add_argument("--invert", dest="invert", action="store_const", const=True, default="auto",
                        help="invert every image (255 - v). Default: only images whose brightness is the "
                             "opposite of the training images' (dark ink on light paper under a model of light "
                             "digits on black), and the output says so")
    invert.add_argument("--no-invert", dest="invert", action="store_const", const=False,
                        help="never invert, even when an image looks like the negative of the training images")
    parser.add_argument("--resize", choices=RESIZE_MODES, default="crop",
                        help="an image whose aspect ratio differs from the training images': crop keeps the "
                             "centre (as torchvision's resize and centre crop), pad adds borders of the image's "
                             "background colour (the median of its edge pixels), squash stretches it (default: crop)")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="format", action="store_const", const="json", default="text",
                     help="print the predictions (and the unreadable images) as one JSON document instead of text")
    fmt.add_argument("--csv", dest="format", action="store_const", const="csv",
                     help="print the predictions as CSV instead of text: image, rank, class, probability, "
                          "inverted, notes")
    parser.add_argument("--output", "-o", metavar="FILE", default=None, type=path,
                        help="write the predictions (text, --json or --csv) to FILE instead of stdout")
    parser.add_argument("--backend", choices=("fast", "reference"), default="fast",
                        help="the Numba kernels or the readable NumPy code (default: fast)")


def image_paths(args_images) -> list[tuple[str, str | None]]:
    """``(path, error)`` for each image to predict: files as given, folders expanded to their image files."""
    from numpymnv2.data.folder import IMAGE_EXTENSIONS
    out = []
    for arg in args_images:
        p = Path(arg)
        if p.is_dir():
            files = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            out += [(f, None) for f in files] or [(arg, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the "
                                                        f"folder {arg}")]
        else:
            out.append((arg, None))
    return out


def run(args) -> int:
    import numpy as np

    from numpymnv2.backend import use_backend
    from numpymnv2.cli import describe_error, exit_status
    from numpymnv2.train.inference import load_trained_model, predict_proba, prepare_image

    if args.output is not None:
        from numpymnv2._argtypes import check_distinct_output
        check_distinct_output(args.output, args.checkpoint, *args.images)
    model, ckpt = load_trained_model(args.checkpoint)
    preprocess, classes = ckpt.config["preprocess"], ckpt.config["classes"]

    read, failed = [], []           # read: (path, x, inverted, notes)
    for path, problem in image_paths(args.images):
        if problem is None:
            try:
                read.append((path, *prepare_image(path, preprocess, args.invert, args.resize)))
                continue
            except Exception as exc:
                if exit_status(exc) is None:        # not a problem of the file: a bug, shown as one
                    raise
                problem = describe_error(exc)
        print(f"numpymnv2 predict: error: {problem}", file=sys.stderr)
        failed.append({"image": path, "error": problem})

    results = []
    if read:
        with use_backend(args.backend):
            probs = predict_proba(model, np.stack([r[1] for r in read]), preprocess)
        k = min(args.top_k, len(classes))
        for (path, _, inverted, notes), p in zip(read, probs):
            top = np.argsort(-p, kind="stable")[:k]
            results.append({"image": path, "top": [{"class": str(classes[c]), "probability": float(p[c])}
                                                   for c in top],
                            "inverted": inverted, "notes": notes})
    text = {"text": as_text, "json": as_json, "csv": as_csv}[args.format](results, failed, ckpt, args)
    if args.output is None:
        sys.stdout.write(text)
    else:
        from numpymnv2._atomic import atomic_write_text
        print(f"wrote {len(results)} predictions to {atomic_write_text(args.output, text)}")
    if failed:
        print(f"numpymnv2 predict: error: {len(failed)} of {len(failed) + len(results)} images could not be read "
              f"(listed above); the others were predicted", file=sys.stderr)
        return 1
    return 0


def as_text(results, failed, ckpt, args) -> str:
    width = max(len(str(c)) for c in ckpt.config["classes"])
    lines = []
    for r in results:
        lines.append(r["image"])
        lines += [f"  {rank}. {t['class'].ljust(width)}  {100 * t['probability']:6.2f}%"
                  for rank, t in enumerate(r["top"], 1)]
        lines += [f"  note: {note}" for note in r["notes"]]
    return "".join(line + "\n" for line in lines)


def as_json(results, failed, ckpt, args) -> str:
    import json
    return json.dumps({"checkpoint": str(ckpt.path), "resize": args.resize,
                       "invert": {True: "always", False: "never", "auto": "auto"}[args.invert],
                       "predictions": results, "errors": failed}, indent=2) + "\n"


def as_csv(results, failed, ckpt, args) -> str:
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "rank", "class", "probability", "inverted", "notes"])
    for r in results:
        for rank, t in enumerate(r["top"], 1):
            w.writerow([r["image"], rank, t["class"], f"{t['probability']:.6f}", int(r["inverted"]),
                        "; ".join(r["notes"])])
    return buf.getvalue()
