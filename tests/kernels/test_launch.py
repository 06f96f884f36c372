"""Kernel launches: which copy runs, the launch lock, and every public kernel called from several Python
threads at once."""
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

from numpymnv2.kernels import _contention, _launch, activation


@pytest.fixture
def plain_launch(monkeypatch):
    """Launches decided by the work alone: no background compilation, no contention monitor."""
    monkeypatch.setattr(_launch.LATER, "enabled", False)
    monkeypatch.setattr(_contention.MONITOR, "enabled", False)


def test_launch_picks_the_copy_and_holds_the_lock_for_the_parallel_one(monkeypatch, plain_launch):
    kernel = activation._relu6
    calls = []
    monkeypatch.setattr(kernel, "serial", lambda *args: calls.append(("serial", args, _launch.LAUNCH_LOCK.locked())))
    monkeypatch.setattr(kernel, "parallel",
                        lambda *args: calls.append(("parallel", args, _launch.LAUNCH_LOCK.locked())))
    kernel(_launch.PARALLEL_MIN_WORK - 1, 3, "inputs")
    kernel(_launch.PARALLEL_MIN_WORK, 4, "inputs")
    threads = numba.get_num_threads()
    assert calls == [("serial", (3, 1, "inputs"), False), ("parallel", (4, min(threads, 4), "inputs"), True)]
    assert not _launch.LAUNCH_LOCK.locked()


def test_lock_is_released_when_a_parallel_launch_fails(monkeypatch, plain_launch):
    kernel = activation._relu6

    def fail(*args):
        raise RuntimeError("inside the kernel")
    monkeypatch.setattr(kernel, "parallel", fail)
    with pytest.raises(RuntimeError, match="inside the kernel"):
        kernel(_launch.PARALLEL_MIN_WORK, 1, ())
    assert not _launch.LAUNCH_LOCK.locked()


def test_num_chunks():
    assert _launch.num_chunks(100, _launch.PARALLEL_MIN_WORK - 1) == 1
    threads = numba.get_num_threads()
    assert _launch.num_chunks(100, _launch.PARALLEL_MIN_WORK) == min(threads, 100)
    assert _launch.num_chunks(1, _launch.PARALLEL_MIN_WORK) == 1


@numba.njit(inline="always")
def _count_row(inputs, r, acc):
    """Row ``r`` of a test sum: ``acc[0] += 1``, ``acc[1] += r``, ``acc[2] += weights[r]``."""
    (weights,) = inputs
    acc[0] += 1
    acc[1] += r
    acc[2] += weights[r]


_counts = _launch.per_thread_sums(_count_row, rows_per_flush=2)


@pytest.mark.parametrize("copy", ["serial", "parallel"])
@pytest.mark.parametrize("blocks", [1, 2, 5])
def test_per_thread_sums_add_every_row_once_and_every_block_into_the_first(copy, blocks):
    """The skeleton of the BatchNorm and depthwise sums, called directly with any number of blocks: each row
    counted once, and the kernel leaves the total in ``partial[0]`` (the blocks' sums added in turn)."""
    rows = 11
    weights = np.arange(rows, dtype=np.float32) * 0.5
    partial = np.zeros((blocks, 3))
    getattr(_counts, copy)(rows, (weights,), partial)
    assert partial[0].tolist() == [11.0, 55.0, 27.5]
    assert _counts(0, rows, (weights,), (3,)).tolist() == [11.0, 55.0, 27.5]


def test_kernels_are_named_after_their_row_function():
    from numpymnv2.kernels import batchnorm
    assert batchnorm._grad_sums.row is batchnorm._grad_sums_row
    assert batchnorm._normalize.__doc__ == batchnorm._normalize_row.__doc__
    assert batchnorm._normalize.__name__.startswith("_normalize_row_each_row_")


