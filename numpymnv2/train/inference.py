"""Use a trained checkpoint: rebuild its model, read image files as its training data was, predict classes.

The checkpoint's ``config["preprocess"]`` says how the training images became network input, and an image file
goes through the same steps (:func:`load_image`): converted to the dataset's channels (grayscale or RGB), cut or
padded to the training images' aspect ratio (``resize``, :func:`numpymnv2.data.images.fit_aspect`), brought to
the dataset's stored image size by area averaging when shrinking (:func:`numpymnv2.data.images.resize_image`,
as the image-folder reader does), then the evaluation transform of training (resize to the model resolution,
grayscale to RGB, per-channel normalisation) from :func:`numpymnv2.train.config.make_transform`. An image of the
dataset's own size and mode therefore reaches the network exactly as a test image did.

:func:`polarity_mismatch` compares an image's brightness with the training images' (the checkpoint's stored
mean): light digits on black were learnt, and a photo of dark ink on white paper would be read as something
else entirely.
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


# A training set counts as light-on-dark (or dark-on-light) when its mean brightness, in [0, 1], is below
# (above) this; natural photos (ImageNet 0.45, CIFAR-10 0.47) are neither and are never inverted.
DARK_TRAINING_MEAN, LIGHT_TRAINING_MEAN = 0.4, 0.6


def training_brightness(preprocess: dict) -> float:
    """The mean brightness, in [0, 1], of the images a checkpoint was trained on (its stored channel means)."""
    return float(np.mean(preprocess["mean"]))


def polarity_mismatch(image: np.ndarray, preprocess: dict) -> str | None:
    """Why ``image`` (uint8, (H, W, C)) looks inverted with respect to the training images, or None.

    The training images must be clearly dark (mean brightness below :data:`DARK_TRAINING_MEAN`: light strokes
    on black, as the digits, 0.31, and MNIST, 0.13) or clearly light; the image then mismatches when its own
    mean brightness is on the other side of the middle grey: a photo of dark ink on white paper under a model of
    light-on-dark digits.
    """
    trained = training_brightness(preprocess)
    seen = float(image.mean()) / 255
    if trained < DARK_TRAINING_MEAN and seen > 0.5:
        return (f"dark on light (mean brightness {seen:.2f}), but the model was trained on light on dark "
                f"({trained:.2f})")
    if trained > LIGHT_TRAINING_MEAN and seen < 0.5:
        return (f"light on dark (mean brightness {seen:.2f}), but the model was trained on dark on light "
                f"({trained:.2f})")
    return None


def load_image(path, preprocess: dict, resize: str = "crop") -> tuple[np.ndarray, list[str]]:
    """``(x, notes)``: one image file as a uint8 array shaped like a training image, (H, W, C), and what was
    done to its shape (empty when nothing needed saying).

    Parameters
    ----------
    path : str or Path
    preprocess : dict
        A checkpoint's ``config["preprocess"]`` (``image_size``, ``channels``, ...; ``center_crop``, the share
        of width and height kept around the centre, 0.875 for torchvision's ImageNet models, 1 if absent).
    resize : {"crop", "pad", "squash"}
        How an image of another aspect ratio is fitted (:func:`numpymnv2.data.images.fit_aspect`); with
        ``crop`` the ``center_crop`` share is then cut out, as torchvision's ``Resize`` + ``CenterCrop``.

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError, ValueError
        As :func:`numpymnv2.data.images.open_image`.
    """
    from numpymnv2.data.images import crop_resize, fit_aspect, open_image, resize_image
    H, W = preprocess["image_size"]
    mode = "L" if preprocess["channels"] == 1 else "RGB"
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image {p} does not exist")
    im = open_image(p, mode)        # every Pillow mode converted alike (16-bit scaled, alpha composited, ...)
    if resize == "crop":
        im, note = crop_resize(im, (W, H), preprocess.get("center_crop", 1.0))
    else:
        im, note = fit_aspect(im, (W, H), resize)
        im = resize_image(im, (W, H))
    x = np.asarray(im, dtype=np.uint8)
    return (x[..., None] if x.ndim == 2 else x), [note] if note else []


def prepare_image(path, preprocess: dict, invert=False, resize: str = "crop") -> tuple[np.ndarray, bool, list[str]]:
    """``(x, inverted, notes)``: :func:`load_image`, then inverted (every pixel ``v`` becomes ``255 - v``) as
    ``invert`` says, and the notes on what was done.

    ``invert``: True inverts (dark ink on light paper under a model that learnt light strokes on a dark
    background), False never does (but notes an image :func:`polarity_mismatch` flags), ``"auto"`` inverts the
    images it flags and notes it.
    """
    x, notes = load_image(path, preprocess, resize)
    mismatch = polarity_mismatch(x, preprocess)
    inverted = mismatch is not None if invert == "auto" else bool(invert)
    if mismatch is not None and invert == "auto":
        notes.append(f"inverted: {mismatch} (--no-invert keeps it as it is)")
    elif mismatch is not None and invert is False:
        notes.append(f"looks inverted: {mismatch}; kept as it is (--no-invert)")
    return (255 - x if inverted else x), inverted, notes


def read_images(paths, preprocess: dict, invert=False, resize: str = "crop") -> np.ndarray:
    """Read image files into a uint8 batch shaped like the training images, (N, H, W, C) (see
    :func:`prepare_image` for ``invert`` and :func:`load_image` for ``resize``)."""
    return np.stack([prepare_image(path, preprocess, invert, resize)[0] for path in paths])


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
