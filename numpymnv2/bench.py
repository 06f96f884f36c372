"""``numpymnv2 bench``: time train steps and operations, against PyTorch when it is installed.

Every number comes from worker processes: one for numpymnv2 and one for each PyTorch layout (NCHW and
channels_last), started in turn and alternated over several rounds, so the runtimes' thread pools never share a
process and slow drift of a shared machine hits every side alike. A row reports the median over all rounds of
the per-repetition times measured after a warm-up.

Suites
------
``ops``     depthwise 3x3 (fwd+bwd), BatchNorm+ReLU6 training (fwd+bwd) and pointwise 1x1 (fwd+bwd) at
            MobileNetV2's real layer shapes, with GFLOP/s; the float32 matmul peak of this machine (one and two
            BLAS threads) and each pointwise GEMM against a bare ``np.matmul`` of the same shape.
``model``   whole train steps (forward, loss, backward, SGD-momentum step) and inference, images/s, ratio to
            PyTorch's faster layout; inference runs numpymnv2's fastest public path, ``model.fuse()``, and when
            onnx and onnxruntime are installed also onnxruntime on numpymnv2's ONNX export of the same network.
``extra``   JIT cost of the first train step in a fresh process (cold and warm Numba cache), peak memory of a
            train step (both libraries), and the slowdown when another process keeps one core busy.
``onnx``    inference in onnxruntime on numpymnv2's ONNX export against onnxruntime on PyTorch's export of the
            same network and weights, and numpymnv2's own ``model.fuse()`` (needs onnx and onnxruntime; without
            torch only numpymnv2's two sides run).

The benchmark reports the BLAS kernel that ran through threadpoolctl, which it needs (the ``bench`` extra
installs it). Run it as a user would, e.g. on this project's machines with the environment's OpenBLAS
overrides removed::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE numpymnv2 bench --suite all

``python -m numpymnv2.bench --worker ...`` is the worker entry point the driver starts; it is not meant for
direct use.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from numpymnv2.interop import torch_bench

# (name, batch, resolution, width_mult, num_classes, variant, mode): the train and inference rows of the report
MODEL_ROWS = [
    ("train b32 32px w1.0 c10", 32, 32, 1.0, 10, "imagenet", "train"),
    ("train b32 32px w1.0 c10 CIFAR strides", 32, 32, 1.0, 10, "cifar", "train"),
    ("train b64 32px w0.35 c10", 64, 32, 0.35, 10, "imagenet", "train"),
    ("train b16 96px w0.5 c10", 16, 96, 0.5, 10, "imagenet", "train"),
    ("train b8 224px w1.0 c1000", 8, 224, 1.0, 1000, "imagenet", "train"),
    ("infer b1 224px w1.0 c1000", 1, 224, 1.0, 1000, "imagenet", "infer"),
    ("infer b32 32px w1.0 c10", 32, 32, 1.0, 10, "imagenet", "infer"),
]

# (kind, N, H, W, C, stride) at the shapes MobileNetV2 meets: batch 32 at 32x32 and batch 8 at 224x224, width 1
DEPTHWISE_ROWS = [(32, 16, 16, 96, 2), (32, 8, 8, 144, 1), (32, 8, 8, 144, 2), (32, 4, 4, 192, 1),
                  (8, 112, 112, 32, 1), (8, 112, 112, 96, 2), (8, 56, 56, 144, 1), (8, 28, 28, 192, 1),
                  (8, 14, 14, 384, 1), (8, 7, 7, 960, 1)]
BN_ROWS = [(32, 16, 16, 96), (32, 8, 8, 144), (32, 4, 4, 192), (8, 112, 112, 96), (8, 56, 56, 144),
           (8, 14, 14, 384), (8, 7, 7, 960)]
# (N, H, W, C_in, C_out)
POINTWISE_ROWS = [(32, 16, 16, 16, 96), (32, 8, 8, 24, 144), (32, 8, 8, 144, 24), (32, 4, 4, 192, 32),
                  (8, 56, 56, 24, 144), (8, 56, 56, 144, 24), (8, 28, 28, 32, 192), (8, 14, 14, 384, 64),
                  (8, 7, 7, 320, 1280)]

SIDES = ("numpymnv2", "torch-nchw", "torch-cl")


# ----------------------------------------------------------------------------------------------------------
# timing helpers (workers)
# ----------------------------------------------------------------------------------------------------------
def _time(fn, warmup: int, reps: int) -> list:
    for _ in range(warmup):
        fn()
    if _settle():
        for _ in range(warmup):
            fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _settle(limit_s: float = 300.0) -> bool:
    """Wait while numpymnv2 compiles (or loads from its cache) the parallel copies of the kernels the warm-up met
    in the background (``numpymnv2.kernels._launch.LATER``): the timed steps measure the steady state, as in a
    training run after its first seconds; the extra suite measures the start. True if it had anything to do."""
    launch = sys.modules.get("numpymnv2.kernels._launch")
    if launch is None or not launch.LATER.enabled:
        return False
    waited = False
    end = time.perf_counter() + limit_s
    while (launch.LATER.jobs or launch.LATER.busy()) and time.perf_counter() < end:
        waited = True
        time.sleep(0.05)
    return waited


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss():
    # writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------------------
# numpymnv2 worker
# ----------------------------------------------------------------------------------------------------------
def _np_model(row, dtype="float32"):
    from numpymnv2.models import MobileNetV2
    _, N, res, wm, nc, variant, mode = row
    build = MobileNetV2.cifar if variant == "cifar" else MobileNetV2
    model = build(num_classes=nc, width_mult=wm, seed=0, dtype=dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, res, res, 3)).astype(dtype)
    labels = rng.integers(0, nc, N)
    return model, x, labels


def _np_optimizer(model):
    """numpymnv2.optim.SGD with PyTorch's momentum, as the PyTorch side uses torch.optim.SGD."""
    from numpymnv2.optim import SGD
    opt = SGD([p for _, p in model.named_parameters()], lr=0.01, momentum=0.9)
    return opt.step, "numpymnv2.optim.SGD"


