"""Optional download of MNIST, Fashion-MNIST and CIFAR-10 into the layout the readers look for.

Nothing else in the package touches the network. Each file is fetched with ``urllib``, hashed while it
streams into a temporary file next to its destination, compared with the published MD5, and only then
renamed into place with ``os.replace``; an interrupted or corrupt download never leaves a file under the
final name. Files already present with the right checksum are not fetched again.

Layout written under ``data_dir``::

    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    FashionMNIST/raw/...same four names...
    cifar-10-binary.tar.gz  and  cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin, batches.meta.txt
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from numpymnv2.data.dataset import resolve_data_dir

_IDX_NAMES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]

# name -> (sub-folder, mirrors, {file name: md5}); the MD5s are the ones the data sets' authors publish.
RESOURCES = {
    "mnist": ("MNIST/raw",
              ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
              dict(zip(_IDX_NAMES, ["f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                    "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"]))),
    "fashion-mnist": ("FashionMNIST/raw",
                      ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                       "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"],
                      dict(zip(_IDX_NAMES, ["8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                            "bef4ecab320f06d8554ea6380940ec79",
                                            "bb300cfdad3c16e7a12a480ee83cd310"]))),
    "cifar10": ("", ["https://www.cs.toronto.edu/~kriz/"],
                {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}),
}
CIFAR_MEMBERS = [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin", "batches.meta.txt"]


def file_hash(path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_file(url: str, dest, md5: str | None = None, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, checking MD5 and/or SHA-256 when given.

    Raises
    ------
    urllib.error.URLError, OSError
        The URL cannot be read (no network, 404, missing ``file://`` path).
    ValueError
        The content does not have the expected checksum; nothing is written under ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    hashes = {name: hashlib.new(name) for name, want in (("md5", md5), ("sha256", sha256)) if want}
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                for h in hashes.values():
                    h.update(chunk)
        for name, want in (("md5", md5), ("sha256", sha256)):
            if want and hashes[name].hexdigest() != want.lower():
                raise ValueError(f"{url}: {name} checksum mismatch for {dest.name}: expected {want.lower()}, "
                                 f"got {hashes[name].hexdigest()}; the download is corrupt or the file changed")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def _fetch_from_mirrors(mirrors: list[str], name: str, dest: Path, md5: str, force: bool) -> Path:
    if dest.is_file() and not force and file_hash(dest) == md5:
        return dest
    failures = []
    for base in mirrors:
        url = base + name
        try:
            return fetch_file(url, dest, md5=md5)
        except (urllib.error.URLError, OSError) as exc:  # unreachable mirror: try the next one
            failures.append(f"{url} ({getattr(exc, 'reason', exc)})")
    raise ConnectionError(f"could not download {name}: tried {'; '.join(failures)}. If this machine is offline, "
                          f"fetch the file elsewhere and copy it to {dest}")


def _extract_cifar(archive: Path, folder: Path) -> None:
    """Copy the known members out of the tarball by base name; no path inside the archive is trusted."""
    folder.mkdir(parents=True, exist_ok=True)
    found = set()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            name = Path(member.name).name
            if member.isfile() and name in CIFAR_MEMBERS:
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
                try:
                    with os.fdopen(fd, "wb") as out, tar.extractfile(member) as src:
                        shutil.copyfileobj(src, out)
                    os.replace(tmp, folder / name)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                found.add(name)
    missing = [n for n in CIFAR_MEMBERS if n not in found]
    if missing:
        raise ValueError(f"{archive}: the archive lacks {', '.join(missing)}")


def download(name: str, data_dir=None, force: bool = False) -> Path:
    """Download a data set into ``data_dir`` (default :func:`numpymnv2.data.default_data_dir`).

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "cifar10"}
    data_dir : str or Path, optional
        Pass the same folder to :func:`numpymnv2.data.load_dataset` afterwards.
    force : bool
        Fetch again even when a file with the right checksum is present.

    Returns
    -------
    Path
        The folder holding the files the reader needs.

    Raises
    ------
    ConnectionError
        No mirror could be reached (the message says where to copy the file by hand).
    ValueError
        A downloaded file has the wrong checksum.
    """
    key = name.lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}.get(key, key)
    if key not in RESOURCES:
        raise ValueError(f"download: unknown data set {name!r}; expected one of {', '.join(RESOURCES)} "
                         f"(digits is built in)")
    subfolder, mirrors, files = RESOURCES[key]
    root = resolve_data_dir(data_dir)
    folder = root / subfolder if subfolder else root
    for file_name, md5 in files.items():
        _fetch_from_mirrors(mirrors, file_name, folder / file_name, md5, force)
    if key == "cifar10":
        out = root / "cifar-10-batches-bin"
        if force or not all((out / n).is_file() for n in CIFAR_MEMBERS):
            _extract_cifar(folder / "cifar-10-binary.tar.gz", out)
        return out
    return folder