_THREADS_SCRIPT = textwrap.dedent("""
    import threading
    import numpy as np
    from numpymnv2 import functional as F
    from numpymnv2.kernels import _contention, _launch, activation, batchnorm, depthwise, fused

    _launch.PARALLEL_MIN_WORK = 0          # every launch on the parallel copy, compiled at once
    _launch.LATER.enabled = _contention.MONITOR.enabled = False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5, 8))
    w = rng.standard_normal((3, 3, 8))
    g, b = rng.uniform(0.5, 2, 8), rng.standard_normal(8)

    def run(ops):
        out, cache = ops["dw"][0](x, w, 2, 1)
        results = [out, *ops["dw"][1](np.cos(out), cache)]
        y, cache = ops["bn"][0](x, g, b, np.zeros(8), np.ones(8), True)
        results += [y, *ops["bn"][1](x, cache)]
        y, cache = ops["bnact"][0](x, g, b, np.zeros(8), np.ones(8), True, 0.1, 1e-5, "relu6", x)
        results += [y, *ops["bnact"][1](x, cache)[:3]]
        y, cache = ops["relu6"][0](x * 4)
        results += [y, ops["relu6"][1](x, cache)]
        return results

    fast = {"dw": (depthwise.depthwise_conv2d_forward, depthwise.depthwise_conv2d_backward),
            "bn": (batchnorm.batchnorm_forward, batchnorm.batchnorm_backward),
            "bnact": (fused.batchnorm_act_forward, fused.batchnorm_act_backward),
            "relu6": (activation.relu6_forward, activation.relu6_backward)}
    reference = {"dw": (F.depthwise_conv2d_forward, F.depthwise_conv2d_backward),
                 "bn": (F.batchnorm_forward, F.batchnorm_backward),
                 "bnact": (F.batchnorm_act_forward, F.batchnorm_act_backward),
                 "relu6": (F.relu6_forward, F.relu6_backward)}
    expected = run(reference)
    errors = []

    def work():
        try:
            for _ in range(ROUNDS):
                for got, want in zip(run(fast), expected):
                    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("errors:", errors)
    assert not errors
""")


@pytest.mark.parametrize("mode", ["workqueue", ""])
def test_every_public_kernel_from_several_python_threads(mode):
    # Numba's workqueue layer aborts the whole process when two threads launch parallel kernels at once, so
    # this runs in a child process: a launch without the lock shows as the child's exit status and message
    rounds = 2 if numba.config.DISABLE_JIT else 20
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "NUMPYMNV2_THREADING")}
    env["NUMPYMNV2_THREADING"] = mode
    proc = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT.replace("ROUNDS", str(rounds))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "errors: []" in proc.stdout


class _FakeDispatcher:
    def __init__(self, fail=None):
        self.compiled, self.fail = [], fail

    def compile(self, sig):
        if self.fail:
            raise self.fail
        self.compiled.append(sig)


class _FakeKernel:
    __name__ = "fake"

    def __init__(self, fail=None):
        self.parallel = _FakeDispatcher(fail)
        self.ready, self.requested = set(), set()


def _compiler(monkeypatch):
    clock = {"now": 10.0}
    later = _launch.LaterCompiler(clock=lambda: clock["now"],
                                  sleep=lambda s: clock.__setitem__("now", clock["now"] + s))
    monkeypatch.setattr(later, "_thread", object())        # request() must not start a real thread here
    return later, clock


def test_later_compiler_compiles_each_signature_once_after_a_quiet_spell(monkeypatch):
    later, clock = _compiler(monkeypatch)
    kernel = _FakeKernel()
    x = np.ones((3, 2), np.float32)
    later.request(kernel, "f", (4, 2, (x,)))
    later.request(kernel, "f", (4, 2, (x,)))          # asked again before it compiled: queued once
    assert len(later.jobs) == 1 and kernel.requested == {"f"}
    later.on_start(None)                              # a compilation in another thread holds it back
    start = clock["now"]
    clock["now"] += 5
    later.on_end(None)
    later.run(forever=False)
    assert clock["now"] - start >= 5 + _launch.QUIET
    assert kernel.ready == {"f"}
    assert kernel.parallel.compiled == [(numba.typeof(4), numba.typeof(2), numba.typeof((x,)))]
    assert later.info() == {"enabled": False, "compiled": 1, "queued": 0, "seconds": 0.0, "errors": []}
    later.compile_one()                               # nothing queued: nothing happens
    assert later.compiled == 1


