"""Builders of valid files in every format the package reads, and Hypothesis strategies that damage them."""
from __future__ import annotations

import gzip
import io
import struct
import zlib

import numpy as np
from hypothesis import strategies as st


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims width x height gray pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """``data`` after one to three damages: cut, bytes flipped or overwritten, bytes inserted or appended,
    a slice duplicated. The header region (first 64 bytes) is hit more often, where parsers decide sizes."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cut", "flip", "overwrite", "insert", "append", "repeat", "header"]))
        n = len(out)
        if kind == "cut" and n:
            del out[draw(st.integers(0, n - 1)):]
        elif kind == "flip" and n:
            i = draw(st.integers(0, n - 1))
            out[i] ^= draw(st.integers(1, 255))
        elif kind == "overwrite" and n:
            i = draw(st.integers(0, n - 1))
            chunk = draw(st.binary(min_size=1, max_size=8))
            out[i:i + len(chunk)] = chunk
        elif kind == "insert":
            i = draw(st.integers(0, n))
            out[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "append":
            out += draw(st.binary(min_size=1, max_size=64))
        elif kind == "repeat" and n:
            i = draw(st.integers(0, n - 1))
            out += out[i:i + draw(st.integers(1, 256))]
        elif kind == "header" and n:
            i = draw(st.integers(0, min(n, 64) - 1))
            out[i:i + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
                                                 b"\x00\x01\x00\x00"]))
    return bytes(out)


def npy_header_claiming(shape, dtype="<f8") -> bytes:
    """An .npy header (version 1.0) announcing ``shape`` of ``dtype``, padded as NumPy pads it."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def npz_bytes(arrays: dict, compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()