def _np_step_fn(row):
    import numpymnv2 as mn
    model, x, labels = _np_model(row)
    if row[6] == "infer":
        fused = model.eval().fuse()          # the fastest public inference path (see benchmarks/README.md)
        return (lambda: fused(x)), {"inference": "model.fuse()"}
    model.train()
    opt_step, opt_name = _np_optimizer(model)

    def step():
        model.zero_grad()
        logits = model(x)
        _, dlogits = mn.softmax_cross_entropy(logits, labels)
        model.backward(dlogits)
        opt_step()
    return step, {"optimizer": opt_name}


def _np_op_fns(spec):
    from numpymnv2.ops import BATCHNORM_ACT, DEPTHWISE_CONV2D, POINTWISE_CONV2D
    depthwise_conv2d_forward, depthwise_conv2d_backward = DEPTHWISE_CONV2D.fast
    batchnorm_act_forward, batchnorm_act_backward = BATCHNORM_ACT.fast
    pointwise_conv2d_forward, pointwise_conv2d_backward = POINTWISE_CONV2D.fast
    rng = np.random.default_rng(0)
    fns = {}
    for N, H, W, C, s in spec["depthwise"]:
        x = rng.standard_normal((N, H, W, C)).astype(np.float32)
        w = rng.standard_normal((3, 3, C)).astype(np.float32)
        out, _ = depthwise_conv2d_forward(x, w, s, 1)
        dout = rng.standard_normal(out.shape).astype(np.float32)

        def f(x=x, w=w, s=s, dout=dout):
            _, cache = depthwise_conv2d_forward(x, w, s, 1)
            depthwise_conv2d_backward(dout, cache)
        fns[f"dw {N}x{H}x{W}x{C} s{s}"] = f
    for N, H, W, C in spec["bn"]:
        x = rng.standard_normal((N, H, W, C)).astype(np.float32)
        g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        dout = rng.standard_normal(x.shape).astype(np.float32)

        def f(x=x, g=g, b=b, rm=rm, rv=rv, dout=dout):
            _, cache = batchnorm_act_forward(x, g, b, rm, rv, True, 0.1, 1e-5, "relu6")
            batchnorm_act_backward(dout, cache)
        fns[f"bn+relu6 {N}x{H}x{W}x{C}"] = f
    for N, H, W, Ci, Co in spec["pointwise"]:
        x = rng.standard_normal((N, H, W, Ci)).astype(np.float32)
        T = rng.standard_normal((Co, Ci)).astype(np.float32)
        dz = rng.standard_normal((N, H, W, Co)).astype(np.float32)

        def f(x=x, T=T, dz=dz):
            _, cache = pointwise_conv2d_forward(x, T)
            pointwise_conv2d_backward(dz, cache)

        X, dZ = x.reshape(-1, Ci), dz.reshape(-1, Co)

        def g(X=X, T=T, dZ=dZ):   # the same three products with bare np.matmul
            X @ T.T
            dZ.T @ X
            dZ @ T
        fns[f"pw {N}x{H}x{W} {Ci}->{Co}"] = f
        fns[f"matmul {N}x{H}x{W} {Ci}->{Co}"] = g
    return fns