def test_later_compiler_is_busy_while_it_compiles_and_one_window_after(monkeypatch):
    later, clock = _compiler(monkeypatch)
    seen = []
    kernel = _FakeKernel()
    kernel.parallel.compile = lambda sig: seen.append(later.busy())
    assert not later.busy()
    later.request(kernel, "f", (np.ones(3, np.float32),))
    later.run(forever=False)
    assert seen == [True] and later.busy()
    clock["now"] += _contention.WINDOW
    assert not later.busy()


def test_later_compiler_leaves_a_signature_numba_cannot_name_to_the_calling_thread(monkeypatch):
    later, _ = _compiler(monkeypatch)
    kernel = _FakeKernel()
    later.request(kernel, "", (object(),))
    assert kernel.ready == {""} and not later.jobs


def test_later_compiler_reports_a_failure_and_the_kernel_stays_serial(monkeypatch):
    later, clock = _compiler(monkeypatch)
    kernel = _FakeKernel(fail=RuntimeError("no parfor today"))
    later.request(kernel, "d", (np.ones(3),))
    later.run(forever=False)
    assert kernel.ready == set()
    assert later.compiled == 0 and "fake" in later.errors[0] and "no parfor today" in later.errors[0]


def test_launch_runs_the_serial_copy_until_the_parallel_one_compiled(monkeypatch, plain_launch):
    kernel = activation._relu6
    later, _ = _compiler(monkeypatch)
    later.enabled = True
    monkeypatch.setattr(_launch, "LATER", later)
    monkeypatch.setattr(kernel, "ready", set())
    monkeypatch.setattr(kernel, "requested", set())
    calls = []
    monkeypatch.setattr(kernel, "serial", lambda *args: calls.append("serial"))
    monkeypatch.setattr(kernel, "parallel", _FakeDispatcher())
    x = np.ones((4, 3), np.float32)
    kernel(_launch.PARALLEL_MIN_WORK, 4, (x, x))
    assert calls == ["serial"] and len(later.jobs) == 1
    later.run(forever=False)
    assert kernel.ready == {"f"}
    monkeypatch.setattr(kernel, "parallel", lambda *args: calls.append(("parallel", _launch.LAUNCH_LOCK.locked())))
    kernel(_launch.PARALLEL_MIN_WORK, 4, (x, x))
    kernel(_launch.PARALLEL_MIN_WORK, 4, (x.astype(np.float64), x))     # another dtype: serial, queued
    assert calls == ["serial", ("parallel", True), "serial"] and len(later.jobs) == 1


def test_key_is_the_dtype_of_the_first_array():
    x32, x64 = np.ones(2, np.float32), np.ones(2)
    assert _launch._key((3, 2, (x32, x64))) == "f"
    assert _launch._key((x64, x32, 1)) == "d"
    assert _launch._key((3, ())) == ""


_LATER_SCRIPT = """
import sys, time
import numpy as np
from numpymnv2.kernels import _contention, _launch, activation
from numpymnv2.kernels.depthwise import depthwise_conv2d_forward
_launch.QUIET = 0.0
x = np.random.default_rng(0).standard_normal((8, 56, 56, 96)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((3, 3, 96)).astype(np.float32)
first = depthwise_conv2d_forward(x, w, 1, 1)[0]          # the serial copy; the parallel one is queued
from numpymnv2.kernels.depthwise import _forward
assert _launch.LATER.enabled and _forward.ready == set() and _forward.requested == {"f"}
if sys.argv[1] == "exit":
    time.sleep(0.5)                                       # leave while the parallel copy compiles
    print("left while compiling:", _launch.LATER.compiled == 0)
    sys.exit(0)
end = time.perf_counter() + 120
while not _forward.ready and time.perf_counter() < end:
    time.sleep(0.05)
second = depthwise_conv2d_forward(x, w, 1, 1)[0]          # the parallel copy
print(_forward.ready, len(_forward.parallel.signatures), _launch.LATER.info()["errors"],
      np.array_equal(first, second))
"""


