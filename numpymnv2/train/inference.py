"""Use a trained checkpoint: rebuild its model, read image files as its training data was, predict classes.

The checkpoint's ``config["preprocess"]`` says how the training images became network input, and an image file
goes through the same steps: converted to the dataset's channels (grayscale or RGB), brought to the dataset's
stored image size with Pillow's bilinear filter (which averages over the source pixels when shrinking, as the
image-folder reader does), then the evaluation transform of training (resize to the model resolution,
grayscale to RGB, per-channel normalisation) from :func:`numpymnv2.train.config.make_transform`. An image of the
dataset's own size and mode therefore reaches the network exactly as a test image did.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from numpymnv2.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_model_state
from numpymnv2.train.config import build_model, make_transform


def load_trained_model(path) -> tuple[object, Checkpoint]:
    """``(model, checkpoint)``: the checkpoint's MobileNetV2 with its weights, in evaluation mode."""
    ckpt = load_checkpoint(path)
    for key in ("model", "preprocess", "classes"):
        if key not in ckpt.config:
            raise CheckpointError(f"{ckpt.path}: the checkpoint's configuration has no {key!r} record, so the "
                                  f"model cannot be rebuilt from it (was it written by `numpymnv2 train`?)")
    model = build_model(ckpt.config["model"])
    load_model_state(model, ckpt, ckpt.config["model"])
    return model.eval(), ckpt


def read_images(paths, preprocess: dict, invert: bool = False) -> np.ndarray:
    """Read image files into a uint8 batch shaped like the training images, (N, H, W, C).

    Parameters
    ----------
    paths : sequence of str or Path
    preprocess : dict
        A checkpoint's ``config["preprocess"]`` (``image_size``, ``channels``, ...).
    invert : bool
        Replace every pixel ``v`` by ``255 - v``: for dark ink on light paper when the model learnt light
        strokes on a dark background (the digits, MNIST).
    """
    from PIL import Image

    from numpymnv2.data.images import open_image
    H, W = preprocess["image_size"]
    mode = "L" if preprocess["channels"] == 1 else "RGB"
    batch = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"image {p} does not exist")
        im = open_image(p, mode)        # every Pillow mode converted alike (16-bit scaled, alpha composited, ...)
        if im.size != (W, H):
            im = im.resize((W, H), Image.BILINEAR)
        x = np.asarray(im, dtype=np.uint8)
        if x.ndim == 2:
            x = x[..., None]
        batch.append(255 - x if invert else x)
    return np.stack(batch)


def predict_proba(model, images: np.ndarray, preprocess: dict, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (softmax of the logits), shape (N, K), for a uint8 batch of training-sized images."""
    transform = make_transform(preprocess, train=False)
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = transform(images[start:start + batch_size], None)
        logits = model(x).astype(np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        out.append(p / p.sum(axis=1, keepdims=True))
    return np.concatenate(out)


def save_model_checkpoint(path, model, preprocess: dict, classes, source: dict | None = None):
    """Write a checkpoint that holds a model and how to feed it, but no training state; return its path.

    ``numpymnv2 predict``, ``evaluate``, ``summary`` and ``export`` read it as they read a checkpoint of
    ``numpymnv2 train`` (``numpymnv2 convert`` writes these for torchvision weights); ``train --resume`` cannot
    continue it.

    Parameters
    ----------
    model : MobileNetV2
    preprocess : dict
        How an image becomes network input, the record :func:`numpymnv2.train.config.make_preprocess` makes.
    classes : sequence
        The class names, one per output.
    source : dict, optional
        Where the weights came from (stored as ``config["source"]``).
    """
    from numpymnv2.train.checkpoint import save_checkpoint
    classes = [str(c) for c in classes]
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {model.num_classes} outputs")
    config = {"model": {"name": "MobileNetV2", **model.config}, "preprocess": dict(preprocess), "classes": classes}
    if source is not None:
        config["source"] = dict(source)
    return save_checkpoint(path, Checkpoint(model=model.state_dict(), config=config))
