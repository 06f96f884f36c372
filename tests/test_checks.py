"""Input validation shared by every layer: each error names who rejected the input, what it expected and got."""
import numpy as np
import pytest

from numpymnv2._checks import check_array, check_hyperparameter, check_same_shape, conv_output_size, resolve_dtype


def test_resolve_dtype():
    assert resolve_dtype("float32") == np.float32 and resolve_dtype(np.float64) == np.float64
    with pytest.raises(TypeError, match="dtype must be 'float32' or 'float64', got float16"):
        resolve_dtype("float16")
    with pytest.raises(TypeError, match="got 'banana'"):
        resolve_dtype("banana")


def test_check_array_accepts_and_returns():
    x = np.zeros((1, 2, 2, 3), np.float32)
    assert check_array(x, "L", ndim=4, channels=3, dtype=np.float32) is x


@pytest.mark.parametrize("x,kwargs,error,message", [
    ([1.0], {}, TypeError, "L: expected the input to be a numpy.ndarray, got list"),
    (np.zeros(3, np.int32), {}, TypeError, "L: expected a float32 or float64 input, got dtype int32"),
    (np.zeros(3, np.float16), {}, TypeError, "got dtype float16"),
    (np.zeros(3, bool), {}, TypeError, "got dtype bool"),
    (np.zeros(3, np.float32), {"dtype": np.float64}, TypeError,
     "L: expected a float64 input to match the layer's parameters, got float32"),
    (np.zeros((2, 3)), {"ndim": 4}, ValueError, "L: expected a 4-D input (N, H, W, C), got 2-D with shape (2, 3)"),
    (np.zeros((2, 3, 3)), {"ndim": 2}, ValueError, "L: expected a 2-D input, got 3-D"),
    (np.zeros((1, 2, 2, 5)), {"channels": 3}, ValueError,
     "L: expected input with 3 channels, got 5 (shape (1, 2, 2, 5))"),
    (np.zeros((0, 3)), {}, ValueError, "L: got an empty input with shape (0, 3)"),
    (np.array([1.0, np.nan, np.inf]), {}, ValueError, "L: the input contains 2 NaN or infinite value(s) (shape (3,))"),
    (np.array([1.0, np.nan]), {"what": "gradient"}, ValueError, "L: the gradient contains 1 NaN"),
])
def test_check_array_rejects(x, kwargs, error, message):
    with pytest.raises(error) as err:
        check_array(x, "L", **kwargs)
    assert message in str(err.value)


def test_check_array_finite_can_be_skipped():
    x = np.array([np.nan])
    assert check_array(x, "L", finite=False) is x


def test_check_same_shape():
    d = np.zeros((2, 3))
    assert check_same_shape(d, (2, 3), "L") is d
    with pytest.raises(ValueError, match="L: expected a gradient of shape \\(2, 3\\) \\(the forward output's "
                                         "shape\\), got \\(3, 2\\)"):
        check_same_shape(np.zeros((3, 2)), (2, 3), "L")
    with pytest.raises(TypeError, match="float32 or float64 gradient, got dtype int64"):
        check_same_shape(np.zeros((2, 3), np.int64), (2, 3), "L")
    with pytest.raises(TypeError, match="numpy.ndarray, got float"):
        check_same_shape(1.0, (), "L")


@pytest.mark.parametrize("size,k,s,p,expected", [(224, 3, 2, 1, 112), (7, 3, 1, 1, 7), (1, 3, 2, 1, 1),
                                                 (5, 5, 1, 0, 1), (8, 1, 3, 0, 3), (2, 1, 1, 2, 6)])
def test_conv_output_size(size, k, s, p, expected):
    assert conv_output_size(size, k, s, p, "L") == expected


@pytest.mark.parametrize("args,error,message", [
    ((4, 5, 1, 0), ValueError, "L: input H=4 with kernel_size=5, stride=1, padding=0 gives an empty output (H_out=0)"),
    ((4, 3, 0, 0), ValueError, "L: expected stride >= 1, got 0"),
    ((4, 0, 1, 0), ValueError, "L: expected kernel_size >= 1, got 0"),
    ((4, 3, 1, -1), ValueError, "L: expected padding >= 0, got -1"),
    ((4, 3, 1.0, 0), TypeError, "L: expected an integer stride, got 1.0"),
])
def test_conv_output_size_rejects(args, error, message):
    with pytest.raises(error) as err:
        conv_output_size(*args, "L")
    assert message in str(err.value)


def test_check_hyperparameter():
    assert check_hyperparameter(np.int64(3), "stride", "L") == 3
    assert check_hyperparameter(0, "padding", "L", minimum=0) == 0
    with pytest.raises(TypeError, match="L: expected an integer stride, got True"):
        check_hyperparameter(True, "stride", "L")
    with pytest.raises(ValueError, match="L: expected channels >= 1, got -2"):
        check_hyperparameter(-2, "channels", "L")
