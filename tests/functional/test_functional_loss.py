"""Softmax cross-entropy: gradients (with label smoothing), loop definition, log K, stability, PyTorch."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpymnv2.functional import softmax_cross_entropy
from strategies import check_grads, float_arrays


@st.composite
def ce_cases(draw, max_classes=8, scale=(1.0, 10.0)):
    N, K = draw(st.integers(1, 4)), draw(st.integers(1, max_classes))
    logits = draw(float_arrays((N, K))) * draw(st.sampled_from(scale))
    labels = np.array(draw(st.lists(st.integers(0, K - 1), min_size=N, max_size=N)), dtype=np.int64)
    smoothing = draw(st.sampled_from([0.0, 0.1, 0.5]) | st.floats(0.0, 0.99))
    return logits, labels, smoothing


@given(ce_cases())
def test_cross_entropy_gradients_match_finite_differences(case):
    logits, labels, smoothing = case

    def forward(logits):
        return softmax_cross_entropy(logits, labels, smoothing)     # (loss, dlogits): dlogits is the "cache"

    def backward(dloss, dlogits):
        return dloss * dlogits

    check_grads("softmax_cross_entropy", (forward, backward), logits)


def ce_loops(logits, labels, smoothing):
    """The mean over the batch of ``-sum_k q_k log softmax(l)_k``, one scalar at a time."""
    N, K = logits.shape
    total = 0.0
    for n in range(N):
        m = max(logits[n])
        log_z = m + np.log(sum(np.exp(logits[n, k] - m) for k in range(K)))
        for k in range(K):
            q = smoothing / K + (1 - smoothing if k == labels[n] else 0.0)
            total -= q * (logits[n, k] - log_z)
    return total / N


@given(ce_cases(max_classes=5))
def test_cross_entropy_matches_loop_definition(case):
    logits, labels, smoothing = case
    loss, dlogits = softmax_cross_entropy(logits, labels, smoothing)
    assert np.isclose(loss, ce_loops(logits, labels, smoothing), rtol=1e-12, atol=1e-12)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.full(logits.shape, smoothing / logits.shape[1])
    q[np.arange(len(labels)), labels] += 1 - smoothing
    np.testing.assert_allclose(dlogits, (p - q) / len(labels), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("K", [1, 2, 10, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_of_uniform_logits_is_log_k(K, dtype):
    logits = np.full((3, K), 2.5, dtype)
    loss, dlogits = softmax_cross_entropy(logits, np.zeros(3, np.int64))
    assert np.isclose(loss, np.log(K), rtol=1e-6)
    # label smoothing does not change it: the prediction is uniform whatever the target
    assert np.isclose(softmax_cross_entropy(logits, np.zeros(3, np.int64), 0.3)[0], np.log(K), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_large_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4]], dtype)
    loss, dlogits = softmax_cross_entropy(logits, np.array([2, 0]))
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    # sample 0: log p_2 = -2e4; sample 1: log p_0 = -2e4 - log 2
    assert np.isclose(loss, (2e4 + 2e4 + np.log(2)) / 2, rtol=1e-6)
    assert loss.dtype == dlogits.dtype == dtype


def test_cross_entropy_gradient_rows_sum_to_zero():
    rng = np.random.default_rng(0)
    _, dlogits = softmax_cross_entropy(rng.standard_normal((5, 7)), rng.integers(0, 7, 5), 0.2)
    np.testing.assert_allclose(dlogits.sum(axis=1), 0, atol=1e-15)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
def test_cross_entropy_matches_torch(smoothing):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 5)) * 3
    labels = rng.integers(0, 5, 6)
    loss, dlogits = softmax_cross_entropy(logits, labels, smoothing)
    lt = torch.tensor(logits, requires_grad=True)
    loss_t = torch.nn.functional.cross_entropy(lt, torch.tensor(labels), label_smoothing=smoothing)
    loss_t.backward()
    assert abs(float(loss) - loss_t.item()) < 1e-10
    np.testing.assert_allclose(dlogits, lt.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_cross_entropy_preserves_float32():
    logits = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    loss, dlogits = softmax_cross_entropy(logits, np.array([0, 1, 2, 0]), 0.1)
    assert loss.dtype == np.float32 and dlogits.dtype == np.float32


def test_cross_entropy_rejects_bad_input():
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError, match="shape \\(N, K\\)"):
        softmax_cross_entropy(np.zeros(3), [0])
    with pytest.raises(TypeError, match="float32 or float64 logits, got int64"):
        softmax_cross_entropy(np.zeros((2, 3), np.int64), [0, 1])
    with pytest.raises(ValueError, match="labels of shape \\(2,\\)"):
        softmax_cross_entropy(logits, [0])
    with pytest.raises(TypeError, match="integer labels"):
        softmax_cross_entropy(logits, [0.0, 1.0])
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\), got values in \\[0, 3\\]"):
        softmax_cross_entropy(logits, [0, 3])
    with pytest.raises(ValueError, match="label_smoothing"):
        softmax_cross_entropy(logits, [0, 1], 1.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        softmax_cross_entropy(np.array([[0.0, np.inf, 0.0], [0, 0, 0]]), [0, 1])


def test_cross_entropy_numpy_scalar_smoothing_does_not_upcast():
    logits = np.zeros((2, 3), np.float32)
    loss, dlogits = softmax_cross_entropy(logits, np.array([0, 1]), np.float64(0.1))
    assert loss.dtype == dlogits.dtype == np.float32
