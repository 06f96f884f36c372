"""The thread-pool settings of numpymnv2.kernels._threads: in a fresh process, and each decision of
configure() in this one."""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from numpymnv2.kernels import _contention, _threads

_LIMIT_BLAS = _threads._limit_blas          # the fixture below replaces it; the tests of it put it back


def test_decisions_are_reported():
    info = _threads.info()
    assert "numba_num_threads" in info
    if not os.environ.get("NUMPYMNV2_THREADING") and not os.environ.get("NUMBA_THREADING_LAYER"):
        assert info["numba_threading_layer"] in ("omp", "workqueue", "unchanged (Numba's pool was already running)")


def _fresh_process_info(extra_env):
    """The layer, the decision on BLAS and the thread counts of NumPy's and SciPy's BLAS in a fresh process."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_THREADING_LAYER", "NUMPYMNV2_THREADING", "NUMPYMNV2_BLAS_THREADS")}
    env.update(extra_env)
    code = ("import numpymnv2.kernels as K, numpymnv2.kernels._threads as t, numpymnv2.kernels._launch as l, "
            "threadpoolctl, numpy as np, scipy.linalg.cython_blas; info = t.info(); "
            "x = np.ones((300, 8), np.float32); from numpymnv2.kernels import gemm; "
            "assert (gemm.matmul(x, x.T[:, :5].copy()) == 8).all(); "
            "libs = threadpoolctl.threadpool_info(); "
            "n = lambda own: sorted(d['num_threads'] for d in libs if d['user_api'] == 'blas' "
            "and t._belongs_to_scipy(d['filepath']) == own); "
            "print(info['numba_threading_layer'], str(info['openblas_threads']).split()[0], info['split_products'], "
            "l.PARALLEL_MIN_WORK == l.OMP_MIN_WORK, n(False), n(True))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip().split(maxsplit=4)


def _blas_threads_at_start():
    """NumPy's BLAS thread count in a process that did not import numpymnv2."""
    code = "import threadpoolctl, numpy; print([d['num_threads'] for d in threadpoolctl.threadpool_info()])"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_fresh_process_gets_workqueue_on_request_and_keeps_blas_threads():
    layer, blas, split, small, counts = _fresh_process_info({"NUMPYMNV2_THREADING": "workqueue"})
    assert [layer, blas, split, small] == ["workqueue", "unchanged", "False", "False"]
    assert counts.split("] [")[0] + "]" == _blas_threads_at_start()


@pytest.mark.parametrize("blas, expected", [("", ["omp", "1", "True", "True"]),
                                             ("2", ["omp", "2", "False", "False"])])
def test_fresh_process_splits_the_products_on_one_scipy_blas_thread(blas, expected):
    """By default Numba's OpenMP layer runs the products, each on SciPy's BLAS with one thread, and NumPy's BLAS
    keeps its threads. With BLAS on two threads (NUMPYMNV2_BLAS_THREADS=2) the products are not split and small
    kernels stay serial: small parallel kernels beside spinning BLAS threads made a step several times slower."""
    pytest.importorskip("scipy")
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("numba.np.ufunc.omppool", reason="Numba's OpenMP layer needs the system's libgomp")
    layer, limited, split, small, counts = _fresh_process_info({"NUMPYMNV2_BLAS_THREADS": blas} if blas else {})
    assert [layer, limited, split, small] == expected
    numpy_threads, scipy_threads = counts.split("] [")
    if blas:
        assert numpy_threads == "[2" and scipy_threads == "2]"
    else:
        assert numpy_threads + "]" == _blas_threads_at_start()
        assert scipy_threads == "1]"


def test_configure_refuses_an_unknown_threading_mode(fresh_configure):
    fresh_configure.setenv("NUMPYMNV2_THREADING", "tbb")
    with pytest.raises(ValueError, match="NUMPYMNV2_THREADING: expected omp, workqueue, off or nothing, got 'tbb'"):
        _threads.configure()