def _matmul_peak(threads, n=1024, reps=20):
    from threadpoolctl import threadpool_limits
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    with threadpool_limits(threads, "blas"):
        ts = _time(lambda: a @ b, 3, reps)
    return 2 * n ** 3 / np.min(ts) / 1e9


# ----------------------------------------------------------------------------------------------------------
# worker entry point
# ----------------------------------------------------------------------------------------------------------
def _worker(side: str, task: str, spec: dict) -> dict:
    if side in ONNX_SIDES or side == "ort-model":
        return _onnx_worker(side, task, spec)
    warmup, reps = spec.get("warmup", 3), spec.get("reps", 5)
    result = {"side": side, "times": {}, "meta": {}}
    if side == "numpymnv2":
        import numpymnv2.kernels  # noqa: F401  applies the thread-pool and allocator settings
        from numpymnv2.kernels import _memory, _threads
    if task == "ops":
        fns = _np_op_fns(spec) if side == "numpymnv2" else torch_bench.op_fns(spec, side)
        for name, fn in fns.items():
            result["times"][name] = _time(fn, warmup, reps)
        if side == "numpymnv2" and spec.get("peak"):
            # the peak is the fastest repetition (a shared machine only ever slows a product down)
            result["meta"]["matmul_peak_gflops_1t"] = _matmul_peak(1)
            result["meta"]["matmul_peak_gflops_2t"] = _matmul_peak(2)
    elif task == "model":
        for row in spec["rows"]:
            row = tuple(row)
            fn, meta = _np_step_fn(row) if side == "numpymnv2" else torch_bench.step_fn(row, side)
            result["times"][row[0]] = _time(fn, warmup if row[1] > 8 or row[2] < 224 else 2, reps)
            result["meta"].update(meta)
    elif task == "first-step":
        t0 = spec["t0"]
        row = tuple(spec["rows"][0])
        fn, _ = _np_step_fn(row)
        t = time.perf_counter()
        fn()
        result["meta"]["first_step_s"] = time.perf_counter() - t
        result["meta"]["process_to_end_of_first_step_s"] = time.time() - t0
    elif task == "memory":
        # RSS once the model, its input and the libraries are loaded, then the peak over three train steps:
        # the difference is what training adds (activations, caches, gradients, optimizer state, allocator slack)
        row = tuple(spec["rows"][0])
        if side == "numpymnv2":
            import numpymnv2.models  # noqa: F401
            import numpymnv2.optim  # noqa: F401
        else:
            torch_bench.load_torch()
        base = _rss_mb()
        ok = _reset_peak_rss()
        fn, _ = _np_step_fn(row) if side == "numpymnv2" else torch_bench.step_fn(row, side)
        for _ in range(3):
            fn()
        result["meta"]["step_peak_mb_over_baseline"] = (_peak_rss_mb() - base) if ok else float("nan")
        result["meta"]["peak_rss_mb"] = _peak_rss_mb()
    if side == "numpymnv2":
        from threadpoolctl import threadpool_info
        result["meta"]["threads"] = _threads.info()
        result["meta"]["malloc"] = _memory.info()
        result["meta"]["blas"] = [{k: d.get(k) for k in ("internal_api", "architecture", "num_threads", "version",
                                                          "filepath")}
                                  for d in threadpool_info() if d.get("user_api") == "blas"]
    else:
        result["meta"].update(torch_bench.runtime_info())
    return result


