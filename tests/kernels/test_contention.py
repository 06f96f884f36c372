"""The contention monitor of numpymnv2.kernels._contention: its decisions on a scripted clock, the statistics it
reads, that its decision never changes a result, and a fresh process under NUMPYMNV2_THREADING=omp beside busy
processes."""
import os
import subprocess
import sys

import numpy as np
import pytest

from numpymnv2.kernels import _contention, _launch
from numpymnv2.kernels._contention import CONTENDED, PROBE_FIRST, PROBE_MAX, WINDOW, Monitor


class Scripted:
    """A wall clock and a run-delay counter the test advances by hand."""

    def __init__(self):
        self.now, self.waited = 100.0, 5.0

    def advance(self, seconds, wait_per_second):
        self.now += seconds
        self.waited += seconds * wait_per_second


def _monitor():
    s = Scripted()
    m = Monitor(clock=lambda: s.now, delay=lambda: s.waited)
    assert m.enable()
    return m, s


def test_a_disabled_monitor_never_says_contended():
    m = Monitor(clock=lambda: 0.0, delay=lambda: None)
    assert not m.enable()
    assert not m.enabled and not m.contended()


def test_quiet_windows_keep_the_parallel_copies():
    m, s = _monitor()
    for _ in range(10):
        s.advance(WINDOW, CONTENDED / 2)
        assert not m.contended()
    assert m.switches == 0
    assert m.last_ratio == pytest.approx(CONTENDED / 2)


def test_contention_goes_serial_until_a_probe_shows_free_cores():
    m, s = _monitor()
    s.advance(WINDOW / 2, 1.0)
    assert not m.contended()                    # the window is not over yet
    s.advance(WINDOW / 2, 1.0)
    assert m.contended()
    s.advance(PROBE_FIRST - 0.01, 0.0)           # serial: no decision before the probe
    assert m.contended()
    s.advance(0.01, 0.0)
    assert not m.contended()                    # the probe: parallel for one window
    s.advance(WINDOW, 0.0)
    assert not m.contended()                    # the cores were free: stay parallel
    s.advance(WINDOW, 0.0)
    assert not m.contended()
    assert m.switches == 2


def test_a_failed_probe_doubles_the_wait_up_to_the_most():
    m, s = _monitor()
    s.advance(WINDOW, 0.8)
    assert m.contended()
    waits = []
    for _ in range(6):
        start = s.now
        while m.contended():
            s.advance(0.125, 0.0)
        waits.append(s.now - start)
        s.advance(WINDOW, 0.8)                  # the probe window is contended again
        assert m.contended()
    expected = [min(PROBE_FIRST * 2 ** k, PROBE_MAX) for k in range(6)]
    assert waits == pytest.approx(expected, abs=0.13)
    while m.contended():
        s.advance(0.125, 0.0)
    s.advance(WINDOW, 0.0)                      # a quiet probe resets the wait
    assert not m.contended()
    s.advance(WINDOW, 0.9)
    assert m.contended()
    start = s.now
    while m.contended():
        s.advance(0.125, 0.0)
    assert s.now - start == pytest.approx(PROBE_FIRST, abs=0.13)


def test_windows_while_this_process_compiles_decide_nothing():
    """The background compilation takes a core of its own: the wait it causes is not other work's."""
    m, s = _monitor()
    busy = {"now": True}
    m.busy_here = lambda: busy["now"]
    for _ in range(4):
        s.advance(WINDOW, 0.9)
        assert not m.contended()
    assert m.last_ratio is None and m.switches == 0
    busy["now"] = False
    s.advance(WINDOW, 0.9)                      # only this window counts
    assert m.contended() and m.last_ratio == pytest.approx(0.9)


def test_monitor_turns_off_when_the_statistics_disappear():
    s = Scripted()
    readings = [1.0, None]
    m = Monitor(clock=lambda: s.now, delay=lambda: readings.pop(0))
    assert m.enable()
    s.advance(WINDOW, 0.0)
    assert not m.contended()
    assert not m.enabled
    assert m.info() == {"enabled": False, "serial": False, "switches": 0, "last_wait_per_second": None}


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux's per-thread scheduler statistics")
def test_run_delay_is_read_from_every_thread():
    first = _contention.run_delay_seconds()
    assert isinstance(first, float) and first >= 0
    assert _contention.run_delay_seconds() >= first


