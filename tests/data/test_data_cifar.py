import numpy as np
import pytest

from numpymnv2.data import load_dataset, read_cifar_batch
from numpymnv2.data.cifar import CIFAR10_CLASSES


def test_record_layout_is_label_then_rgb_planes(tmp_path, fmt):
    # one record built by hand: pixel (row 1, col 2) has R=11, G=22, B=33, everything else 0
    record = np.zeros(3073, np.uint8)
    record[0] = 7
    record[1 + 0 * 1024 + 1 * 32 + 2] = 11
    record[1 + 1 * 1024 + 1 * 32 + 2] = 22
    record[1 + 2 * 1024 + 1 * 32 + 2] = 33
    path = fmt.write(tmp_path / "test_batch.bin", record.tobytes())
    images, labels = read_cifar_batch(path)
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8 and images.flags.c_contiguous
    assert labels.tolist() == [7]
    assert images[0, 1, 2].tolist() == [11, 22, 33]
    assert images.sum() == 66


def test_train_split_concatenates_batches_in_order(tmp_path, make_cifar_batch):
    parts = [make_cifar_batch(tmp_path / f"data_batch_{k}.bin", n=k, seed=k) for k in range(1, 6)]
    ds = load_dataset("cifar10", tmp_path)
    assert ds.images.shape == (15, 32, 32, 3) and ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.images, np.concatenate([im for im, _ in parts]))
    np.testing.assert_array_equal(ds.labels, np.concatenate([lb for _, lb in parts]))
    assert ds.classes == CIFAR10_CLASSES and ds.name == "cifar10"


def test_subfolder_and_meta_class_names(tmp_path, make_cifar_batch):
    folder = tmp_path / "cifar-10-batches-bin"
    images, labels = make_cifar_batch(folder / "test_batch.bin", n=2)
    (folder / "batches.meta.txt").write_text("\n".join(f"class{k}" for k in range(10)) + "\n\n")
    ds = load_dataset("cifar10", tmp_path, split="test")
    np.testing.assert_array_equal(ds.images, images)
    assert ds.classes == [f"class{k}" for k in range(10)]


def test_missing_train_batches_warn(tmp_path, make_cifar_batch):
    make_cifar_batch(tmp_path / "data_batch_2.bin", n=2)
    with pytest.warns(UserWarning, match="data_batch_1.bin, data_batch_3.bin"):
        ds = load_dataset("cifar10", tmp_path)
    assert len(ds) == 2


def test_no_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert "data_batch_1.bin" in msg and str(tmp_path / "cifar-10-batches-bin") in msg and "download" in msg
    with pytest.raises(FileNotFoundError, match="test_batch.bin"):
        load_dataset("cifar10", tmp_path, split="test")


def test_partial_record(tmp_path, make_cifar_batch):
    path = tmp_path / "test_batch.bin"
    make_cifar_batch(path, n=2)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10", tmp_path, split="test")
    msg = str(err.value)
    assert "test_batch.bin" in msg and "3073" in msg and str(2 * 3073 - 100) in msg


def test_empty_file(tmp_path):
    (tmp_path / "test_batch.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="test_batch.bin"):
        load_dataset("cifar10", tmp_path, split="test")


def test_label_out_of_range(tmp_path, fmt):
    images = np.zeros((2, 32, 32, 3), np.uint8)
    fmt.write(tmp_path / "test_batch.bin", fmt.cifar_bytes(images, np.array([1, 12])))
    with pytest.raises(ValueError, match="got 12 in record 1"):
        load_dataset("cifar10", tmp_path, split="test")
