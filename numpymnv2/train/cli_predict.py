"""``numpymnv2 predict``: the top-k classes of image files under a trained checkpoint.

Each image is read with Pillow and preprocessed as the checkpoint's training data was (see
:mod:`numpymnv2.train.inference`).
"""
from __future__ import annotations


def configure_parser(parser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a checkpoint (.npz) written by `numpymnv2 train`, or a run folder (its last.npz)")
    parser.add_argument("--top-k", type=int, default=3, metavar="K", help="how many classes to show (default: 3)")
    parser.add_argument("--invert", action="store_true",
                        help="invert the pixels first: for dark ink on light paper with a model trained on "
                             "light strokes on black (digits, MNIST)")
    parser.add_argument("--backend", choices=("fast", "reference"), default="fast",
                        help="the Numba kernels or the readable NumPy code (default: fast)")


def run(args) -> int:
    import numpy as np

    from numpymnv2.backend import use_backend
    from numpymnv2.train.inference import load_trained_model, predict_proba, read_images

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    model, ckpt = load_trained_model(args.checkpoint)
    preprocess, classes = ckpt.config["preprocess"], ckpt.config["classes"]
    images = read_images(args.images, preprocess, invert=args.invert)
    with use_backend(args.backend):
        probs = predict_proba(model, images, preprocess)
    k = min(args.top_k, len(classes))
    width = max(len(str(c)) for c in classes)
    for path, p in zip(args.images, probs):
        top = np.argsort(-p, kind="stable")[:k]
        print(path)
        for rank, c in enumerate(top, 1):
            print(f"  {rank}. {str(classes[c]).ljust(width)}  {100 * p[c]:6.2f}%")
    return 0
