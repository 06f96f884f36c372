"""numpymnv2.kernels.gemm: the products split over Numba's pool (NUMPYMNV2_THREADING=omp) equal NumPy's, on
both kernel copies, and fall back to NumPy's matmul where they do not apply; the fast pointwise pair built on
them matches the reference."""
import numpy as np
import pytest

from kernel_settings import TOL, kernel_copy
from numpymnv2.functional import pointwise as ref_pointwise
from numpymnv2.kernels import _threads, gemm
from numpymnv2.kernels import pointwise as fast_pointwise


@pytest.fixture
def split(monkeypatch):
    """The split products switched on, as under NUMPYMNV2_THREADING=omp (np.dot in a Numba kernel needs SciPy)."""
    pytest.importorskip("scipy")
    monkeypatch.setitem(_threads._decisions, "split_products", True)


def _arrays(M, K, N, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)


def _count_launches(monkeypatch):
    """The kernels launched, by name: rows, tn, columns, with the number of blocks (for tn and inner, one more
    than the partial products beside ``out``)."""
    launches = []
    for name, kernel in (("rows", gemm._PRODUCTS), ("tn", gemm._PRODUCTS_TN), ("columns", gemm._PRODUCTS_COLS),
                         ("tn columns", gemm._PRODUCTS_TN_COLS), ("inner", gemm._PRODUCTS_INNER)):
        def counted(*args, _launch=kernel.launch, _name=name):
            blocks = args[-1] if isinstance(args[-1], int) else args[-1].shape[0] + (_name in ("tn", "inner"))
            launches.append((_name, blocks))
            return _launch(*args)
        monkeypatch.setattr(kernel, "launch", counted)
    return launches


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M", [64, 65, 201])        # the smallest split (two blocks of 32 rows), uneven blocks
def test_split_products_equal_numpy(split, monkeypatch, dtype, M):
    a, b = _arrays(M, 7, 5, dtype)
    w = np.ascontiguousarray(b.T)                   # a weight T (C_out, C_in): the product takes T.T, F-ordered
    out = np.full((M, 5), np.nan, dtype)
    launches = _count_launches(monkeypatch)
    with kernel_copy("parallel"):
        assert gemm.matmul(a, w.T, out) is out
        fresh = gemm.matmul(a, b)
        tn = gemm.matmul_tn(a, out)
    assert launches == [("rows", 2), ("rows", 2), ("tn", 2)]
    with kernel_copy("serial"):                     # below the parallel work: one block, one BLAS call
        serial = gemm.matmul(a, b)
        serial_tn = gemm.matmul_tn(a, out)
    assert launches[3:] == [("rows", 1), ("tn", 1)]
    tol = TOL[np.dtype(dtype)]
    for got in (out, fresh, serial):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, a @ b, rtol=tol, atol=tol)
    for got in (tn, serial_tn):
        assert got.dtype == dtype and got.shape == (7, 5)
        np.testing.assert_allclose(got, a.T @ out, rtol=tol, atol=tol * M)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [128, 129, 301])      # the smallest column split (two blocks of 64), uneven blocks
def test_few_rows_split_over_the_columns(split, monkeypatch, dtype, N):
    """49 rows (the 7x7 layers at batch 1) are too few to split over the rows: the columns are split instead,
    from the weight's transposed view or from the weight given as ``b_t``; without either, or with fewer than
    two blocks of 64 columns, one block."""
    a, b = _arrays(49, 9, N, dtype)
    w = np.ascontiguousarray(b.T)                   # the weight T (N, K)
    c_ordered = np.ascontiguousarray(b)
    launches = _count_launches(monkeypatch)
    with kernel_copy("parallel"):
        from_view = gemm.matmul(a, w.T)
        out = np.full((49, N), np.nan, dtype)
        assert gemm.matmul(a, c_ordered, out, b_t=w) is out
        assert launches == [("columns", 2), ("columns", 2)]
        one_block = [gemm.matmul(a, c_ordered), gemm.matmul(a, c_ordered, b_t=np.asfortranarray(w)),
                     gemm.matmul(a, w[:127].T)]
    assert launches[2:] == [("rows", 1)] * 3
    tol = TOL[np.dtype(dtype)]
    assert from_view.dtype == out.dtype == dtype
    np.testing.assert_allclose(from_view, a @ b, rtol=tol, atol=tol)
    np.testing.assert_array_equal(out, from_view)
    for got, want in zip(one_block, (a @ b, a @ b, a @ b[:, :127])):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K", [128, 129, 301])      # the smallest split (two blocks of 64), uneven blocks
