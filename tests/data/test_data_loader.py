import numpy as np
import pytest

from numpymnv2.data import DataLoader, Dataset, load_digits
from numpymnv2.data.transforms import Compose, RandomCrop, RandomHorizontalFlip, ToFloat


def tiny(n=10):
    """n images whose every pixel holds the image's own index, so a batch tells which samples it holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 1)).copy()
    return Dataset(images, np.arange(n) % 3, ["a", "b", "c"], "tiny")


def ids(x):
    return np.rint(x[:, 0, 0, 0] * 255).astype(int).tolist()


def test_len_and_drop_last():
    ds = tiny(10)
    assert len(DataLoader(ds, 4)) == 3 and len(DataLoader(ds, 4, drop_last=True)) == 2
    assert len(DataLoader(ds, 5)) == 2 and len(DataLoader(ds, 5, drop_last=True)) == 2
    sizes = [len(y) for _, y in DataLoader(ds, 4).epoch(0)]
    assert sizes == [4, 4, 2]
    assert [len(y) for _, y in DataLoader(ds, 4, drop_last=True).epoch(0)] == [4, 4]


def test_every_sample_once_per_epoch_and_labels_follow_images():
    ds = tiny(10)
    loader = DataLoader(ds, 3)
    for e in range(3):
        seen = []
        for x, y in loader.epoch(e):
            assert x.dtype == np.float32 and x.shape[1:] == (2, 2, 1) and y.dtype == np.int64
            assert (y == np.array(ids(x)) % 3).all()
            seen += ids(x)
        assert sorted(seen) == list(range(10))


def test_same_seed_and_epoch_same_batches_bit_for_bit():
    ds = load_digits("test")
    t = Compose([ToFloat(), RandomCrop(padding=1), RandomHorizontalFlip()])
    a = list(DataLoader(ds, 32, transform=t, seed=7).epoch(3))
    fresh = DataLoader(ds, 32, transform=t, seed=7)
    for e in range(3):                                  # running other epochs first changes nothing
        list(fresh.epoch(e))
    b = list(fresh.epoch(3))
    assert len(a) == len(b) == 10
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.tobytes() == xb.tobytes() and (ya == yb).all()


def test_resume_mid_epoch():
    ds = load_digits("test")
    t = Compose([ToFloat(), RandomCrop(padding=1)])
    loader = DataLoader(ds, 64, transform=t, seed=1)
    full = list(loader.epoch(2))
    tail = list(loader.epoch(2, start_batch=3))
    assert len(tail) == len(full) - 3
    for (xa, ya), (xb, yb) in zip(full[3:], tail):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_order_depends_on_epoch_and_seed():
    ds = tiny(50)
    loader = DataLoader(ds, 50)
    orders = [ids(next(iter(loader.epoch(e)))[0]) for e in range(3)]
    assert orders[0] != orders[1] != orders[2]
    assert loader.order(1).tolist() == orders[1]
    assert DataLoader(ds, 50, seed=1).order(0).tolist() != orders[0]
    assert DataLoader(ds, 50, shuffle=False).order(5).tolist() == list(range(50))


def test_iter_advances_epochs():
    loader = DataLoader(tiny(20), 20)
    first, second = [ids(next(iter(loader))[0]) for _ in range(2)]
    assert first == loader.order(0).tolist() and second == loader.order(1).tolist()
    assert loader.next_epoch == 2


def test_dtype_and_no_transform_scaling():
    ds = tiny(4)
    x, _ = next(iter(DataLoader(ds, 4, shuffle=False, dtype="float64").epoch(0)))
    assert x.dtype == np.float64 and x[:, 0, 0, 0].tolist() == pytest.approx([0, 1 / 255, 2 / 255, 3 / 255])


def test_dataset_left_untouched():
    ds = tiny(8)
    before = ds.images.copy()
    for _ in DataLoader(ds, 3, transform=RandomHorizontalFlip(1.0)).epoch(0):
        pass
    np.testing.assert_array_equal(ds.images, before)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(tiny(), 0)
    with pytest.raises(ValueError, match="no batch"):
        DataLoader(tiny(3), 4, drop_last=True)
    with pytest.raises(TypeError, match="float32"):
        DataLoader(tiny(), 2, dtype="float16")
    with pytest.raises(TypeError, match="images"):
        DataLoader([1, 2, 3], 2)