def _spawn(side, task, spec, env=None) -> dict:
    cmd = [sys.executable, "-m", "numpymnv2.bench", "--worker", side, "--task", task, "--spec", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {side}/{task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rounds(sides, task, spec, rounds, log) -> dict:
    """Alternate the sides over ``rounds`` rounds (order reversed every other round); pool the times."""
    pooled = {side: {} for side in sides}
    meta = {side: {} for side in sides}
    for r in range(rounds):
        order = sides if r % 2 == 0 else tuple(reversed(sides))
        for side in order:
            log(f"  round {r + 1}/{rounds}: {side} {task}")
            res = _spawn(side, task, spec)
            for name, ts in res["times"].items():
                pooled[side].setdefault(name, []).extend(ts)
            meta[side].update(res["meta"])
    med = {side: {name: float(np.median(ts)) * 1e3 for name, ts in d.items()} for side, d in pooled.items()}
    best = {side: {name: float(np.min(ts)) * 1e3 for name, ts in d.items()} for side, d in pooled.items()}
    return {"ms": med, "min_ms": best, "meta": meta, "load_average_end": os.getloadavg()}


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _missing_dependency() -> str | None:
    """Why the benchmark cannot run here, or None: it reports and limits the BLAS threads through threadpoolctl,
    which the ``bench`` and ``dev`` extras install."""
    if importlib.util.find_spec("threadpoolctl") is None:
        return ("needs threadpoolctl to report and limit NumPy's BLAS threads: pip install threadpoolctl "
                "(or install numpymnv2 with its bench extra)")
    return None


# ----------------------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------------------
def _fmt(v, spec=".2f"):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


# How every "ratio" column reads, printed under each table
RATIO_NOTE = ("ratio = numpymnv2's time / the other side's time (the side the column names): below 1 numpymnv2 is "
              "faster, above 1 it is slower (2.00 = takes twice as long)")


def _ratio_cells(ms, name, sides):
    ours = ms["numpymnv2"].get(name)
    nchw = ms.get("torch-nchw", {}).get(name) if "torch-nchw" in sides else None
    cl = ms.get("torch-cl", {}).get(name) if "torch-cl" in sides else None
    best = min([v for v in (nchw, cl) if v is not None], default=None)
    return ours, nchw, cl, (ours / cl if cl else None), (ours / best if best else None)


def _op_table(res, sides, peak1, peak2) -> list:
    ms = res["ms"]
    lines = ["| op (fwd+bwd, float32) | numpymnv2 ms | GFLOP/s | torch NCHW ms | torch CL ms | ratio to CL | "
             "ratio to faster torch | ratio of mins to CL |", "|---|---|---|---|---|---|---|---|"]
    for name in ms["numpymnv2"]:
        if name.startswith("matmul"):
            continue
        ours, nchw, cl, r_cl, r_best = _ratio_cells(ms, name, sides)
        m_cl = _ratio_cells(res["min_ms"], name, sides)[3]
        flops = _op_flops(name)
        gf = flops / (ours * 1e-3) / 1e9 if flops else None
        lines.append(f"| {name} | {_fmt(ours, '.3f')} | {_fmt(gf, '.1f')} | {_fmt(nchw, '.3f')} | {_fmt(cl, '.3f')} "
                     f"| {_fmt(r_cl)} | {_fmt(r_best)} | {_fmt(m_cl)} |")
    lines += ["", RATIO_NOTE + "; CL = PyTorch channels_last.", "",
              f"float32 matmul peak (1024^3, measured in this run): {_fmt(peak1, '.1f')} GFLOP/s with 1 BLAS "
                  f"thread, {_fmt(peak2, '.1f')} GFLOP/s with 2", "",
              "| pointwise (3 GEMMs) | numpymnv2 ms | GFLOP/s | bare np.matmul ms | of bare matmul | of 1-thread peak "
              "| of 2-thread peak |", "|---|---|---|---|---|---|---|"]
    for name in ms["numpymnv2"]:
        if not name.startswith("pw"):
            continue
        ours = ms["numpymnv2"][name]
        bare = ms["numpymnv2"].get("matmul" + name[2:])
        gf = _op_flops(name) / (ours * 1e-3) / 1e9
        lines.append(f"| {name} | {ours:.3f} | {gf:.1f} | {_fmt(bare, '.3f')} | {_fmt(bare / ours * 100, '.0f')}% | "
                     f"{_fmt(gf / peak1 * 100 if peak1 else None, '.0f')}% | "
                     f"{_fmt(gf / peak2 * 100 if peak2 else None, '.0f')}% |")
    return lines


def _op_flops(name):
    kind, rest = name.split(" ", 1)
    if kind == "dw":
        dims, s = rest.split(" s")
        N, H, W, C = map(int, dims.split("x"))
        s = int(s)
        Ho, Wo = (H - 1) // s + 1, (W - 1) // s + 1
        return 3 * 2 * 9 * N * Ho * Wo * C         # forward, input gradient, weight gradient
    if kind in ("pw", "matmul"):
        dims, ch = rest.split(" ")
        N, H, W = map(int, dims.split("x"))
        Ci, Co = map(int, ch.split("->"))
        return 3 * 2 * N * H * W * Ci * Co
    return None


def _model_table(res, sides) -> list:
    ms = res["ms"]
    ort = ms.get("ort-model", {})
    lines = ["| row | numpymnv2 ms | images/s | torch NCHW ms | torch CL ms | ratio to CL | ratio to faster torch | "
             "min ms: numpymnv2 / NCHW / CL | ratio of mins to faster torch | onnxruntime ms | ratio to onnxruntime |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in MODEL_ROWS:
        name = row[0]
        if name not in ms["numpymnv2"]:
            continue
        ours, nchw, cl, r_cl, r_best = _ratio_cells(ms, name, sides)
        m_ours, m_nchw, m_cl, _, m_best = _ratio_cells(res["min_ms"], name, sides)
        theirs = ort.get(name)
        lines.append(f"| {name} | {ours:.1f} | {row[1] / ours * 1e3:.1f} | {_fmt(nchw, '.1f')} | {_fmt(cl, '.1f')} | "
                     f"{_fmt(r_cl)} | {_fmt(r_best)} | {m_ours:.1f} / {_fmt(m_nchw, '.1f')} / {_fmt(m_cl, '.1f')} | "
                     f"{_fmt(m_best)} | {_fmt(theirs, '.1f')} | {_fmt(ours / theirs if theirs else None)} |")
    lines.append("\n" + RATIO_NOTE + "; CL = PyTorch channels_last, onnxruntime = numpymnv2's ONNX export run "
                 "in onnxruntime.")
    lines.append("\nInference rows: numpymnv2 runs `model.eval().fuse()` (BatchNorm folded, the fast inference path), "
                 "PyTorch `model.eval()` under `torch.no_grad()`, onnxruntime (CPU provider, "
                 f"{ORT_THREADS} intra-op threads, all graph optimisations) numpymnv2's ONNX export of the same "
                 "network (`numpymnv2.interop.to_onnx`).")
    lines.append(f"\nload average at the end of this suite: {', '.join(f'{v:.2f}' for v in res['load_average_end'])}")
    return lines


# ----------------------------------------------------------------------------------------------------------
# onnxruntime: numpymnv2's ONNX export against PyTorch's export of the same network (issue 12)
# ----------------------------------------------------------------------------------------------------------
# (name, batch, resolution, width_mult, num_classes, variant, mode); every row of a side runs one exported file
ONNX_ROWS = [
    ("infer b1 224px w1.0 c1000", 1, 224, 1.0, 1000, "imagenet", "infer"),
    ("infer b8 224px w1.0 c1000", 8, 224, 1.0, 1000, "imagenet", "infer"),
]
ONNX_SIDES = ("ort-numpymnv2", "ort-torch", "numpymnv2-fused")
ORT_THREADS = 2


def _onnx_feed(side, sess, x):
    """numpymnv2's graph takes NHWC as model(x) does; PyTorch's takes NCHW."""
    return {sess.get_inputs()[0].name: x if side == "ort-numpymnv2" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))}


def _onnx_worker(side: str, task: str, spec: dict) -> dict:
    """``onnx-export``: write this side's file of the seed-0 model and compare it with numpymnv2 on one image;
    ``onnx``: time inference of every row (onnxruntime with ``ORT_THREADS`` threads, or ``model.fuse()``);
    ``model`` (side ``ort-model``): the model suite's inference rows in onnxruntime."""
    import onnxruntime

    from numpymnv2.interop.onnx import ort_session, to_onnx
    result = {"side": side, "times": {}, "meta": {"onnxruntime": onnxruntime.__version__}}
    rows = [tuple(r) for r in spec["rows"]]
    if task == "model":
        # the model suite's inference rows in onnxruntime: each row's network exported, then timed
        for row in (r for r in rows if r[6] == "infer"):
            model, x, _ = _np_model(row)
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "model.onnx")
                to_onnx(model.eval(), path, check=False)
                sess = ort_session(path, threads=ORT_THREADS)
            feed = {sess.get_inputs()[0].name: x}
            result["times"][row[0]] = _time(lambda: sess.run(None, feed), spec.get("warmup", 3), spec.get("reps", 5))
        result["meta"]["ort_intra_op_threads"] = ORT_THREADS
        return result
    if task == "onnx-export":
        model = _np_model(rows[0])[0].eval()
        path = spec["paths"][side]
        if side == "ort-numpymnv2":
            result["meta"].update(exporter="numpymnv2.interop.to_onnx", opset=to_onnx(model, path, check=False).opset)
        else:
            from numpymnv2.interop import to_torchvision
            _, _, _, wm, nc, variant, _ = rows[0]
            result["meta"].update(torch_bench.export_onnx(to_torchvision(model), nc, wm, variant == "cifar", path))
        x = np.random.default_rng(1).standard_normal((2, 224, 224, 3)).astype(np.float32)
        sess = ort_session(path)
        want = model(x)
        got = sess.run(None, _onnx_feed(side, sess, x))[0]
        result["meta"]["max_rel_diff_to_numpymnv2"] = float(np.abs(got - want).max() / np.abs(want).max())
        result["meta"]["optimized_ops"] = _ort_optimized_ops(path)
        return result
    if task == "onnx-paired":
        result["meta"]["paired_ratio"] = _onnx_paired(spec, rows)
        return result
    warmup, reps = spec.get("warmup", 5), spec.get("reps", 20)
    if side == "numpymnv2-fused":
        import numpymnv2.kernels  # noqa: F401  applies the thread-pool settings
        from numpymnv2.kernels import _threads
        result["meta"]["threads"] = _threads.info()
    else:
        sess = ort_session(spec["paths"][side], threads=ORT_THREADS)
        result["meta"]["ort_intra_op_threads"] = ORT_THREADS
    for row in rows:
        model, x, _ = _np_model(row)
        if side == "numpymnv2-fused":
            fused = model.eval().fuse()
            fn = (lambda fused=fused, x=x: fused(x))
        else:
            feed = _onnx_feed(side, sess, x)
            fn = (lambda feed=feed: sess.run(None, feed))
        result["times"][row[0]] = _time(fn, warmup, reps)
    return result