def test_few_rows_split_over_the_inner_dimension(split, monkeypatch, dtype, K):
    """``dL/dX = dZ T`` of a layer with few rows (the 1x1 layers of a batch-32, 32x32 step: 32 rows): ``T`` is
    C-ordered, so no column split; the inner dimension is split instead, each block's product into its own
    partial sum; fewer than two blocks of 64 inner values, one block."""
    a, b = _arrays(32, K, 40, dtype)
    launches = _count_launches(monkeypatch)
    with kernel_copy("parallel"):
        got = gemm.matmul(a, b)
        out = np.full((32, 40), np.nan, dtype)
        assert gemm.matmul(a, b, out) is out
        narrow = gemm.matmul(a[:, :127].copy(), b[:127])
    assert launches == [("inner", 2), ("inner", 2), ("rows", 1)]
    with kernel_copy("serial"):
        serial = gemm.matmul(a, b)
    assert launches[3:] == [("rows", 1)]
    tol = TOL[np.dtype(dtype)]
    for g in (got, out, serial):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, a @ b, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(narrow, a[:, :127] @ b[:127], rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(32, 128, 5), (32, 129, 40), (32, 301, 7),   # too few rows to split
                                   (128, 130, 128), (128, 200, 300)])           # no more rows than columns
def test_weight_gradient_split_over_the_columns_of_a(split, monkeypatch, dtype, M, K, N):
    """``dL/dT = dZ^T X`` with few rows, or no more rows than ``X`` has columns: each thread writes its block of
    rows of the result, ``dZ[:, lo:hi]^T X``, with no partial sums to add."""
    a, b = _arrays(M, K, N, dtype)
    b = np.ascontiguousarray(np.random.default_rng(1).standard_normal((M, N)).astype(dtype))
    launches = _count_launches(monkeypatch)
    with kernel_copy("parallel"):
        got = gemm.matmul_tn(a, b)
    assert launches == [("tn columns", 2)]
    with kernel_copy("serial"):
        serial = gemm.matmul_tn(a, b)
    assert launches[1:] == [("tn", 1)]
    tol = TOL[np.dtype(dtype)]
    for g in (got, serial):
        assert g.dtype == dtype and g.shape == (K, N) and g.flags.c_contiguous
        np.testing.assert_allclose(g, a.T @ b, rtol=tol, atol=tol * M)


@pytest.mark.parametrize("M,K,N,kernel", [(130, 2, 3, "tn"), (49, 130, 3, "tn columns")])
def test_split_weight_gradient_adds_every_threads_block(split, monkeypatch, M, K, N, kernel):
    # ones: each entry counts the rows summed into it, so a lost or doubled block shows exactly
    launches = _count_launches(monkeypatch)
    with kernel_copy("parallel"):
        assert gemm.matmul_tn(np.ones((M, K)), np.ones((M, N))).tolist() == [[float(M)] * N] * K
    assert launches == [(kernel, 2)]


def test_split_inner_dimension_adds_every_block(split, monkeypatch):
    launches = _count_launches(monkeypatch)
    with kernel_copy("parallel"):
        assert gemm.matmul(np.ones((3, 131)), np.ones((131, 2))).tolist() == [[131.0] * 2] * 3
    assert launches == [("inner", 2)]


