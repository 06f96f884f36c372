"""The thread-pool settings are applied and kernels can be called from several Python threads at once."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from numpymnv2 import functional as F
from numpymnv2 import kernels as K
from numpymnv2.kernels import _threads


def test_decisions_are_reported():
    info = _threads.info()
    assert "numba_num_threads" in info
    if not os.environ.get("NUMPYMNV2_THREADING") and not os.environ.get("NUMBA_THREADING_LAYER"):
        assert info["numba_threading_layer"] in ("workqueue", "unchanged (Numba's pool was already running)")


def _fresh_process_info(extra_env):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_THREADING_LAYER", "NUMPYMNV2_THREADING", "NUMPYMNV2_BLAS_THREADS")}
    env.update(extra_env)
    code = ("import numpymnv2.kernels as K, numpymnv2.kernels._threads as t, numba, threadpoolctl; "
            "print(t.info()['numba_threading_layer'], str(t.info()['openblas_threads']).split()[0], "
            "min(d['num_threads'] for d in threadpoolctl.threadpool_info() if d['internal_api'] == 'openblas'))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_fresh_process_gets_workqueue_and_keeps_blas_threads():
    layer, blas, _ = _fresh_process_info({})
    assert layer == "workqueue"
    assert blas == "unchanged"


def test_blas_threads_limited_on_request():
    layer, blas, threads = _fresh_process_info({"NUMPYMNV2_BLAS_THREADS": "1"})
    assert layer == "workqueue"
    assert blas == "1" and threads == "1"


def test_kernels_from_several_python_threads():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 6, 8))
    w = rng.standard_normal((3, 3, 8))
    expected, _ = F.depthwise_conv2d_forward(x, w, 1, 1)
    errors = []

    def work():
        try:
            for _ in range(20):
                out, cache = K.depthwise_conv2d_forward(x, w, 1, 1)
                K.depthwise_conv2d_backward(out, cache)
                np.testing.assert_allclose(out, expected, atol=1e-12)
        except Exception as exc:  # reported below, a thread cannot fail the test by itself
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors



@pytest.mark.parametrize("min_work", [0, 1 << 62])
def test_parallel_and_serial_copies_match_reference(monkeypatch, min_work):
    # the threshold is far above the test shapes, so force each copy in turn (0: parallel, huge: serial)
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", min_work)
    rng = np.random.default_rng(7)
    for s in (1, 2):
        x = rng.standard_normal((3, 7, 6, 20))
        w = rng.standard_normal((3, 3, 20))
        out, cache = K.depthwise_conv2d_forward(x, w, s, 1)
        out_ref, cache_ref = F.depthwise_conv2d_forward(x, w, s, 1)
        np.testing.assert_allclose(out, out_ref, rtol=0, atol=1e-12)
        dout = rng.standard_normal(out.shape)
        for a, b in zip(K.depthwise_conv2d_backward(dout, cache), F.depthwise_conv2d_backward(dout, cache_ref)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-11)
    x = rng.standard_normal((3, 5, 4, 12)) * 2 + 1
    g, b = rng.standard_normal(12), rng.standard_normal(12)
    for training in (True, False):
        rm, rv = np.zeros(12), np.ones(12)
        out, cache = K.batchnorm_act_forward(x, g, b, rm, rv, training, 0.1, 1e-5, "relu6", x)
        out_ref, cache_ref = F.batchnorm_act_forward(x, g, b, np.zeros(12), np.ones(12), training, 0.1, 1e-5,
                                                     "relu6", x)
        np.testing.assert_allclose(out, out_ref, rtol=0, atol=1e-12)
        dout = rng.standard_normal(x.shape)
        for a, r in zip(K.batchnorm_act_backward(dout, cache)[:3], F.batchnorm_act_backward(dout, cache_ref)[:3]):
            np.testing.assert_allclose(a, r, rtol=0, atol=1e-11)
