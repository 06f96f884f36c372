"""numpymnv2.kernels.linear, the classifier on the fast backend: its products go through gemm and match the
reference pair, with the same checks."""
import numpy as np
import pytest

from kernel_settings import COPIES, TOL, kernel_copy
from numpymnv2.functional import linear as ref
from numpymnv2.kernels import _threads
from numpymnv2.kernels import linear as fast


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, D_in, D_out, bias", [(1, 1280, 1000, True), (64, 40, 10, True), (3, 5, 4, False)])
def test_fast_linear_matches_the_reference(monkeypatch, split, copy, dtype, N, D_in, D_out, bias):
    if split:
        pytest.importorskip("scipy")
    monkeypatch.setitem(_threads._decisions, "split_products", split)
    rng = np.random.default_rng(N + D_in)
    x = rng.standard_normal((N, D_in)).astype(dtype)
    weight = rng.standard_normal((D_out, D_in)).astype(dtype)
    b = rng.standard_normal(D_out).astype(dtype) if bias else None
    dy = rng.standard_normal((N, D_out)).astype(dtype)
    with kernel_copy(copy):
        y, cache = fast.linear_forward(x, weight, b)
        grads = fast.linear_backward(dy, cache)
    y_ref, cache_ref = ref.linear_forward(x, weight, b)
    grads_ref = ref.linear_backward(dy, cache_ref)
    tol = TOL[np.dtype(dtype)]
    for got, want in zip((y, *grads), (y_ref, *grads_ref)):
        assert got.dtype == want.dtype == dtype and got.shape == want.shape
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale * np.sqrt(max(D_in, N)))
        if not split:
            np.testing.assert_array_equal(got, want)      # NumPy's matmul, as the reference


def test_fast_linear_checks_like_the_reference():
    w = np.ones((4, 3))
    for x in (np.ones((2, 5)), np.ones((2, 3, 1))):
        with pytest.raises(ValueError) as fast_error:
            fast.linear_forward(x, w, None)
        with pytest.raises(ValueError) as ref_error:
            ref.linear_forward(x, w, None)
        assert str(fast_error.value) == str(ref_error.value)


def test_fast_linear_takes_a_strided_input():
    x = np.arange(24.0).reshape(4, 6)[:, ::2]
    w = np.arange(12.0).reshape(4, 3)
    y, cache = fast.linear_forward(x, w, None)
    np.testing.assert_allclose(y, x @ w.T)
    dx, dw, db = fast.linear_backward(np.ones((4, 4)), cache)
    np.testing.assert_allclose(dw, np.ones((4, 4)).T @ x)


@pytest.mark.parametrize("copy", COPIES)
def test_fast_linear_passes_a_finite_difference_check(monkeypatch, copy):
    """The fast pair's backward against central differences of its forward, float64, products split (the
    classifier at batch 70 splits into two blocks of rows; its weight gradient sums the blocks)."""
    pytest.importorskip("scipy")
    import numpymnv2 as mn
    monkeypatch.setitem(_threads._decisions, "split_products", True)
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((70, 6)), rng.standard_normal((4, 6)), rng.standard_normal(4)
    with kernel_copy(copy):
        result = mn.gradcheck((fast.linear_forward, fast.linear_backward), (x, w, b))
    assert result.passed and result.checked == x.size + w.size + b.size, str(result)
