"""Read one image file safely: :func:`open_image` (a Pillow image) and :func:`read_image` (a uint8 array); bring
it to a size with :func:`resize_image` (area averaging when shrinking) and :func:`fit_aspect` (crop or pad).

Every place that reads an image file (the image-folder dataset, ``numpymnv2 predict``) goes through here, so
every Pillow mode becomes the same RGB (or grayscale) pixels everywhere, and a hostile or damaged file ends in
one ``ValueError`` that names it.

Modes and how they become 8-bit RGB or grayscale (``L``)
---------------------------------------------------------
=====================================  =======================================================================
Pillow mode                            conversion
=====================================  =======================================================================
``RGB``, ``L``                         as they are (``L`` to RGB repeats the gray value in the three channels)
``1`` (1-bit)                          0 and 255
``P`` (palette)                        looked up in the palette; a transparent palette entry is composited
                                       like an alpha channel (below)
``RGBA``, ``LA``, ``PA``, ``RGBa``,    composited over ``background`` (white by default, as a viewer shows the
``La``                                 image on a white page); premultiplied modes are un-premultiplied first
``I;16``, ``I;16L``, ``I;16B``,        16-bit values scaled to 8 bits, ``round(v * 255 / 65535)`` (Pillow's own
``I;16N``                              ``convert`` would clip them at 255, turning the image white)
``I`` (32-bit integer)                 taken as 16-bit data (how older Pillow opens 16-bit PNGs), clipped to
                                       0..65535 and scaled as above
``CMYK``, ``YCbCr``, ``RGBX``,         Pillow's conversion to RGB
``HSV``, ``LAB`` and the rest
``F`` (32-bit float)                   rejected: floating-point pixels have no agreed range (0..1 or 0..255)
=====================================  =======================================================================

The EXIF orientation tag (photos from phones and cameras) is applied, so pixels are in the orientation a viewer
shows; an animated or multi-page file gives its first frame.

Safety
------
* Only raster formats are decoded (PNG, JPEG, BMP, GIF, TIFF, WebP, PBM/PGM/PPM), whatever the file is named:
  Pillow's EPS reader would run Ghostscript on the file, and nothing here needs the rarer formats.
* The pixel count is read from the header and compared with ``max_pixels`` *before* anything is decoded, so a
  small file claiming 400 megapixels (a "decompression bomb") is refused in microseconds. Pillow's own
  ``DecompressionBombError``/``DecompressionBombWarning`` never escape.
* A truncated or corrupt file is a ``ValueError`` naming the file; a missing file or a folder is the usual
  ``FileNotFoundError``/``IsADirectoryError``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

# Pillow's own default (Image.MAX_IMAGE_PIXELS): about 89.5 megapixels, i.e. 268 MB of decoded RGB
MAX_IMAGE_PIXELS = 89_478_485
# Pillow format names that may be decoded (the plug-ins' registered names)
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "DIB", "GIF", "TIFF", "WEBP", "PPM")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def open_image(path, mode: str = "RGB", max_pixels: int | None = MAX_IMAGE_PIXELS,
               background=(255, 255, 255)):
    """Decode an image file into a Pillow image of ``mode`` (``"RGB"`` or ``"L"``), fully loaded, file closed.

    Parameters
    ----------
    path : str or Path
    mode : {"RGB", "L"}
        Colour (three channels) or grayscale (ITU-R 601-2 luma of the RGB image, as Pillow's ``convert("L")``).
    max_pixels : int or None
        Refuse an image of more than this many pixels (``width * height``) before decoding it; None: no limit
        of ours. Pillow refuses more than twice its ``PIL.Image.MAX_IMAGE_PIXELS`` in any case.
    background : (int, int, int)
        The colour that transparent pixels are composited over.

    Returns
    -------
    PIL.Image.Image
        In ``mode``, with the EXIF orientation applied.

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError
        The file cannot be opened.
    ValueError
        Not an image of a supported format, larger than ``max_pixels``, truncated or corrupt, or of a mode with
        no defined 8-bit conversion (``F``). The message names the file.
    """
    from PIL import Image, ImageOps

    if mode not in ("RGB", "L"):
        raise ValueError(f"open_image: mode must be 'RGB' or 'L', got {mode!r}")
    path = Path(path)
    formats = _formats()
    with open(path, "rb") as f, warnings.catch_warnings():
        # the explicit pixel check below replaces Pillow's warning and error, which would otherwise escape
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(f, formats=formats)
        except Image.DecompressionBombError as exc:   # above twice Pillow's own Image.MAX_IMAGE_PIXELS
            raise ValueError(f"{path}: the image is too large to decode safely, more pixels than Pillow's limit "
                             f"({exc}); a decompression bomb, or raise PIL.Image.MAX_IMAGE_PIXELS") from None
        except Exception as exc:   # Pillow's plug-ins raise many types on bytes they cannot parse
            raise ValueError(f"{path}: not an image file of a supported format "
                             f"({', '.join(formats)}): {_reason(exc)}") from None
        with im:
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise ValueError(f"{path}: the image is {width}x{height} = {width * height:,} pixels, more than "
                                 f"the limit of {max_pixels:,}; a decompression bomb, or pass a larger "
                                 f"max_pixels")
            if im.mode == "F":
                raise ValueError(f"{path}: 32-bit floating-point pixels (mode F) have no agreed range; save the "
                                 f"image with 8 or 16 bits per channel")
            try:
                im.load()
            except Exception as exc:   # truncated data, bad compressed streams, ...
                raise ValueError(f"{path}: cannot decode the image: {_reason(exc)}") from None
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:   # an unreadable EXIF block: the pixels are fine, keep them as stored
                pass
            return _convert(im, mode, background)


def read_image(path, mode: str = "RGB", max_pixels: int | None = MAX_IMAGE_PIXELS,
               background=(255, 255, 255)) -> np.ndarray:
    """:func:`open_image` as an array: uint8 of shape (H, W, 3) for ``"RGB"``, (H, W, 1) for ``"L"``."""
    im = open_image(path, mode, max_pixels, background)
    x = np.asarray(im, dtype=np.uint8)
    return x[..., None] if x.ndim == 2 else x


# How fit_aspect makes an image's shape match the shape it will be resized to (``numpymnv2 predict --resize``)
RESIZE_MODES = ("crop", "pad", "squash")


def resize_image(im, size):
    """``im`` (a Pillow image) resized to ``size = (width, height)``: area averaging when it shrinks, bilinear
    when it grows.

    Shrinking with Pillow's ``BOX`` filter makes each output pixel the mean of the source pixels it covers, the
    way the digits were made from their scans: the digits' 8x8 pixels count the ink in 4x4 blocks of
    a 32x32 bitmap. The bilinear filter weights a wider neighbourhood (a tent twice the block's width), which
    blurs the strokes of an enlarged digit into its neighbours. A digit enlarged by pixel repetition comes back
    exactly; on the digits' test split saved as 128x128 PNGs (enlarged with nearest, bilinear, bicubic), a
    checkpoint that scored 96.3% on the 8x8 originals scored 92.7 / 89.3 / 92.3% after bilinear shrinking and
    96.3 / 92.7 / 96.0% after area averaging. Enlarging keeps the bilinear filter (BOX would give blocks).
    """
    from PIL import Image

    W, H = size
    if im.size == (W, H):
        return im
    shrinks = W <= im.size[0] and H <= im.size[1]
    return im.resize((W, H), Image.BOX if shrinks else Image.BILINEAR)


def center_crop(im, fraction: float):
    """The central ``fraction`` of ``im``'s width and height (at least one pixel each): torchvision's
    ``Resize(256)`` then ``CenterCrop(224)`` is ``center_crop(im, 224 / 256)`` before resizing to 224."""
    fraction = float(fraction)
    if not 0 < fraction <= 1:
        raise ValueError(f"center_crop must be a fraction in (0, 1], got {fraction!r}")
    if fraction == 1:
        return im
    w, h = im.size
    return _centre(im, max(1, round(w * fraction)), max(1, round(h * fraction)))


def crop_resize(im, size, fraction: float = 1.0):
    """``(image, note)``: torchvision's evaluation transform (``Resize`` then ``CenterCrop``) on a Pillow image.

    ``im`` is cut around its centre to the aspect ratio of ``size = (width, height)`` (:func:`fit_aspect`
    ``"crop"``; ``note`` says so, or is None when the aspect already matched), its central ``fraction`` of width
    and height is kept (:func:`center_crop`; 0.875 = 224 / 256 for torchvision's ImageNet models), and the rest
    is resized to ``size`` (:func:`resize_image`).
    """
    im, note = fit_aspect(im, size, "crop")
    return resize_image(center_crop(im, fraction), size), note


def _centre(im, cw: int, ch: int):
    """The central ``cw x ch`` pixels of ``im``."""
    w, h = im.size
    left, top = (w - cw) // 2, (h - ch) // 2
    return im.crop((left, top, left + cw, top + ch))


def fit_aspect(im, size, mode: str = "crop"):
    """``(image, note)``: ``im`` cut or padded to the aspect ratio of ``size = (width, height)``, before
    :func:`resize_image` brings it to that size.

    ``crop`` keeps the centre (as torchvision's evaluation transform, resize then centre crop); ``pad`` adds
    borders of the image's own background colour (the median of its outermost pixels), so nothing is cut
    off;
    ``squash`` leaves it, to be stretched. ``note`` says what was done, or is None when the aspect already
    matched (or for ``squash``).
    """
    from PIL import Image

    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    w, h = im.size
    W, H = size
    # the target aspect W/H, at the image's own scale: keep w and cut h, or keep h and cut w
    if w * H == h * W:
        return im, None
    if mode == "squash":
        return im, f"{w}x{h}, stretched to the aspect ratio of {W}x{H} (--resize squash)"
    wide = w * H > h * W
    if mode == "crop":
        cw, ch = (round(h * W / H), h) if wide else (w, round(w * H / W))
        return _centre(im, cw, ch), f"{w}x{h}, centre {cw}x{ch} kept (--resize crop)"
    pw, ph = (w, round(w * H / W)) if wide else (round(h * W / H), h)
    x = np.asarray(im)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]).reshape(-1, 1 if x.ndim == 2 else x.shape[2])
    fill = tuple(int(v) for v in np.median(border, axis=0))
    canvas = Image.new(im.mode, (pw, ph), fill[0] if im.mode == "L" else fill)
    canvas.paste(im, ((pw - w) // 2, (ph - h) // 2))
    return canvas, f"{w}x{h}, padded to {pw}x{ph} with its background colour (--resize pad)"


def _formats() -> list[str]:
    from PIL import Image
    Image.init()
    return [name for name in IMAGE_FORMATS if name in Image.OPEN]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _convert(im, mode: str, background):
    """A loaded image of any mode to ``mode`` ("RGB" or "L"), as the module docstring's table says."""
    from PIL import Image

    if im.mode == mode:
        return im
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        v = np.asarray(im).astype(np.int64)
        v = np.clip(v, 0, 65535)
        gray = Image.fromarray(((v * 255 + 32767) // 65535).astype(np.uint8), "L")
        return gray if mode == "L" else gray.convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif im.mode in ("PA", "RGBa", "La"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        base = Image.new("RGB", im.size, tuple(int(c) for c in background))
        base.paste(im.convert("RGBA"), mask=im.getchannel("A"))
        im = base
    return im.convert(mode)