def _ort_optimized_ops(path) -> dict:
    """Node counts by type of the graph onnxruntime actually runs (after its optimisations) for this file."""
    import collections

    import onnx
    import onnxruntime
    with tempfile.TemporaryDirectory() as folder:
        opts = onnxruntime.SessionOptions()
        opts.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        opts.log_severity_level = 3         # its warning that the saved graph is specific to this CPU
        onnxruntime.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph
    kinds = (f"{n.domain.rsplit('.', 1)[-1]}.{n.op_type}" if n.domain else n.op_type for n in graph.node)
    return dict(sorted(collections.Counter(kinds).items()))


def _onnx_paired(spec, rows) -> dict:
    """Both exported files in one process, run alternately: the median of the per-pair time ratios per row.

    A shared machine's load drifts; a pair of runs a few milliseconds apart sees nearly the same load, so the
    median of pair ratios is steadier than a ratio of medians. Both sessions have thread spinning off (else the
    idle pool of one spins on the cores the other needs); otherwise the settings of the ``onnx`` task.
    """
    import onnxruntime
    sessions = {}
    for side in ("ort-numpymnv2", "ort-torch"):
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = ORT_THREADS
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[side] = onnxruntime.InferenceSession(spec["paths"][side], opts, providers=["CPUExecutionProvider"])
    out = {}
    for row in rows:
        x = _np_model(row)[1]
        fns = {side: (lambda s=s, feed=_onnx_feed(side, s, x): s.run(None, feed)) for side, s in sessions.items()}
        for fn in fns.values():
            _time(fn, spec.get("warmup", 5), 0)
        ratios = []
        for i in range(spec.get("reps", 20)):
            order = ("ort-numpymnv2", "ort-torch") if i % 2 == 0 else ("ort-torch", "ort-numpymnv2")
            t = {side: _time(fns[side], 0, 1)[0] for side in order}
            ratios.append(t["ort-numpymnv2"] / t["ort-torch"])
        out[row[0]] = {"median": float(np.median(ratios)), "q25": float(np.percentile(ratios, 25)),
                       "q75": float(np.percentile(ratios, 75)), "pairs": len(ratios)}
    return out


