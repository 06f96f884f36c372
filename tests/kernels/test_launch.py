"""Kernel launches: which copy runs, the launch lock, and every public kernel called from several Python
threads at once."""
import os
import subprocess
import sys
import textwrap

import numba
import pytest

from numpymnv2.kernels import _launch, activation


def test_launch_picks_the_copy_and_holds_the_lock_for_the_parallel_one(monkeypatch):
    kernel = activation._relu6
    calls = []
    monkeypatch.setattr(kernel, "serial", lambda *args: calls.append(("serial", args, _launch.LAUNCH_LOCK.locked())))
    monkeypatch.setattr(kernel, "parallel",
                        lambda *args: calls.append(("parallel", args, _launch.LAUNCH_LOCK.locked())))
    kernel(_launch.PARALLEL_MIN_WORK - 1, 3, "inputs")
    kernel(_launch.PARALLEL_MIN_WORK, 4, "inputs")
    assert calls == [("serial", (3, "inputs"), False), ("parallel", (4, "inputs"), True)]
    assert not _launch.LAUNCH_LOCK.locked()


def test_lock_is_released_when_a_parallel_launch_fails(monkeypatch):
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


def test_kernels_are_named_after_their_row_function():
    from numpymnv2.kernels import batchnorm
    assert batchnorm._grad_sums.row is batchnorm._grad_sums_row
    assert batchnorm._normalize.__doc__ == batchnorm._normalize_row.__doc__
    assert batchnorm._normalize.__name__.startswith("_normalize_row_each_row_")


_THREADS_SCRIPT = textwrap.dedent("""
    import threading
    import numpy as np
    from numpymnv2 import functional as F
    from numpymnv2.kernels import _launch, activation, batchnorm, depthwise, fused

    _launch.PARALLEL_MIN_WORK = 0          # every launch on the parallel copy, through the workqueue layer
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


def test_every_public_kernel_from_several_python_threads():
    # Numba's workqueue layer aborts the whole process when two threads launch parallel kernels at once, so
    # this runs in a child process: a launch without the lock shows as the child's exit status and message
    rounds = 2 if numba.config.DISABLE_JIT else 20
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "NUMPYMNV2_THREADING")}
    proc = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT.replace("ROUNDS", str(rounds))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "errors: []" in proc.stdout
