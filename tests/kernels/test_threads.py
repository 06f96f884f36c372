"""The thread-pool settings of numpymnv2.kernels._threads: in a fresh process, and each decision of
configure() in this one."""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

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


@pytest.mark.parametrize("blas, expected", [("", ["omp", "1", "True", "True", "[1]"]),
                                             ("2", ["omp", "2", "False", "False", "[2]"])])
def test_fresh_process_with_omp_splits_the_products_on_one_blas_thread(blas, expected):
    """With BLAS left on two threads (NUMPYMNV2_BLAS_THREADS=2) the products are not split and small kernels stay
    serial: small parallel kernels beside spinning BLAS threads made a step several times slower."""
    pytest.importorskip("scipy")
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("numba.np.ufunc.omppool", reason="Numba's OpenMP layer needs the system's libgomp")
    code = ("import numpymnv2.kernels as K, numpymnv2.kernels._threads as t, numpymnv2.kernels._launch as l, "
            "threadpoolctl, numpy as np; info = t.info(); "
            "x = np.ones((300, 8), np.float32); from numpymnv2.kernels import gemm; "
            "assert (gemm.matmul(x, x.T[:, :5].copy()) == 8).all(); "
            "print(info['numba_threading_layer'], info['openblas_threads'], info['split_products'], "
            "l.PARALLEL_MIN_WORK == l.OMP_MIN_WORK, "
            "sorted({d['num_threads'] for d in threadpoolctl.threadpool_info() if d['internal_api'] == 'openblas'}))")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "NUMPYMNV2_BLAS_THREADS")}
    env["NUMPYMNV2_THREADING"] = "omp"
    if blas:
        env["NUMPYMNV2_BLAS_THREADS"] = blas
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == expected


def test_configure_refuses_an_unknown_threading_mode(fresh_configure):
    fresh_configure.setenv("NUMPYMNV2_THREADING", "tbb")
    with pytest.raises(ValueError, match="NUMPYMNV2_THREADING: expected omp, off or nothing, got 'tbb'"):
        _threads.configure()


def test_omp_without_scipy_keeps_the_default_and_says_why(fresh_configure):
    fresh_configure.setenv("NUMPYMNV2_THREADING", "omp")
    fresh_configure.setitem(sys.modules, "scipy.linalg.cython_blas", None)     # import fails as if missing
    decisions = _threads.configure()
    assert decisions["numba_threading_layer"] == "workqueue" and not decisions["split_products"]
    assert decisions["numpymnv2_threading"] == ("default: NUMPYMNV2_THREADING=omp needs SciPy (pip install scipy, "
                                                "or the [omp] extra)")
    assert not _threads.split_products()


def test_blas_threads_limited_on_request():
    layer, blas, threads = _fresh_process_info({"NUMPYMNV2_BLAS_THREADS": "1"})
    assert layer == "workqueue"
    assert blas == "1" and threads == "1"