@pytest.mark.parametrize("how", ["wait", "exit"])
def test_parallel_copies_compile_later_under_omp(how, tmp_path):
    """A fresh process under NUMPYMNV2_THREADING=omp with an empty Numba cache: a kernel runs serially until its
    parallel copy compiled in the background, then in parallel with the same result; a process that ends while
    a copy compiles exits cleanly, and the next process uses the cache it left."""
    pytest.importorskip("scipy")
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("numba.np.ufunc.omppool", reason="Numba's OpenMP layer needs the system's libgomp")
    if numba.config.DISABLE_JIT:
        pytest.skip("nothing compiles without the JIT")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "NUMPYMNV2_BLAS_THREADS")}
    env.update(NUMPYMNV2_THREADING="omp", NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", _LATER_SCRIPT, how], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    if how == "exit":
        assert proc.stdout.split() == ["left", "while", "compiling:", "True"]
        proc = subprocess.run([sys.executable, "-c", _LATER_SCRIPT, "wait"], env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["{'f'}", "1", "[]", "True"]


_FORK_SCRIPT = """
import multiprocessing as mp
import numpy as np
from numpymnv2.kernels import _contention, _launch
from numpymnv2.kernels.depthwise import depthwise_conv2d_forward
_launch.LATER.enabled = _contention.MONITOR.enabled = False     # the parallel copy at once
x = np.random.default_rng(0).standard_normal((8, 56, 56, 96)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((3, 3, 96)).astype(np.float32)
parent = depthwise_conv2d_forward(x, w, 1, 1)[0]                # a parallel kernel: the pool has started


def child(queue):
    queue.put((_launch.SERIAL_ONLY, bool(np.array_equal(depthwise_conv2d_forward(x, w, 1, 1)[0], parent))))


if __name__ == "__main__":
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=child, args=(queue,))
    p.start()
    p.join(120)
    print(p.exitcode, *queue.get(timeout=5), _launch.SERIAL_ONLY)
"""


def test_a_forked_child_runs_the_kernels_serially(tmp_path):
    """GNU OpenMP does not survive fork(): Numba kills a child of a process whose OpenMP pool ran as soon as the
    child launches a parallel kernel. The child runs the serial copies instead, with the same results."""
    pytest.importorskip("scipy")
    pytest.importorskip("numba.np.ufunc.omppool", reason="Numba's OpenMP layer needs the system's libgomp")
    if numba.config.DISABLE_JIT:
        pytest.skip("no thread pool without the JIT")
    script = tmp_path / "fork_child.py"
    script.write_text(_FORK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "NUMPYMNV2_THREADING")}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(_launch.__file__.rsplit(os.sep, 1)[0]))  # this checkout
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["0", "True", "True", "False"]


def test_after_fork_the_child_goes_serial_only_where_the_openmp_pool_ran(monkeypatch):
    from numba.np.ufunc import parallel
    monkeypatch.setattr(_launch, "SERIAL_ONLY", False)
    monkeypatch.setattr(_launch.LATER, "enabled", True)
    monkeypatch.setattr(parallel, "_is_initialized", False, raising=False)
    _launch._after_fork_in_child()                  # the pool never ran: OpenMP is safe in the child
    assert not _launch.SERIAL_ONLY and _launch.LATER.enabled
    monkeypatch.setattr(parallel, "_is_initialized", True)
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")
    _launch._after_fork_in_child()
    assert not _launch.SERIAL_ONLY
    monkeypatch.setattr(numba, "threading_layer", lambda: "omp")
    _launch._after_fork_in_child()
    assert _launch.SERIAL_ONLY and not _launch.LATER.enabled
    calls = []
    kernel = activation._relu6
    monkeypatch.setattr(kernel, "serial", lambda *args: calls.append("serial"))
    monkeypatch.setattr(kernel, "parallel", lambda *args: calls.append("parallel"))
    kernel(_launch.PARALLEL_MIN_WORK, 4, ())
    assert calls == ["serial"]


def test_numbas_error_formatting_leaves_the_streams_alone():
    """Numba formats error messages inside ColorShell, which (with colorama installed) swaps sys.stdout and
    sys.stderr; from the background compilation that swap raced with the program's own redirections. With the
    background compilation on, building a Numba error in another thread leaves a redirection in place."""
    import contextlib
    import io
    import threading
    from numba.core import errors
    if not _launch.LATER.enabled:
        pytest.skip("no background compilation here")
    if hasattr(errors, "ColorShell"):
        assert errors.ColorShell is _launch._StreamsLeftAlone
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        for _ in range(50):
            t = threading.Thread(target=lambda: errors.TypingError("formatted in another thread"))
            t.start()
            t.join()
            assert sys.stderr is err
