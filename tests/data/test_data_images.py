"""open_image / read_image: every Pillow mode to the right 8-bit pixels, and hostile files refused by name."""
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from numpymnv2.data import load_dataset
from numpymnv2.data.images import open_image, read_image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header claims width x height 8-bit gray pixels, with ``idat`` as its (short) data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def saved(tmp_path, im, name, **kwargs):
    path = tmp_path / name
    im.save(path, **kwargs)
    return path


@pytest.mark.parametrize("value, expected", [(65535, 255), (32768, 128), (257, 1), (128, 0), (0, 0)])
def test_16_bit_gray_is_scaled_not_saturated(tmp_path, value, expected):
    path = saved(tmp_path, Image.fromarray(np.full((3, 5), value, np.uint16)), "g16.png")
    assert Image.open(path).mode.startswith("I;16")
    x = read_image(path)
    assert x.shape == (3, 5, 3) and x.dtype == np.uint8 and (x == expected).all()
    assert (read_image(path, "L") == expected).all() and read_image(path, "L").shape == (3, 5, 1)


def test_16_bit_gradient_keeps_its_order(tmp_path):
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    x = read_image(saved(tmp_path, Image.fromarray(ramp), "ramp.png"), "L")[..., 0]
    assert x[0, 0] == 0 and x[-1, -1] == 255 and (np.diff(x.reshape(-1).astype(int)) >= 0).all()
    assert len(np.unique(x)) > 50          # not collapsed to white as convert("RGB") of I;16 does


def test_32_bit_integer_mode_is_taken_as_16_bit(tmp_path):
    path = saved(tmp_path, Image.new("I", (2, 2), 32768), "i.tif")
    assert (read_image(path) == 128).all()


def test_one_bit_palette_cmyk_ycbcr(tmp_path):
    assert (read_image(saved(tmp_path, Image.new("1", (4, 2), 1), "b.png")) == 255).all()
    pal = Image.new("P", (4, 2), 1)
    pal.putpalette([10, 20, 30, 200, 100, 50])
    assert read_image(saved(tmp_path, pal, "p.gif"))[0, 0].tolist() == [200, 100, 50]
    assert read_image(saved(tmp_path, Image.new("CMYK", (4, 2), (0, 255, 0, 0)), "c.tif"))[0, 0].tolist() == \
        [255, 0, 255]
    assert read_image(saved(tmp_path, Image.new("L", (4, 2), 77), "l.png"))[0, 0].tolist() == [77, 77, 77]


def test_transparency_is_composited_over_the_background(tmp_path):
    rgba = saved(tmp_path, Image.new("RGBA", (2, 2), (0, 0, 0, 128)), "rgba.png")
    assert read_image(rgba)[0, 0].tolist() == [127, 127, 127]           # half-transparent black on white
    assert read_image(rgba, background=(0, 0, 0))[0, 0].tolist() == [0, 0, 0]
    assert (read_image(saved(tmp_path, Image.new("LA", (2, 2), (0, 0)), "la.png")) == 255).all()
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([10, 20, 30])
    path = saved(tmp_path, pal, "pt.png", transparency=0)
    assert "transparency" in Image.open(path).info
    assert (read_image(path) == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (2, 1))
    im.putpixel((0, 0), (255, 0, 0))
    im.putpixel((1, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6                        # "rotate 90 degrees clockwise to display"
    x = read_image(saved(tmp_path, im, "o.png", exif=exif.tobytes()))
    assert x.shape == (2, 1, 3)
    assert x[:, 0].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_float_images_are_refused(tmp_path):
    path = saved(tmp_path, Image.new("F", (2, 2), 0.5), "f.tif")
    with pytest.raises(ValueError, match="f.tif.*floating-point"):
        read_image(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20000, 20000))         # 400 megapixels claimed by 100 bytes
    (tmp_path / "big.png").write_bytes(png_header_only(10000, 10000))  # between Pillow's limit and twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # Pillow's DecompressionBombWarning must not escape either
        with pytest.raises(ValueError, match=r"bomb.png.*too large.*decompression bomb"):
            read_image(path)
        with pytest.raises(ValueError, match=r"big.png.*10000x10000.*limit"):
            read_image(tmp_path / "big.png")
    with pytest.raises(ValueError, match="limit of 100"):
        read_image(saved(tmp_path, Image.new("L", (11, 10)), "small.png"), max_pixels=100)


def test_damaged_files_name_themselves(tmp_path):
    good = saved(tmp_path, Image.fromarray(np.arange(3000, dtype=np.uint8).reshape(50, 60)), "good.png")
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    (tmp_path / "text.png").write_bytes(b"hello")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bad.png").write_bytes(png_header_only(8, 8, idat=b"not zlib at all"))
    for name in ("cut.png", "text.png", "empty.png", "bad.png"):
        with pytest.raises(ValueError, match=name):
            read_image(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")
    with pytest.raises(IsADirectoryError):
        read_image(tmp_path)


def test_eps_is_never_decoded(tmp_path):
    path = tmp_path / "looks.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ValueError, match="looks.png.*supported format"):
        open_image(path)


def test_folder_dataset_reads_16_bit_images_and_refuses_empty_classes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(tmp_path / "a" / "0.png")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "b" / "0.png")
    ds = load_dataset("folder", tmp_path)
    assert (ds.images[0] == 128).all()
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="class folder.*c .*no image files"):
        load_dataset("folder", tmp_path)