@pytest.fixture
def fresh_configure(monkeypatch):
    """configure() as in a process that has not decided anything yet, its effects undone afterwards."""
    for name in ("NUMPYMNV2_THREADING", "NUMBA_THREADING_LAYER", "NUMPYMNV2_BLAS_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_threads, "_decisions", {})
    monkeypatch.setattr(numba.config, "THREADING_LAYER", numba.config.THREADING_LAYER)
    monkeypatch.setattr(_threads, "_numba_pool_started", lambda: False)
    return monkeypatch


def test_configure_chooses_workqueue_once(fresh_configure):
    decisions = _threads.configure()
    assert decisions == {"numba_threading_layer": "workqueue", "openblas_threads": "unchanged",
                         "split_products": False}
    assert numba.config.THREADING_LAYER == "workqueue"
    assert _threads.configure() is decisions


def test_configure_respects_the_users_choices(fresh_configure):
    fresh_configure.setenv("NUMPYMNV2_THREADING", "off")
    assert _threads.configure() == {"numpymnv2_threading": "off (NUMPYMNV2_THREADING)"}
    fresh_configure.setattr(_threads, "_decisions", {})
    fresh_configure.delenv("NUMPYMNV2_THREADING")
    fresh_configure.setenv("NUMBA_THREADING_LAYER", "omp")
    assert _threads.configure()["numba_threading_layer"] == "omp (NUMBA_THREADING_LAYER)"
    assert not _threads.split_products()    # NumPy's BLAS keeps its threads: no split, no small parallel kernels
    fresh_configure.setattr(_threads, "_decisions", {})
    fresh_configure.delenv("NUMBA_THREADING_LAYER")
    fresh_configure.setattr(_threads, "_numba_pool_started", lambda: True)
    assert _threads.configure()["numba_threading_layer"] == "unchanged (Numba's pool was already running)"


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_configure_rejects_a_bad_blas_thread_count(fresh_configure, value):
    fresh_configure.setenv("NUMPYMNV2_BLAS_THREADS", value)
    with pytest.raises(ValueError, match=f"NUMPYMNV2_BLAS_THREADS: expected a positive integer, got '{value}'"):
        _threads.configure()


def test_configure_without_threadpoolctl(fresh_configure):
    fresh_configure.setenv("NUMPYMNV2_BLAS_THREADS", "1")
    fresh_configure.setitem(sys.modules, "threadpoolctl", None)     # import fails as if not installed
    assert _threads.configure()["openblas_threads"] == "unchanged (threadpoolctl not installed)"


def test_configure_limits_openblas(fresh_configure):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    openblas = threadpoolctl.ThreadpoolController().select(internal_api="openblas")
    if not openblas.lib_controllers:
        pytest.skip("NumPy does not use OpenBLAS here")
    with openblas.limit(limits=openblas.info()[0]["num_threads"]):    # restores the count on exit
        fresh_configure.setenv("NUMPYMNV2_BLAS_THREADS", "1")
        assert _threads.configure()["openblas_threads"] == 1
        assert {d["num_threads"] for d in openblas.info()} == {1}


def test_configure_without_openblas(fresh_configure):
    threadpoolctl = pytest.importorskip("threadpoolctl")

    class NoOpenBLAS:
        lib_controllers = []

    fresh_configure.setattr(threadpoolctl.ThreadpoolController, "select", lambda self, **kwargs: NoOpenBLAS())
    fresh_configure.setenv("NUMPYMNV2_BLAS_THREADS", "2")
    assert _threads.configure()["openblas_threads"] == "unchanged (no OpenBLAS loaded)"


def test_info_reports_the_running_layer_once_the_pool_started(monkeypatch):
    monkeypatch.setattr(_threads, "_numba_pool_started", lambda: True)
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")
    assert _threads.info()["numba_threading_layer_running"] == "workqueue"


_STEP_SCRIPT = """
import numpy as np
import numpymnv2 as mn
from numpymnv2.kernels import _threads
from numpymnv2.models import MobileNetV2
model = MobileNetV2(num_classes=5, width_mult=0.35, seed=0).double().train()
x = np.random.default_rng(1).standard_normal((8, 40, 40, 3))
loss, dlogits = mn.softmax_cross_entropy(model(x), np.arange(8) % 5)
model.backward(dlogits)
grads = np.concatenate([p.grad.ravel() for p in model.parameters()])
stats = np.concatenate([m.running_var for m in model.modules() if hasattr(m, "running_var")])
print(_threads.info()["numba_threading_layer"], _threads.split_products())
print(*(repr(float(v)) for v in [loss, *grads[::97], *stats[::13]]))
"""


def test_a_train_step_under_omp_equals_the_default_one():
    """The whole network, forward and backward in float64, in a fresh process under each threading mode: the
    loss, gradients and running statistics agree (the split products sum in another order)."""
    pytest.importorskip("scipy")
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("numba.np.ufunc.omppool", reason="Numba's OpenMP layer needs the system's libgomp")
    outs = {}
    for mode in ("", "omp"):
        env = {k: v for k, v in os.environ.items()
               if k not in ("NUMBA_THREADING_LAYER", "NUMPYMNV2_BLAS_THREADS", "NUMPYMNV2_THREADING")}
        env["NUMPYMNV2_THREADING"] = mode
        lines = subprocess.run([sys.executable, "-c", _STEP_SCRIPT], env=env, capture_output=True, text=True,
                               check=True).stdout.splitlines()
        outs[mode] = lines
    assert outs[""][0] == "workqueue False" and outs["omp"][0] == "omp True"
    default, omp = (np.array([float(v) for v in outs[m][1].split()]) for m in ("", "omp"))
    assert default.size > 100
    np.testing.assert_allclose(omp, default, rtol=1e-10, atol=1e-13)