def test_run_delay_without_the_statistics(monkeypatch, tmp_path):
    monkeypatch.setattr(_contention, "_TASKS", str(tmp_path / "missing"))
    assert _contention.run_delay_seconds() is None
    (tmp_path / "123").mkdir()
    (tmp_path / "123" / "schedstat").write_text("1 2000000000 3\n")
    (tmp_path / "124").mkdir()                    # a thread that ended: no schedstat
    (tmp_path / "125").mkdir()
    (tmp_path / "125" / "schedstat").write_text("garbage\n")
    monkeypatch.setattr(_contention, "_TASKS", str(tmp_path))
    assert _contention.run_delay_seconds() == 2.0


def _train_step(seed=0):
    import numpymnv2 as mn
    from numpymnv2.models import MobileNetV2
    model = MobileNetV2(num_classes=5, width_mult=0.35, seed=seed).train()
    x = np.random.default_rng(1).standard_normal((4, 40, 40, 3)).astype(np.float32)
    loss, dlogits = mn.softmax_cross_entropy(model(x), np.arange(4) % 5)
    model.backward(dlogits)
    return [np.asarray(loss)] + [p.grad.copy() for p in model.parameters()] + \
        [m.running_var.copy() for m in model.modules() if hasattr(m, "running_var")]


def test_the_decision_never_changes_a_result(monkeypatch):
    """Every kernel launched on its parallel copy, then every one on its serial copy as under contention: the
    float32 step is the same to the bit (the serial copy runs the same blocks in the same order)."""
    monkeypatch.setattr(_launch, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_launch.LATER, "enabled", False)      # the parallel copies compile at once
    monitor = Monitor(clock=lambda: 0.0, delay=lambda: 0.0)
    monkeypatch.setattr(_contention, "MONITOR", monitor)
    calls = {"serial": 0, "parallel": 0}
    real_launch = _launch.Kernel.launch

    def counting(self, work, *args):
        calls["serial" if monitor.contended() else "parallel"] += 1
        return real_launch(self, work, *args)
    monkeypatch.setattr(_launch.Kernel, "launch", counting)
    parallel = _train_step()
    monitor.enabled, monitor.serial, monitor._next = True, True, float("inf")
    serial = _train_step()
    assert calls["serial"] > 50 and calls["parallel"] == calls["serial"]
    assert len(serial) == len(parallel) > 50
    for a, b in zip(serial, parallel):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


_BUSY_SCRIPT = """
import subprocess, sys, time, os
import numpy as np
from numpymnv2.kernels import _contention, _launch, _threads
from numpymnv2.kernels.depthwise import depthwise_conv2d_forward
x = np.random.default_rng(0).standard_normal((8, 56, 56, 96)).astype(np.float32)
w = np.ones((3, 3, 96), np.float32)
_launch.LATER.enabled = False               # the parallel copy compiles at once
depthwise_conv2d_forward(x, w, 1, 1)
busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count())]
try:
    end = time.perf_counter() + 20
    while not _contention.MONITOR.serial and time.perf_counter() < end:
        depthwise_conv2d_forward(x, w, 1, 1)
finally:
    for p in busy:
        p.kill()
print(_threads.info()["contention_monitor"], _contention.MONITOR.serial, _contention.MONITOR.switches)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux's per-thread scheduler statistics")
def test_omp_steps_aside_beside_busy_processes():
    """A fresh process under NUMPYMNV2_THREADING=omp, one busy process per core: the monitor sends the kernels to
    their serial copies."""
    pytest.importorskip("scipy")
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("numba.np.ufunc.omppool", reason="Numba's OpenMP layer needs the system's libgomp")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "NUMPYMNV2_BLAS_THREADS")}
    env["NUMPYMNV2_THREADING"] = "omp"
    out = subprocess.run([sys.executable, "-c", _BUSY_SCRIPT], env=env, capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()
    assert out == ["on", "True", "1"]
