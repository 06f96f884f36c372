import gzip

import numpy as np
import pytest

from numpymnv2.data import load_dataset, read_idx
from numpymnv2.data.mnist import FASHION_MNIST_CLASSES


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("split,prefix", [("train", "train"), ("test", "t10k")])
def test_mnist_reads_idx_files(tmp_path, make_idx_split, gz, split, prefix):
    images, labels = make_idx_split(tmp_path, prefix, n=4, gz=gz)
    ds = load_dataset("mnist", tmp_path, split=split)
    assert ds.images.shape == (4, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.images[..., 0], images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.classes == [str(d) for d in range(10)] and ds.name == "mnist"


@pytest.mark.parametrize("name,sub", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_conventional_subfolder(tmp_path, make_idx_split, name, sub):
    images, _ = make_idx_split(tmp_path / sub / "raw", "t10k", n=3, gz=True)
    ds = load_dataset(name, tmp_path, split="test")
    np.testing.assert_array_equal(ds.images[..., 0], images)
    if name == "fashion-mnist":
        assert ds.classes == FASHION_MNIST_CLASSES and ds.classes[9] == "Ankle boot"


def test_missing_file_names_file_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist", tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path) in msg and str(tmp_path / "MNIST" / "raw") in msg
    assert "download" in msg


def test_missing_labels_only(tmp_path, make_idx_split):
    make_idx_split(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)


def test_wrong_magic_number(tmp_path, make_idx_split, fmt):
    make_idx_split(tmp_path)
    # swap the roles: a label file where the images should be
    (tmp_path / "train-images-idx3-ubyte").write_bytes(fmt.idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "2051" in msg and "2049" in msg


def test_not_an_idx_file(tmp_path, fmt):
    path = fmt.write(tmp_path / "x", b"\x89PNG\r\n\x1a\nmore")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_body(tmp_path, make_idx_split, gz, fmt):
    make_idx_split(tmp_path, n=3)
    data = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").unlink()
    fmt.write(tmp_path / "train-images-idx3-ubyte", data[:-10], gz)
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "truncated" in msg
    assert str(16 + 3 * 784) in msg and str(16 + 3 * 784 - 10) in msg


def test_truncated_header_and_trailing_bytes(tmp_path, fmt):
    full = fmt.idx_bytes(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(fmt.write(tmp_path / "a", full[:9]))
    with pytest.raises(ValueError, match="at least a 4-byte header"):
        read_idx(fmt.write(tmp_path / "b", full[:2]))
    with pytest.raises(ValueError, match="trailing bytes"):
        read_idx(fmt.write(tmp_path / "c", full + b"\x00"))


def test_broken_gzip_stream(tmp_path, make_idx_split):
    make_idx_split(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("mnist", tmp_path)


def test_count_mismatch(tmp_path, make_idx_split, fmt):
    make_idx_split(tmp_path, n=5)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(fmt.idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", tmp_path)
    msg = str(err.value)
    assert "5 images" in msg and "4 labels" in msg and "train-labels-idx1-ubyte" in msg


def test_label_out_of_range(tmp_path, make_idx_split, fmt):
    make_idx_split(tmp_path, n=2)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(fmt.idx_bytes(np.array([3, 10], np.uint8)))
    with pytest.raises(ValueError, match="got a label 10"):
        load_dataset("mnist", tmp_path)


def test_read_idx_other_element_types(tmp_path, fmt):
    x = np.arange(6, dtype=">i4").reshape(2, 3) - 3
    path = tmp_path / "ints.idx.gz"
    with gzip.open(path, "wb") as f:
        f.write(fmt.idx_bytes(x, type_code=0x0C))
    y = read_idx(path)
    np.testing.assert_array_equal(y, x)
    assert y.dtype == np.int32 and y.dtype.isnative and y.flags.writeable


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", tmp_path, split="validation")
