import numpy as np
import pytest

from numpymnv2.data import Dataset, load_dataset, load_digits
from numpymnv2.data.digits import DIGITS_FILE


def test_file_contents():
    with np.load(DIGITS_FILE, allow_pickle=False) as f:
        assert f["images"].shape == (1797, 8, 8) and f["images"].dtype == np.uint8
        assert f["labels"].shape == (1797,) and f["labels"].dtype == np.uint8
        assert f["images"].max() == 16 and f["labels"].max() == 9
        assert np.bincount(f["labels"]).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert DIGITS_FILE.with_name("DIGITS_LICENSE.txt").read_text().count("10.24432/C50P49") == 1


@pytest.mark.parametrize("split,n", [("train", 1497), ("test", 300)])
def test_shapes_dtypes_classes(split, n):
    ds = load_dataset("digits", split=split)
    assert isinstance(ds, Dataset) and ds.name == "digits"
    assert ds.images.shape == (n, 8, 8, 1) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (n,) and ds.labels.dtype == np.int64
    assert ds.classes == [str(d) for d in range(10)] and ds.num_classes == 10
    assert ds.images.max() == 255 and ds.images.min() == 0


def test_split_is_stratified_disjoint_and_covers_everything():
    raw = [load_digits(s, raw=True) for s in ("train", "test")]
    assert np.bincount(raw[1].labels).tolist() == [30] * 10
    with np.load(DIGITS_FILE, allow_pickle=False) as f:
        images, labels, test_index = f["images"], f["labels"], f["test_index"]
    assert len(np.unique(test_index)) == 300
    train_index = np.setdiff1d(np.arange(1797), test_index)
    assert len(train_index) + len(test_index) == 1797
    np.testing.assert_array_equal(raw[1].images[..., 0], images[test_index])
    np.testing.assert_array_equal(raw[0].images[..., 0], images[train_index])
    np.testing.assert_array_equal(raw[0].labels, labels[train_index])


def test_split_is_deterministic():
    a, b = load_digits("test"), load_digits("test")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_rescaling_to_255():
    raw, scaled = load_digits("test", raw=True), load_digits("test")
    np.testing.assert_array_equal(scaled.images, np.round(raw.images.astype(int) * 255 / 16).astype(np.uint8))


def test_dataset_subset_and_validation():
    ds = load_digits("test")
    sub = ds.subset([0, 2])
    assert len(sub) == 2 and sub.classes == ds.classes
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        Dataset(ds.images[:1], np.array([10]), ds.classes, "digits")
    with pytest.raises(ValueError, match="uint8"):
        Dataset(ds.images[:1].astype(np.float32), ds.labels[:1], ds.classes, "digits")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
