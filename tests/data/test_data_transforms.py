import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpymnv2.data import load_digits
from numpymnv2.data.transforms import (Compose, GrayToRGB, Normalize, RandomCrop, RandomHorizontalFlip, Resize,
                                       ToFloat, bilinear_resize, channel_stats, default_transform)


def rng(seed=0):
    return np.random.default_rng(seed)


def test_to_float():
    x = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3, 1)
    y = ToFloat()(x, rng())
    assert y.dtype == np.float32 and y.ravel().tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert ToFloat("float64")(x, rng()).dtype == np.float64
    with pytest.raises(TypeError, match="float32"):
        ToFloat("int8")


@pytest.mark.parametrize("h,w,size", [(8, 8, 32), (28, 28, 32), (32, 32, 64), (32, 32, 224), (32, 20, (7, 45))])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_resize_shape_dtype_and_constant(h, w, size, dtype):
    x = np.full((2, h, w, 3), 77, dtype)
    y = bilinear_resize(x, size)
    H_out, W_out = (size, size) if np.isscalar(size) else size
    assert y.shape == (2, H_out, W_out, 3) and y.dtype == dtype
    assert (y == x[0, 0, 0, 0]).all()          # exactly constant, not just close


@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_resize_identity_at_same_size(h, w, seed):
    x = np.random.default_rng(seed).random((2, h, w, 3))
    np.testing.assert_array_equal(Resize((h, w))(x, None), x)


def test_resize_matches_hand_computed_values():
    # 2 -> 4 along W: centres map to s = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]
    x = np.array([[0.0, 4.0]]).reshape(1, 1, 2, 1)
    y = bilinear_resize(x, (1, 4))
    assert y.ravel().tolist() == [0.0, 1.0, 3.0, 4.0]
    # a linear ramp stays linear inside (bilinear reproduces linear functions away from the clamped edges)
    ramp = np.arange(8.0).reshape(1, 1, 8, 1)
    up = bilinear_resize(ramp, (1, 32)).ravel()
    np.testing.assert_allclose(np.diff(up[2:-2]), 0.25)


def test_resize_agrees_with_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).random((2, 8, 11, 3))
    for size in [(32, 32), (5, 30), (3, 4)]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size,
                                              mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(bilinear_resize(x, size), ref, atol=1e-12)


def test_gray_to_rgb():
    x = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)
    y = GrayToRGB()(x, rng())
    assert y.shape == (1, 2, 2, 3) and (y == x).all()
    rgb = np.zeros((1, 2, 2, 3), np.float32)
    assert GrayToRGB()(rgb, rng()) is rgb
    with pytest.raises(ValueError, match="1 or 3 channels"):
        GrayToRGB()(np.zeros((1, 2, 2, 2), np.uint8), rng())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize(dtype):
    x = rng().random((4, 5, 5, 3)).astype(dtype)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    y = Normalize(mean, std)(x, rng())
    assert y.dtype == dtype
    np.testing.assert_allclose(y, (x - np.array(mean)) / np.array(std), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="ToFloat"):
        Normalize(mean, std)(x.astype(np.uint8), rng())
    with pytest.raises(ValueError, match="channels"):
        Normalize([0.5, 0.5], [1, 1])(x, rng())


def test_channel_stats_then_normalize_gives_zero_mean_unit_std():
    images = rng().integers(0, 256, size=(50, 6, 6, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    y = Normalize(mean, std)(ToFloat("float64")(images), None)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_random_crop_with_padding(dtype):
    x = (rng().random((16, 32, 32, 3)) * 200 + 1).astype(dtype)      # no zeros inside the images
    y = RandomCrop(padding=4)(x, rng(1))
    assert y.shape == x.shape and y.dtype == dtype
    # every output is a shifted copy of its input with zero fill; find the shift and check it
    for n in range(len(x)):
        padded = np.pad(x[n], ((4, 4), (4, 4), (0, 0)))
        hits = [(i, j) for i in range(9) for j in range(9) if (padded[i:i + 32, j:j + 32] == y[n]).all()]
        assert len(hits) == 1
    np.testing.assert_array_equal(RandomCrop(padding=4)(x, rng(1)), y)    # same generator, same crops
    assert not np.array_equal(RandomCrop(padding=4)(x, rng(2)), y)


def test_random_crop_smaller_and_too_large():
    x = np.zeros((2, 10, 10, 1), np.float32)
    assert RandomCrop(6)(x, rng()).shape == (2, 6, 6, 1)
    with pytest.raises(ValueError, match="larger"):
        RandomCrop(12, padding=0)(x, rng())


def test_flip():
    x = rng().random((8, 4, 5, 3)).astype(np.float32)
    always = RandomHorizontalFlip(p=1.0)
    np.testing.assert_array_equal(always(x, rng()), x[:, :, ::-1])
    np.testing.assert_array_equal(always(always(x, rng()), rng()), x)
    np.testing.assert_array_equal(RandomHorizontalFlip(p=0.0)(x, rng()), x)
    y = RandomHorizontalFlip()(x, rng(3))
    flipped = [np.array_equal(y[n], x[n, :, ::-1]) for n in range(8)]
    kept = [np.array_equal(y[n], x[n]) for n in range(8)]
    assert all(f != k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_transforms_do_not_modify_input():
    x = rng().integers(0, 256, size=(4, 8, 8, 1), dtype=np.uint8)
    before = x.copy()
    t = Compose([ToFloat(), Resize(16), GrayToRGB(), RandomCrop(padding=2), RandomHorizontalFlip(1.0),
                 Normalize([0.5] * 3, [0.25] * 3)])
    y = t(x, rng())
    assert y.shape == (4, 16, 16, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(t(x, rng()), y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_default_transform_on_digits(dtype):
    ds = load_digits("test")
    train_t, eval_t = default_transform(ds, 32, train=True, dtype=dtype), default_transform(ds, 32, train=False)
    assert not any(isinstance(t, RandomHorizontalFlip) for t in train_t.transforms)   # digits are not mirrored
    y = train_t(ds.images[:10], rng())
    assert y.shape == (10, 32, 32, 3) and y.dtype == np.dtype(dtype)
    z = eval_t(ds.images, None)
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.2
