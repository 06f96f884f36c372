"""Images in a folder tree, one sub-folder per class, read with Pillow.

Two layouts are understood::

    root/<class>/<image>                 flat: the whole tree is the "train" split
    root/train/<class>/<image>           split: "train" reads train/, "test" reads test/ (or val/ if there is
    root/test/<class>/<image>            no test/), "val" reads val/ (or test/)
    root/val/<class>/<image>

A root with a sub-folder named ``train``, ``test`` or ``val`` has the split layout. Classes are the class
sub-folder names sorted as Python sorts strings; in the split layout they come from ``train/`` (when it
exists) for every split, so label k means the same class in train and test. Files are read in sorted order
within each class. Every image is decoded by :func:`numpymnv2.data.images.open_image`, which converts every
Pillow mode (16-bit, palette, transparency, CMYK, EXIF orientation, ...) to RGB, so C is 3, and refuses
decompression bombs and damaged files with an error naming the file. A class folder without any image file is
an error (it would otherwise become a class that no image teaches).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from numpymnv2.data.dataset import Dataset, check_split
from numpymnv2.data.images import MAX_IMAGE_PIXELS, crop_resize, open_image, resize_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPLIT_FOLDERS = ("train", "test", "val")


def _subfolders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _split_folder(root: Path, split: str) -> tuple[Path, Path]:
    """The folder to read for ``split`` and the folder whose sub-folders define the classes."""
    if not any((root / s).is_dir() for s in SPLIT_FOLDERS):
        if split == "train":
            return root, root
        raise FileNotFoundError(f"folder: {root} has no test/ or val/ sub-folder, so the flat layout "
                                f"root/<class>/ is read as the train split only; make a hold-out set with "
                                f"Dataset.subset, or add {root / 'test'}/<class>/ folders")
    order = {"train": ["train"], "test": ["test", "val"], "val": ["val", "test"]}[split]
    folder = next((root / s for s in order if (root / s).is_dir()), None)
    if folder is None:
        raise FileNotFoundError(f"folder: no {' or '.join(s + '/' for s in order)} sub-folder in {root} "
                                f"for split {split!r}")
    classes_from = root / "train" if (root / "train").is_dir() else folder
    return folder, classes_from


def _as_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"folder: size must be positive (H, W), got {size!r}")
    return int(h), int(w)


def load_image_folder(root, split: str = "train", size=None,
                      extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                      max_pixels: int | None = MAX_IMAGE_PIXELS, center_crop: float | None = None) -> Dataset:
    """Read every image of one split into memory, shape (N, H, W, 3).

    Parameters
    ----------
    root : str or Path
    split : {"train", "test", "val"}
    size : int or (H, W), optional
        Resize (stretch) every image to this size with :func:`numpymnv2.data.images.resize_image`: area
        averaging when shrinking, bilinear when enlarging. Without it every image must already have the size of
        the first one.
    extensions : tuple of str
        File endings to read, compared case-insensitively; other files are skipped.
    max_pixels : int or None
        Refuse any image of more pixels than this (before decoding it); see :func:`~numpymnv2.data.images.open_image`.
    center_crop : float, optional
        With ``size``: instead of stretching, fit each image as torchvision's evaluation transform does
        (:func:`numpymnv2.data.images.crop_resize`): cut to the aspect ratio of ``size`` around the centre, keep
        the central ``center_crop`` share of width and height (0.875 for torchvision's ImageNet models), resize.

    Raises
    ------
    FileNotFoundError
        ``root`` or the split's folder is missing, or no image was found.
    ValueError
        An image cannot be decoded or is too large, images differ in size without ``size``, a class folder of
        the split that defines the classes holds no image file, or a test class is not a train class.
    """
    check_split(split, "load_dataset('folder')", allowed=SPLIT_FOLDERS)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"folder: {root} is not a folder; expected root/<class>/<image files>")
    target = _as_size(size)
    if center_crop is not None and target is None:
        raise ValueError(f"folder: center_crop={center_crop!r} needs size=(H, W), the size to crop and resize to")
    folder, classes_from = _split_folder(root, split)
    classes = [p.name for p in _subfolders(classes_from)]
    index = {name: k for k, name in enumerate(classes)}
    extensions = tuple(e.lower() for e in extensions)

    listing = []
    for class_dir in _subfolders(folder):
        if class_dir.name not in index:
            raise ValueError(f"folder: class {class_dir.name!r} in {folder} is not among the "
                             f"{len(classes)} classes of {classes_from}: {classes}")
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in extensions)
        listing.append((index[class_dir.name], files))
    if not any(files for _, files in listing):
        raise FileNotFoundError(f"folder: no image files ({', '.join(extensions)}) in the class sub-folders "
                                f"of {folder}")
    empty = [classes[label] for label, files in listing if not files]
    if empty and folder == classes_from:
        raise ValueError(f"folder: the class folder(s) {', '.join(empty)} of {folder} hold no image files "
                         f"({', '.join(extensions)}); add images or remove the folder(s), or each would become a "
                         f"class with nothing to learn from")

    images, labels = [], []
    first = None
    for label, files in listing:
        for path in files:
            im = open_image(path, "RGB", max_pixels=max_pixels)
            if target is not None and center_crop is not None:
                im = crop_resize(im, (target[1], target[0]), center_crop)[0]
            elif target is not None:
                im = resize_image(im, (target[1], target[0]))      # area averaging when shrinking
            x = np.asarray(im, dtype=np.uint8)
            if first is None:
                first = (path, x.shape)
            elif x.shape != first[1]:
                raise ValueError(f"folder: {path} is {x.shape[1]}x{x.shape[0]} (W x H) but {first[0]} is "
                                 f"{first[1][1]}x{first[1][0]}; expected all images the same size, or pass "
                                 f"size=(H, W) to resize them")
            images.append(x)
            labels.append(label)
    return Dataset(np.stack(images), np.asarray(labels, dtype=np.int64), classes, "folder")
