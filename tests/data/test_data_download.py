"""The download helper against ``file://`` URLs the tests write; nothing here touches the network."""
import gzip
import hashlib
import io
import tarfile

import numpy as np
import pytest

import numpymnv2.data.fetch as download_module
from numpymnv2.data import download, fetch_file, load_dataset


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_fetch_file_verifies_and_writes(tmp_path):
    data = b"some bytes" * 1000
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    dest = tmp_path / "out" / "copy.bin"
    fetch_file(src.as_uri(), dest, md5=md5(data), sha256=hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    assert list(dest.parent.iterdir()) == [dest]          # no temporary file left behind


def test_fetch_file_checksum_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"tampered")
    dest = tmp_path / "out" / "copy.bin"
    with pytest.raises(ValueError) as err:
        fetch_file(src.as_uri(), dest, md5="0" * 32)
    assert "0" * 32 in str(err.value) and md5(b"tampered") in str(err.value)
    assert list(dest.parent.iterdir()) == []


def test_fetch_file_keeps_old_file_on_failure(tmp_path):
    dest = tmp_path / "copy.bin"
    dest.write_bytes(b"old")
    with pytest.raises(OSError):
        fetch_file((tmp_path / "missing").as_uri(), dest)
    assert dest.read_bytes() == b"old" and list(tmp_path.iterdir()) == [dest]


def _serve(tmp_path, monkeypatch, key, files):
    """Point the resource table of ``key`` at a local mirror holding ``files`` {name: bytes}."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in files.items():
        (mirror / name).write_bytes(data)
    subfolder = download_module.RESOURCES[key][0]
    dead = (tmp_path / "dead").as_uri() + "/"            # an unreachable first mirror, as when one is down
    monkeypatch.setitem(download_module.RESOURCES, key,
                        (subfolder, [dead, mirror.as_uri() + "/"], {n: md5(d) for n, d in files.items()}))
    return mirror


def test_download_mnist_layout_then_load(tmp_path, monkeypatch, fmt):
    images = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28).astype(np.uint8)
    labels = np.array([4, 2], np.uint8)
    files = {}
    for prefix in ("train", "t10k"):
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb") as f:
                f.write(fmt.idx_bytes(arr))
            files[f"{prefix}-{kind}-ubyte.gz"] = buf.getvalue()
    _serve(tmp_path, monkeypatch, "mnist", files)
    folder = download("mnist", tmp_path / "data")
    assert folder == tmp_path / "data" / "MNIST" / "raw"
    ds = load_dataset("mnist", tmp_path / "data", split="test")
    np.testing.assert_array_equal(ds.images[..., 0], images)
    assert ds.labels.tolist() == [4, 2]
    download("mnist", tmp_path / "data")                  # present and verified: nothing fetched, no error


def test_download_cifar_extracts_only_known_members(tmp_path, monkeypatch, fmt):
    rng = np.random.default_rng(0)
    members = {}
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        members[name] = fmt.cifar_bytes(rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
                                        rng.integers(0, 10, 2))
    members["batches.meta.txt"] = "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                             "horse", "ship", "truck"]).encode()
    members["../evil.bin"] = b"must not escape"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name if name.startswith("..") else f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _serve(tmp_path, monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": buf.getvalue()})
    out = download("cifar10", tmp_path / "data")
    assert out == tmp_path / "data" / "cifar-10-batches-bin"
    assert not (tmp_path / "evil.bin").exists() and not (tmp_path / "data" / "evil.bin").exists()
    assert len(load_dataset("cifar10", tmp_path / "data")) == 10
    assert len(load_dataset("cifar10", tmp_path / "data", split="test")) == 2


def test_download_offline_error(tmp_path, monkeypatch):
    name = "cifar-10-binary.tar.gz"
    monkeypatch.setitem(download_module.RESOURCES, "cifar10",
                        ("", [(tmp_path / "nowhere").as_uri() + "/"], {name: "0" * 32}))
    with pytest.raises(ConnectionError) as err:
        download("cifar10", tmp_path / "data")
    msg = str(err.value)
    assert name in msg and "offline" in msg and str(tmp_path / "data" / name) in msg


def test_download_checksum_mismatch(tmp_path, monkeypatch):
    _serve(tmp_path, monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": b"x"})
    monkeypatch.setitem(download_module.RESOURCES, "cifar10",
                        ("", [(tmp_path / "mirror").as_uri() + "/"], {"cifar-10-binary.tar.gz": "f" * 32}))
    with pytest.raises(ValueError, match="checksum mismatch"):
        download("cifar10", tmp_path / "data")
    assert not (tmp_path / "data" / "cifar-10-binary.tar.gz").exists()


def test_download_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="digits is built in"):
        download("digits", tmp_path)