def _onnxruntime_available() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def _onnx_suite(args, log) -> tuple[list, dict]:
    """Export once per side into a temporary folder, then alternate the sides over the rounds; table lines."""
    title = ["## onnxruntime: numpymnv2's ONNX export vs PyTorch's, and numpymnv2's model.fuse()", ""]
    if not _onnxruntime_available():
        return title + ['skipped: onnx and onnxruntime are not installed (pip install "numpymnv2[onnx]")', ""], {}
    sides = ONNX_SIDES if not args.no_torch and _torch_available() else ("ort-numpymnv2", "numpymnv2-fused")
    rows = ONNX_ROWS[:1] if args.quick else ONNX_ROWS
    with tempfile.TemporaryDirectory() as folder:
        paths = {side: os.path.join(folder, f"{side}.onnx") for side in sides if side.startswith("ort-")}
        exports = {}
        for side in paths:
            log(f"  export {side}")
            exports[side] = _spawn(side, "onnx-export", {"rows": rows[:1], "paths": paths})["meta"]
        spec = {"rows": rows, "paths": paths, "reps": args.reps * 4, "warmup": 5}
        res = _rounds(sides, "onnx", spec, args.rounds, log)
        paired = {}
        if "ort-torch" in sides:
            for r in range(args.rounds):
                log(f"  round {r + 1}/{args.rounds}: both exports alternately in one process")
                for name, d in _spawn("ort-numpymnv2", "onnx-paired", spec)["meta"]["paired_ratio"].items():
                    paired.setdefault(name, []).append(d["median"])
    res["exports"], res["paired_ratio_medians_per_round"] = exports, paired
    ms, mins = res["ms"], res["min_ms"]
    torch_ms, torch_min = ms.get("ort-torch", {}), mins.get("ort-torch", {})
    lines = title + ["| row | onnxruntime, numpymnv2's export ms | onnxruntime, PyTorch's export ms | ratio "
                     "(target <= 1.1) | paired ratio | numpymnv2 model.fuse() ms | fuse / PyTorch's export | min ms: "
                     "numpymnv2's export / PyTorch's / fuse | ratio of mins |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        name = row[0]
        ours, fused, theirs = ms["ort-numpymnv2"][name], ms["numpymnv2-fused"][name], torch_ms.get(name)
        m_ours, m_fused, m_theirs = mins["ort-numpymnv2"][name], mins["numpymnv2-fused"][name], torch_min.get(name)
        pair = float(np.median(paired[name])) if name in paired else None
        lines.append(f"| {name} | {ours:.2f} | {_fmt(theirs)} | {_fmt(ours / theirs if theirs else None)} | "
                     f"{_fmt(pair)} | {fused:.2f} | {_fmt(fused / theirs if theirs else None)} | {m_ours:.2f} / {_fmt(m_theirs)} / "
                     f"{m_fused:.2f} | {_fmt(m_ours / m_theirs if m_theirs else None)} |")
    lines += ["", RATIO_NOTE + " (here numpymnv2's export in onnxruntime against PyTorch's export in onnxruntime).",
              "", "Paired ratio: both files in one process, run alternately (thread spinning off in both), the "
              "median over the rounds of each round's median ratio of neighbouring runs.", ""]
    for side, meta in exports.items():
        ops = ", ".join(f"{n} {op}" for op, n in meta["optimized_ops"].items())
        lines.append(f"- {side}: {meta['exporter']}, opset {meta['opset']}; largest difference from numpymnv2's "
                     f"logits (batch 2, 224px) {meta['max_rel_diff_to_numpymnv2']:.1e} of the largest logit; "
                     f"onnxruntime runs it as {ops}")
    ort_meta = res["meta"]["ort-numpymnv2"]
    lines += [f"- onnxruntime {ort_meta['onnxruntime']}, CPU provider, intra-op threads {ORT_THREADS}, all graph "
              f"optimisations; numpymnv2 threading {res['meta']['numpymnv2-fused'].get('threads')}",
              f"- load average at the end of this suite: {', '.join(f'{v:.2f}' for v in res['load_average_end'])}",
              ""]
    return lines, res


def _busy_loop_process():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    from numpymnv2._argtypes import path, positive_int
    parser.add_argument("--suite", choices=("ops", "model", "extra", "onnx", "all"), default="all",
                        help="which benchmarks to run (default: all)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="alternating rounds per side (default 3)")
    parser.add_argument("--reps", type=positive_int, default=5, help="timed repetitions per round (default 5)")
    parser.add_argument("--quick", action="store_true", help="first two model rows and fewer op shapes")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    parser.add_argument("--json", metavar="PATH", type=path, help="also write every measurement to this JSON file")


def run(args) -> int:
    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    missing = _missing_dependency()
    if missing:
        print(f"numpymnv2 bench: error: {missing}", file=sys.stderr)
        return 2
    sides = ("numpymnv2",) if args.no_torch or not _torch_available() else SIDES
    report = {"command": " ".join(sys.argv), "machine": platform.platform(), "cpus": os.cpu_count(),
              "load_average_start": os.getloadavg(), "env_openblas": {k: v for k, v in os.environ.items()
                                                                       if k.startswith("OPENBLAS")}}
    out = []
    quick = args.quick
    if args.suite in ("ops", "all"):
        spec = {"depthwise": DEPTHWISE_ROWS[:4] if quick else DEPTHWISE_ROWS, "bn": BN_ROWS[:3] if quick else BN_ROWS,
                "pointwise": POINTWISE_ROWS[:4] if quick else POINTWISE_ROWS, "reps": args.reps * 4, "warmup": 5,
                "peak": True}
        res = _rounds(sides, "ops", spec, args.rounds, log)
        m = res["meta"]["numpymnv2"]
        report["ops"] = res
        out += ["## Per-op", ""] + _op_table(res, sides, m.get("matmul_peak_gflops_1t"),
                                                 m.get("matmul_peak_gflops_2t")) + [""]
    if args.suite in ("model", "all"):
        rows = MODEL_ROWS[:2] if quick else MODEL_ROWS
        model_sides = sides + (("ort-model",) if _onnxruntime_available() and any(r[6] == "infer" for r in rows)
                               else ())
        res = _rounds(model_sides, "model", {"rows": rows, "reps": args.reps, "warmup": 3}, args.rounds, log)
        report["model"] = res
        out += ["## Whole model (float32; train = forward, loss, backward, SGD-momentum step)", ""]
        out += _model_table(res, sides) + [""]
    if args.suite in ("onnx", "all"):
        lines, report["onnx"] = _onnx_suite(args, log)
        out += lines
    if args.suite in ("extra", "all"):
        out += ["## JIT, memory, load", ""]
        row = MODEL_ROWS[0]
        with tempfile.TemporaryDirectory() as cache_dir:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
            for label in ("cold", "warm"):
                log(f"  first step, {label} Numba cache")
                res = _spawn_first_step(row, env)
                report[f"first_step_{label}"] = res
                out.append(f"- first train step ({row[0]}) in a fresh process, {label} Numba cache: "
                           f"{res['process_to_end_of_first_step_s']:.1f} s from process start "
                           f"({res['first_step_s']:.1f} s in the step itself)")
        for side in sides:
            log(f"  memory {side}")
            res = _spawn(side, "memory", {"rows": [row]})["meta"]
            report[f"memory_{side}"] = res
            out.append(f"- peak memory of training ({row[0]}, 3 steps), {side}: "
                       f"{res['step_peak_mb_over_baseline']:.0f} MB over the RSS of the process with the libraries "
                       f"imported, before the model is built (peak RSS {res['peak_rss_mb']:.0f} MB)")
        load_sides = [s for s in sides if s in ("numpymnv2", "torch-cl")]
        quiet = _rounds(tuple(load_sides), "model", {"rows": [row], "reps": args.reps, "warmup": 3}, 1, log)
        busy = _busy_loop_process()
        try:
            loaded = _rounds(tuple(load_sides), "model", {"rows": [row], "reps": args.reps, "warmup": 3}, 1, log)
        finally:
            busy.kill()
            busy.wait()
        report["load"] = {"quiet": quiet, "loaded": loaded}
        for side in load_sides:
            q, lo = quiet["ms"][side][row[0]], loaded["ms"][side][row[0]]
            out.append(f"- {side}, {row[0]}: {q:.1f} ms quiet, {lo:.1f} ms with a busy process on one core "
                       f"({lo / q:.2f}x)")
        out.append("")
    meta = report.get("ops", report.get("model", {})).get("meta", {}).get("numpymnv2", {})
    header = [f"# numpymnv2 bench ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
              f"- command: `{report['command']}`",
              f"- machine: {report['machine']}, {report['cpus']} CPUs, load average at start "
              f"{', '.join(f'{v:.2f}' for v in report['load_average_start'])}",
              f"- OPENBLAS_* in the environment: {report['env_openblas'] or 'none'}",
              f"- BLAS that ran (threadpoolctl): {meta.get('blas')}",
              f"- numpymnv2 threading: {meta.get('threads')}; allocator: {meta.get('malloc')}",
              f"- optimizer: {report.get('model', {}).get('meta', {}).get('numpymnv2', {}).get('optimizer', '-')}; "
              f"torch sides: {sides[1:] or 'not run'}",
              f"- rounds {args.rounds}, alternated; each side in its own process; medians",
              f"- {RATIO_NOTE}", ""]
    print("\n".join(header + out))
    if args.json:
        from numpymnv2._atomic import atomic_write_text
        atomic_write_text(args.json, json.dumps(report, indent=1, default=str))
    return 0


def _spawn_first_step(row, env) -> dict:
    spec = {"rows": [row], "t0": time.time()}
    cmd = [sys.executable, "-m", "numpymnv2.bench", "--worker", "numpymnv2", "--task", "first-step", "--spec",
           json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"first-step worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["meta"]


def _main_worker(argv) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True, choices=SIDES + ONNX_SIDES + ("ort-model",))
    p.add_argument("--task", required=True)
    p.add_argument("--spec", required=True)
    a = p.parse_args(argv)
    print(json.dumps(_worker(a.worker, a.task, json.loads(a.spec))))
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(_main_worker(sys.argv[1:]))
    parser = argparse.ArgumentParser(prog="python -m numpymnv2.bench")
    configure_parser(parser)
    sys.exit(run(parser.parse_args()))
