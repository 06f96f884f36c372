"""Hostile files: claimed sizes are judged before memory is spent, and nothing is read beyond the claim."""
import gzip
import io
import struct
import time
import zipfile

import numpy as np
import pytest

from numpymnv2._untrusted import UntrustedFileError, check_state_values, load_npz, regular_file_size
from numpymnv2.data.cifar import read_cifar_batch
from numpymnv2.data.mnist import read_idx


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_header_claiming(shape, dtype="<f8") -> bytes:
    """An .npy header (version 1.0) announcing ``shape`` of ``dtype``, padded as NumPy pads it."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def write_zip(path, members: dict, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_round_trip_and_selection(tmp_path):
    arrays = {"a": np.arange(6.0).reshape(2, 3), "b/c": np.array("text"), "f": np.asfortranarray(np.eye(3)[:, :2]),
              "empty": np.zeros((0, 4), np.float32)}
    np.savez(tmp_path / "x.npz", **arrays)
    got = load_npz(tmp_path / "x.npz", "x")
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v, strict=True)
    assert list(load_npz(tmp_path / "x.npz", "x", select=lambda n: n.startswith("b/"))) == ["b/c"]


def test_an_entry_claiming_2_to_the_40_elements_is_refused_without_allocating(tmp_path):
    path = write_zip(tmp_path / "huge.npz", {"w.npy": npy_header_claiming((2 ** 40,)) + b"\0" * 80})
    with pytest.raises(UntrustedFileError, match=r"huge.*'w'.*claims shape \(1099511627776,\)"):
        load_npz(path, "huge.npz")


def test_a_zip_bomb_is_refused_from_its_directory_before_inflating(tmp_path):
    n = 50 * 10 ** 6                                       # 50 MB of zeros deflate to about 50 kB
    data = npy_header_claiming((n,), "|u1") + bytes(n)
    path = write_zip(tmp_path / "bomb.npz", {"z.npy": data}, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 200_000
    t = time.perf_counter()
    with pytest.raises(UntrustedFileError, match=r"claim 50.\d MB uncompressed, more than the 1.0 MB"):
        load_npz(path, "bomb.npz", max_bytes=10 ** 6)
    assert time.perf_counter() - t < 0.5


def test_a_member_whose_directory_understates_its_size_is_caught(tmp_path):
    """The central directory says 100 bytes, the stream inflates to 1 MB: no more than 100 are ever produced."""
    data = npy_bytes(np.zeros(131072))
    path = write_zip(tmp_path / "liar.npz", {"x.npy": data}, zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24:central + 28] = struct.pack("<I", 100)     # uncompressed size in the central directory
    path.write_bytes(bytes(raw))
    with pytest.raises(UntrustedFileError, match="liar"):
        load_npz(path, "liar.npz")


@pytest.mark.parametrize("members, message", [
    ({"a.npy": npy_header_claiming((1,), "|O") + b"\x80\x04pickled"}, "Python objects"),
    ({"a.txt": b"hello"}, "not an .npy array"),
    ({"a.npy": b"\x93NUMPY\x09\x00junk"}, "cannot be read|not supported"),
    ({"a.npy": npy_bytes(np.arange(10.0))[:-8]}, "holds .* of data"),
    ({"a.npy": npy_bytes(np.arange(10.0)) + b"extra"}, "holds .* of data"),
])
def test_malformed_members_are_named(tmp_path, members, message):
    path = write_zip(tmp_path / "m.npz", members)
    with pytest.raises(UntrustedFileError, match=message):
        load_npz(path, "m.npz")


def test_duplicate_entries_and_crc_errors(tmp_path):
    with zipfile.ZipFile(tmp_path / "dup.npz", "w") as zf:
        zf.writestr("a.npy", npy_bytes(np.zeros(2)))
        with pytest.warns(UserWarning, match="Duplicate"):
            zf.writestr("a.npy", npy_bytes(np.ones(2)))
    with pytest.raises(UntrustedFileError, match="twice"):
        load_npz(tmp_path / "dup.npz", "dup.npz")
    path = write_zip(tmp_path / "crc.npz", {"a.npy": npy_bytes(np.arange(100.0))})
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"\x93NUMPY") + 300] ^= 0xFF                   # flip a data byte
    path.write_bytes(bytes(raw))
    with pytest.raises(UntrustedFileError, match="CRC|cannot be read"):
        load_npz(path, "crc.npz")


def test_state_values():
    check_state_values({"bn.running_var": np.ones(3), "w": np.zeros(2, np.float32)}, "w.npz")
    with pytest.raises(ValueError, match="w.npz: a, b, c, d and 1 more hold NaN or infinite"):
        check_state_values({k: np.array([np.nan]) for k in "abcde"}, "w.npz")
    with pytest.raises(ValueError, match="bn.running_var holds negative"):
        check_state_values({"bn.running_var": np.array([1.0, -1.0])}, "w.npz")


# -- IDX and CIFAR -----------------------------------------------------------------------------------------
def idx_header(shape, type_code=0x08) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + b"".join(int(n).to_bytes(4, "big") for n in shape)


def test_idx_gz_that_inflates_beyond_its_header_stops_at_the_header(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(idx_header((10,)) + bytes(30 * 10 ** 6))        # 10 labels announced, 30 MB inflate
    t = time.perf_counter()
    with pytest.raises(ValueError, match="trailing bytes"):
        read_idx(path)
    assert time.perf_counter() - t < 0.5                       # 30 MB were not inflated to find out


def test_idx_header_announcing_more_than_memory_is_refused_before_reading(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(idx_header((2 ** 32 - 1, 2 ** 16, 2 ** 16)))
    with pytest.raises(ValueError, match=r"announces shape .* more than"):
        read_idx(path)
    with pytest.raises(ValueError, match="more than the 1.0 kB"):
        (tmp_path / "small").write_bytes(idx_header((2000,)) + bytes(2000))
        read_idx(tmp_path / "small", max_bytes=1000)


def test_devices_and_folders_are_not_datasets(tmp_path):
    with pytest.raises(UntrustedFileError, match="not a regular file"):
        read_cifar_batch("/dev/zero")
    with pytest.raises(IsADirectoryError):
        regular_file_size(tmp_path, "cifar10")
