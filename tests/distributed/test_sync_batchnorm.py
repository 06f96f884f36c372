"""SyncBatchNorm: a batch split into shards, each normalised with the whole batch's statistics.

The shards run in threads of one process (tests/shards.py), their ``allreduce`` summing over the threads, and the
result must be the unsharded op's: the outputs, the running statistics, the input gradient (concatenated) and
the parameter gradients (summed over the shards). The finite-difference checks take the whole sharded
computation as one function of the whole batch.
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from numpymnv2.distributed import shard_rows
from numpymnv2.ops import BATCHNORM_ACT
from shards import ThreadGroup
from strategies import away_from_kinks, check_grads, float_arrays, kink_distance, scales

BACKENDS = ("reference", "fast")
EPS = 1e-6          # the gradcheck step


def sharded_bn(n_shards, backend, running_mean, running_var, activation=None, training=True):
    """``(forward, backward)`` of BatchNorm(+activation) run on ``n_shards`` shards of the batch, as a pair of
    functions of the whole batch (the shards' outputs and input gradients concatenated, the parameter gradients
    summed): what gradcheck and the comparisons below take."""
    impl = BATCHNORM_ACT.on(backend)
    group = ThreadGroup(n_shards)
    state = {}

    def forward(x, gamma, beta):
        rm, rv = running_mean.copy(), running_var.copy()
        bounds = [shard_rows(len(x), r, n_shards) for r in range(n_shards)]
        stats = [(rm.copy(), rv.copy()) for _ in range(n_shards)]

        def one(comm, xs, r):
            return impl.forward(xs, gamma, beta, stats[r][0], stats[r][1], training, 0.1, 1e-5, activation,
                                None, allreduce=comm.allreduce)
        outs = group.run(one, [(x[b], r) for r, b in enumerate(bounds)])
        state.update(bounds=bounds, stats=stats)
        return np.concatenate([o for o, _ in outs]), [c for _, c in outs]

    def backward(dout, caches):
        def one(comm, ds, cache):
            return impl.backward(ds, cache, allreduce=comm.allreduce)
        grads = group.run(one, [(dout[b], c) for b, c in zip(state["bounds"], caches)])
        dx = np.concatenate([g[0] for g in grads])
        return dx, sum(g[1] for g in grads), sum(g[2] for g in grads)

    return forward, backward, state


def bn_case(rng, shape, dtype=np.float64):
    C = shape[-1]
    x = (rng.standard_normal(shape) * 1.5 + rng.uniform(-2, 2, C)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, C).astype(dtype), rng.uniform(-0.5, 0.5, C).astype(dtype)
    return x, gamma, beta, rng.uniform(-0.2, 0.2, C).astype(dtype), rng.uniform(0.5, 1.5, C).astype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_shards,shape,activation", [(2, (6, 3, 4, 5), None), (3, (7, 2, 3, 4), "relu6"),
                                                       (2, (3, 1, 1, 3), "relu"), (4, (5, 2, 2, 6), None)])
def test_sharded_equals_unsharded(backend, n_shards, shape, activation):
    # shapes include uneven shards (7 rows on 3) and a shard of one 1x1 image, whose own statistics would be
    # undefined: only the whole batch's count matters
    rng = np.random.default_rng(sum(shape))
    x, gamma, beta, rm, rv = bn_case(rng, shape)
    impl = BATCHNORM_ACT.on(backend)
    rm1, rv1 = rm.copy(), rv.copy()
    y1, cache1 = impl.forward(x, gamma, beta, rm1, rv1, True, 0.1, 1e-5, activation, None)
    dout = rng.standard_normal(shape)
    dx1, dgamma1, dbeta1, _ = impl.backward(dout, cache1)

    forward, backward, state = sharded_bn(n_shards, backend, rm, rv, activation)
    y, caches = forward(x, gamma, beta)
    dx, dgamma, dbeta = backward(dout, caches)
    np.testing.assert_allclose(y, y1, rtol=1e-12, atol=1e-12)
    for rm_r, rv_r in state["stats"]:      # every shard keeps the same running statistics: the whole batch's
        np.testing.assert_allclose(rm_r, rm1, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rv_r, rv1, rtol=1e-12, atol=1e-14)
        assert np.array_equal(rm_r, state["stats"][0][0]) and np.array_equal(rv_r, state["stats"][0][1])
    np.testing.assert_allclose(dx, dx1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dgamma, dgamma1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dbeta, dbeta1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_shard_with_allreduce_is_plain_batchnorm(backend):
    # a group of one: the hook is called, and sums over one process change nothing
    rng = np.random.default_rng(3)
    x, gamma, beta, rm, rv = bn_case(rng, (4, 3, 3, 5))
    impl = BATCHNORM_ACT.on(backend)
    y1, c1 = impl.forward(x, gamma, beta, rm.copy(), rv.copy(), True, 0.1, 1e-5, "relu6", None)
    forward, backward, _ = sharded_bn(1, backend, rm, rv, "relu6")
    y, caches = forward(x, gamma, beta)
    np.testing.assert_allclose(y, y1, rtol=1e-13, atol=1e-13)
    dout = rng.standard_normal(x.shape)
    for a, b in zip(backward(dout, caches), impl.backward(dout, c1)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@st.composite
def sync_cases(draw):
    """``(n_shards, x, gamma, beta)``: 2 or 3 shards of a batch with at least three values per channel (two are
    degenerate, see tests/functional/test_functional_batchnorm.py); ``beta`` away from ReLU6's kinks."""
    n_shards = draw(st.integers(2, 3))
    N = draw(st.integers(n_shards, 5))
    H, W, C = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    assume(N * H * W >= 3)
    x = draw(float_arrays((N, H, W, C)))
    gamma = draw(scales((C,), 0.25, 4.0))
    beta = away_from_kinks(draw(float_arrays((C,), low=-1.0, high=4.0)), margin=0.05)
    return n_shards, x, gamma, beta


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", [None, "relu6"])
@given(case=sync_cases())
def test_sync_batchnorm_gradients_match_finite_differences(backend, activation, case):
    n_shards, x, gamma, beta = case
    C = x.shape[-1]
    if activation is not None:
        # as tests/functional/test_functional_fused.py: the derivative must not change within a gradcheck step
        y, cache = BATCHNORM_ACT.reference.forward(x, gamma, beta, np.zeros(C), np.ones(C), True)
        assume(kink_distance(y, (0.0, 6.0)) > 10 * EPS * float(np.max(np.abs(gamma) * cache.bn.inv_std)))
    forward, backward, _ = sharded_bn(n_shards, backend, np.zeros(C), np.ones(C), activation)
    check_grads(f"sync_batchnorm[{backend},{activation}]", (forward, backward), (x, gamma, beta), eps=EPS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_mode_does_not_communicate(backend):
    # running statistics are the same on every process: nothing to reduce
    rng = np.random.default_rng(5)
    x, gamma, beta, rm, rv = bn_case(rng, (4, 2, 2, 3))
    impl = BATCHNORM_ACT.on(backend)
    calls = []

    def allreduce(a):
        calls.append(a)
        return a
    y, cache = impl.forward(x, gamma, beta, rm, rv, False, 0.1, 1e-5, None, None, allreduce=allreduce)
    impl.backward(np.ones_like(y), cache, allreduce=allreduce)
    assert calls == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_batch_of_one_value_per_channel_is_refused(backend):
    # two shards of one 1x1 image each: M = 2 in all is fine; one shard of one 1x1 image alone is not
    impl = BATCHNORM_ACT.on(backend)
    x = np.ones((1, 1, 1, 2))
    with pytest.raises(ValueError, match="more than one value per channel"):
        impl.forward(x, np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), True, allreduce=lambda a: a)