@pytest.mark.parametrize("case", ["mixed dtypes", "strided a", "integers", "empty", "strided b"])
def test_numpy_runs_what_the_kernels_do_not_take(split, monkeypatch, case):
    a, b = _arrays(128, 4, 3, np.float32)
    if case == "mixed dtypes":
        b = b.astype(np.float64)
    elif case == "strided a":
        a = np.asfortranarray(a)
    elif case == "integers":
        a, b = a.astype(np.int64), b.astype(np.int64)
    elif case == "empty":
        a = a[:0]
    else:
        b = np.ones((4, 6), np.float32)[:, ::2]
    monkeypatch.setattr(gemm._PRODUCTS, "launch", lambda *args: pytest.fail("the kernel ran"))
    monkeypatch.setattr(gemm._PRODUCTS_TN, "launch", lambda *args: pytest.fail("the kernel ran"))
    with kernel_copy("parallel"):
        np.testing.assert_array_equal(gemm.matmul(a, b), np.matmul(a, b))
        if case not in ("mixed dtypes", "strided b"):
            np.testing.assert_array_equal(gemm.matmul_tn(a, a), a.T @ a)


def test_without_the_split_the_products_are_numpys(monkeypatch):
    monkeypatch.setitem(_threads._decisions, "split_products", False)
    a, b = _arrays(300, 6, 4, np.float32)
    with kernel_copy("parallel"):
        np.testing.assert_array_equal(gemm.matmul(a, b), a @ b)
        np.testing.assert_array_equal(gemm.matmul_tn(a, a), a.T @ a)


@pytest.mark.parametrize("split_on", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_pointwise_matches_the_reference(monkeypatch, split_on, dtype):
    if split_on:
        pytest.importorskip("scipy")
    monkeypatch.setitem(_threads._decisions, "split_products", split_on)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 7, 5)).astype(dtype)
    T = rng.standard_normal((9, 5)).astype(dtype)
    dz = rng.standard_normal((2, 6, 7, 9)).astype(dtype)
    with kernel_copy("parallel"):
        z, cache = fast_pointwise.pointwise_conv2d_forward(x, T)
        dx, dT = fast_pointwise.pointwise_conv2d_backward(dz, cache)
    z_ref, cache_ref = ref_pointwise.pointwise_conv2d_forward(x, T)
    dx_ref, dT_ref = ref_pointwise.pointwise_conv2d_backward(dz, cache_ref)
    tol = TOL[np.dtype(dtype)]
    for got, want in ((z, z_ref), (dx, dx_ref), (dT, dT_ref)):
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tol, atol=10 * tol)
    with pytest.raises(ValueError, match="weight expects 4 input channels"):
        fast_pointwise.pointwise_conv2d_forward(x, T[:, :4])


@pytest.mark.parametrize("copy", ["parallel", "serial"])
@pytest.mark.parametrize("M,K,N,kernel", [(130, 2, 3, "tn"), (49, 130, 3, "tn columns"), (20, 3, 4, "tn")])
def test_weight_gradient_into_a_given_array(split, monkeypatch, copy, M, K, N, kernel):
    """``matmul_tn(a, b, out)`` writes into ``out`` on every path (partial sums, columns of ``a``, one block) and
    NumPy's when the kernels do not take ``out``."""
    a, b = _arrays(M, K, 1, np.float64)[0], _arrays(M, N, 1, np.float64, seed=1)[0]
    launches = _count_launches(monkeypatch)
    out = np.full((K, N), np.nan)
    with kernel_copy(copy):
        assert gemm.matmul_tn(a, b, out) is out
        strided = np.full((N, K), np.nan).T
        assert gemm.matmul_tn(a, b, strided) is strided
    assert len(launches) == 1 and launches[0][0] == (kernel if copy == "parallel" else "tn")
    np.testing.assert_allclose(out, a.T @ b, rtol=1e-12, atol=1e-12 * M)
    np.testing.assert_allclose(strided, a.T @ b, rtol=1e-12, atol=1e-12 * M)


@pytest.mark.parametrize("copy", ["serial", "parallel"])
def test_weight_gradient_kernel_adds_any_number_of_blocks(split, copy):
    """More blocks than this machine has threads (the kernel called directly): each block's rows counted once,
    the products added into ``out`` in turn."""
    pytest.importorskip("scipy")
    a, b = np.ones((13, 3)), np.ones((13, 2))
    out = np.full((3, 2), np.nan)
    getattr(gemm._PRODUCTS_TN, copy)(a, b, out, np.full((4, 3, 2), np.nan))      # 5 blocks of 2 or 3 rows
    assert out.tolist() == [[13.0] * 2] * 3