@pytest.mark.parametrize("mode", ["", "omp"])
def test_without_scipy_the_workqueue_layer_runs_and_info_says_why(fresh_configure, mode):
    fresh_configure.setenv("NUMPYMNV2_THREADING", mode)
    fresh_configure.setitem(sys.modules, "scipy.linalg.cython_blas", None)     # import fails as if missing
    decisions = _threads.configure()
    assert decisions["numba_threading_layer"] == "workqueue" and not decisions["split_products"]
    assert decisions["numpymnv2_threading"] == "workqueue: the OpenMP mode needs SciPy (pip install scipy)"
    assert not _threads.split_products() and "contention_monitor" not in decisions


def test_blas_threads_limited_on_request():
    layer, blas, split, _, counts = _fresh_process_info({"NUMPYMNV2_BLAS_THREADS": "1",
                                                         "NUMPYMNV2_THREADING": "workqueue"})
    assert [layer, blas, split] == ["workqueue", "1", "False"]
    assert counts.startswith("[1] ")        # NumPy's (SciPy's, loaded after numpymnv2, is not used here)


@pytest.fixture
def fresh_configure(monkeypatch):
    """configure() as in a process that has not decided anything yet, its effects undone afterwards."""
    for name in ("NUMPYMNV2_THREADING", "NUMBA_THREADING_LAYER", "NUMPYMNV2_BLAS_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_threads, "_decisions", {})
    monkeypatch.setattr(numba.config, "THREADING_LAYER", numba.config.THREADING_LAYER)
    monkeypatch.setattr(_threads, "_numba_pool_started", lambda: False)
    # configure() must not leave this process's monitor on or its BLAS limited
    monkeypatch.setattr(_contention, "MONITOR", _contention.Monitor())
    monkeypatch.setattr(_threads, "_limit_blas", lambda threads, scipy_only: f"{threads} ({scipy_only})")
    return monkeypatch


def test_configure_chooses_workqueue_once(fresh_configure):
    fresh_configure.setenv("NUMPYMNV2_THREADING", "workqueue")
    decisions = _threads.configure()
    assert decisions == {"numba_threading_layer": "workqueue", "openblas_threads": "unchanged",
                         "split_products": False}
    assert numba.config.THREADING_LAYER == "workqueue"
    assert _threads.configure() is decisions


@pytest.mark.parametrize("mode", ["", "auto", "default", "omp"])
def test_configure_chooses_omp_by_default(fresh_configure, mode):
    pytest.importorskip("scipy")
    pytest.importorskip("numba.np.ufunc.omppool", reason="Numba's OpenMP layer needs the system's libgomp")
    fresh_configure.setenv("NUMPYMNV2_THREADING", mode)
    fresh_configure.setattr(_threads, "_limit_blas", lambda threads, scipy_only: threads if scipy_only else None)
    decisions = _threads.configure()
    assert decisions == {"numba_threading_layer": "omp", "openblas_threads": 1, "split_products": True,
                         "contention_monitor": "on" if os.path.isdir("/proc/self/task") else
                         "off (no /proc/self/task)"}
    assert numba.config.THREADING_LAYER == "omp" and _threads.split_products()


def test_configure_respects_the_users_choices(fresh_configure):
    fresh_configure.setenv("NUMPYMNV2_THREADING", "off")
    assert _threads.configure() == {"numpymnv2_threading": "off (NUMPYMNV2_THREADING)"}
    fresh_configure.setattr(_threads, "_decisions", {})
    fresh_configure.delenv("NUMPYMNV2_THREADING")
    fresh_configure.setenv("NUMBA_THREADING_LAYER", "omp")
    assert _threads.configure()["numba_threading_layer"] == "omp (NUMBA_THREADING_LAYER)"
    assert not _threads.split_products()    # the BLAS keep their threads: no split, no small parallel kernels
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
    fresh_configure.setattr(_threads, "_limit_blas", _LIMIT_BLAS)
    fresh_configure.setenv("NUMPYMNV2_BLAS_THREADS", "1")
    fresh_configure.setitem(sys.modules, "threadpoolctl", None)     # import fails as if not installed
    assert _threads.configure()["openblas_threads"] == "unchanged (threadpoolctl not installed)"


def test_configure_limits_openblas(fresh_configure):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    openblas = threadpoolctl.ThreadpoolController().select(internal_api="openblas")
    if not openblas.lib_controllers:
        pytest.skip("NumPy does not use OpenBLAS here")
    fresh_configure.setattr(_threads, "_limit_blas", _LIMIT_BLAS)
    with openblas.limit(limits=openblas.info()[0]["num_threads"]):    # restores the count on exit
        fresh_configure.setenv("NUMPYMNV2_BLAS_THREADS", "1")
        assert _threads.configure()["openblas_threads"] == 1
        assert {d["num_threads"] for d in openblas.info()} == {1}


def test_configure_without_openblas(fresh_configure):
    threadpoolctl = pytest.importorskip("threadpoolctl")

    class NoOpenBLAS:
        lib_controllers = []

    fresh_configure.setattr(_threads, "_limit_blas", _LIMIT_BLAS)
    fresh_configure.setattr(threadpoolctl.ThreadpoolController, "select", lambda self, **kwargs: NoOpenBLAS())
    fresh_configure.setenv("NUMPYMNV2_BLAS_THREADS", "2")
    assert _threads.configure()["openblas_threads"] == "unchanged (no BLAS loaded)"


def test_the_openmp_mode_limits_only_scipys_blas(fresh_configure):
    """SciPy's own BLAS (the one np.dot calls inside a Numba kernel) goes to one thread; NumPy's keeps its
    threads, unless SciPy has no BLAS of its own."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    pytest.importorskip("scipy.linalg.cython_blas")
    blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
    with blas.limit(limits=2):                                      # restores the counts on exit
        assert _LIMIT_BLAS(1, scipy_only=True) == 1
        counts = {d["filepath"]: d["num_threads"] for d in threadpoolctl.threadpool_info()
                  if d["user_api"] == "blas"}
        ours = {path for path in counts if _threads._belongs_to_scipy(path)}
        limited = ours or set(counts)
        assert {counts[path] for path in limited} == {1}
        assert {counts[path] for path in set(counts) - limited} <= {2}
        assert _threads._decisions["blas_limited"] == sorted(os.path.basename(p) for p in limited)


def test_belongs_to_scipy():
    scipy = pytest.importorskip("scipy")
    package = os.path.dirname(scipy.__file__)
    assert _threads._belongs_to_scipy(os.path.join(package + ".libs", "libscipy_openblas.so"))
    assert _threads._belongs_to_scipy(os.path.join(package, "linalg", "libblas.so"))
    assert not _threads._belongs_to_scipy(os.path.join(package + "_other", "libblas.so"))
    assert not _threads._belongs_to_scipy("/usr/lib/libopenblas.so")


def test_info_reports_the_running_layer_once_the_pool_started(monkeypatch):
    monkeypatch.setattr(_threads, "_numba_pool_started", lambda: True)
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")
    assert _threads.info()["numba_threading_layer_running"] == "workqueue"


_STEP_SCRIPT = """
import numpy as np
import numpymnv2 as mn
from numpymnv2.kernels import _contention, _threads

_LIMIT_BLAS = _threads._limit_blas          # the fixture below replaces it; the tests of it put it back
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
    for mode in ("workqueue", ""):
        env = {k: v for k, v in os.environ.items()
               if k not in ("NUMBA_THREADING_LAYER", "NUMPYMNV2_BLAS_THREADS", "NUMPYMNV2_THREADING")}
        env["NUMPYMNV2_THREADING"] = mode
        lines = subprocess.run([sys.executable, "-c", _STEP_SCRIPT], env=env, capture_output=True, text=True,
                               check=True).stdout.splitlines()
        outs[mode] = lines
    assert outs["workqueue"][0] == "workqueue False" and outs[""][0] == "omp True"
    default, omp = (np.array([float(v) for v in outs[m][1].split()]) for m in ("workqueue", ""))
    assert default.size > 100
    np.testing.assert_allclose(omp, default, rtol=1e-10, atol=1e-13)
