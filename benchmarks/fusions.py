"""Candidate fusions of issue 11 measured at the kernel level, each against what it would replace.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE NUMPYMNV2_BLAS_THREADS=1 python benchmarks/fusions.py [--reps 40]

Every kernel runs on its serial copy and one BLAS thread, and the clock is the calling thread's CPU time: on a
shared machine that is far steadier than wall time, and it is the work a fusion saves. The two variants of each
row run alternately in one process; the figures are medians. Rows, float32, at MobileNetV2's layer shapes
(width 1.0; batch 1 at 224x224 for inference, batch 8 at 224x224 and 32 at 32x32 for training):

- ``dw+bias+act``: the folded depthwise step of ``model.fuse()``,
  :func:`numpymnv2.kernels.inference.depthwise_bias_act` (bias and ReLU6 applied to each output row while it is
  in cache) against the depthwise forward followed by the separate pass
  :func:`~numpymnv2.kernels.inference.bias_act`. Kept: ``FoldedMobileNetV2`` runs it.
- ``pw numba``: a pointwise product with bias and ReLU6 in its epilogue as a Numba loop (four pixels per pass,
  the channel loop innermost) against BLAS (``np.matmul`` into a buffer) followed by ``bias_act``. Not kept:
  BLAS plus the pass was faster at every shape.
- ``dw+bn sums``: the training forward's BatchNorm statistics (the shifted per-channel sums of
  :mod:`numpymnv2.kernels.batchnorm`) summed by the depthwise forward kernel as it writes each row, against the
  depthwise forward followed by the sums pass. Not kept: see ``benchmarks/README.md`` for the figures.
"""
import argparse
import time

import numpy as np
from numba import njit

from numpymnv2.kernels import _launch
from numpymnv2.kernels import batchnorm as fast_batchnorm
from numpymnv2.kernels import depthwise as fast_depthwise
from numpymnv2.kernels import inference as fast_inference
from numpymnv2.kernels._launch import per_thread_sums

INFER_DEPTHWISE = [(1, 112, 112, 32, 1), (1, 112, 112, 96, 2), (1, 56, 56, 144, 1), (1, 56, 56, 144, 2),
                   (1, 28, 28, 192, 1), (1, 28, 28, 192, 2), (1, 14, 14, 384, 1), (1, 14, 14, 576, 2),
                   (1, 7, 7, 960, 1)]
# (pixels, C_in, C_out) of the pointwise products at batch 1, 224x224
INFER_POINTWISE = [(12544, 16, 96), (3136, 24, 144), (3136, 144, 24), (784, 32, 192), (196, 64, 384),
                   (196, 576, 96), (49, 160, 960), (49, 960, 320)]
TRAIN_DEPTHWISE = [(8, 112, 112, 32, 1), (8, 112, 112, 96, 2), (8, 56, 56, 144, 1), (8, 28, 28, 192, 1),
                   (8, 14, 14, 384, 1), (8, 7, 7, 960, 1), (32, 32, 32, 32, 1), (32, 32, 32, 96, 2),
                   (32, 16, 16, 144, 1), (32, 8, 8, 192, 1), (32, 4, 4, 384, 1)]


@njit(fastmath={"contract"})
def _pointwise_bias_relu6(x, T_t, bias, out):
    """``out = min(max(x @ T_t + bias, 0), 6)``, four rows per pass over ``T_t``, each row of ``out`` built up in
    place (the channel loop innermost and contiguous)."""
    M, K = x.shape
    zero, six = out.dtype.type(0), out.dtype.type(6)
    for m0 in range(0, M, 4):
        m1 = min(M, m0 + 4)
        for m in range(m0, m1):
            out[m, :] = bias
        for k in range(K):
            for m in range(m0, m1):
                a = x[m, k]
                for n in range(out.shape[1]):
                    out[m, n] += a * T_t[k, n]
        for m in range(m0, m1):
            for n in range(out.shape[1]):
                out[m, n] = min(max(out[m, n], zero), six)


@njit(inline="always")
def _depthwise_sums_row(inputs, r, acc):
    """Output row ``r`` of the depthwise forward, then ``acc[0, c] += sum d``, ``acc[1, c] += sum d^2`` over
    the row just written, ``d = out - shift``."""
    x, w, s, p, shift, out = inputs
    fast_depthwise._forward_row((x, w, s, p, out), r)
    H_out = out.shape[1]
    row = out[r // H_out, r % H_out]
    for j in range(row.shape[0]):
        for c in range(row.shape[1]):
            d = row[j, c] - shift[c]
            acc[0, c] += d
            acc[1, c] += d * d


_depthwise_sums = per_thread_sums(_depthwise_sums_row, fastmath={"contract"})


def _pair(before, after, reps):
    """Medians (ms of thread CPU time) of ``before`` and ``after`` run alternately."""
    for _ in range(3):
        before(), after()
    times = ([], [])
    for _ in range(reps):
        for fn, out in zip((before, after), times):
            t = time.thread_time()
            fn()
            out.append(time.thread_time() - t)
    return float(np.median(times[0])) * 1e3, float(np.median(times[1])) * 1e3


def _report(label, rows):
    before, after = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"\n{label}\n| shape | before ms | fused ms | ratio |\n|---|---|---|---|")
    for name, b, a in rows:
        print(f"| {name} | {b:.3f} | {a:.3f} | {a / b:.2f} |")
    print(f"| all | {before:.3f} | {after:.3f} | {after / before:.2f} |")


def depthwise_bias_act_rows(rng, reps):
    rows = []
    for N, H, W, C, s in INFER_DEPTHWISE:
        x = rng.standard_normal((N, H, W, C), dtype=np.float32)
        w, bias = rng.standard_normal((3, 3, C), dtype=np.float32), rng.standard_normal(C, dtype=np.float32)
        out = fast_inference.depthwise_bias_act(x, w, s, 1, bias, "relu6")

        def separate():
            y, _ = fast_depthwise.depthwise_conv2d_forward(x, w, s, 1)
            fast_inference.bias_act(y, bias, "relu6")
        rows.append((f"{N}x{H}x{W}x{C} s{s}",) + _pair(
            separate, lambda: fast_inference.depthwise_bias_act(x, w, s, 1, bias, "relu6", out=out), reps))
    return rows


def pointwise_rows(rng, reps):
    rows = []
    for M, K, N in INFER_POINTWISE:
        x = rng.standard_normal((M, K), dtype=np.float32)
        T_t = rng.standard_normal((K, N), dtype=np.float32) / np.sqrt(K)
        bias = rng.standard_normal(N, dtype=np.float32)
        out, out_numba = np.empty((M, N), dtype=np.float32), np.empty((M, N), dtype=np.float32)

        def blas():
            np.matmul(x, T_t, out=out)
            fast_inference.bias_act(out, bias, "relu6")
        blas(), _pointwise_bias_relu6(x, T_t, bias, out_numba)
        np.testing.assert_allclose(out_numba, out, rtol=0, atol=1e-4)
        rows.append((f"{M}x{K}->{N}",) + _pair(blas, lambda: _pointwise_bias_relu6(x, T_t, bias, out_numba), reps))
    return rows


def depthwise_sums_rows(rng, reps):
    rows = []
    for N, H, W, C, s in TRAIN_DEPTHWISE:
        x = rng.standard_normal((N, H, W, C), dtype=np.float32)
        w = rng.standard_normal((3, 3, C), dtype=np.float32)
        shift = x[0, 0, 0].copy()
        H_out, W_out = (H - 1) // s + 1, (W - 1) // s + 1

        def separate():
            y, _ = fast_depthwise.depthwise_conv2d_forward(x, w, s, 1)
            return fast_batchnorm._shifted_sums(y.size, N * H_out, (y, shift), (2, C))

        def fused():
            y = np.empty((N, H_out, W_out, C), dtype=np.float32)
            return _depthwise_sums(y.size * 9, N * H_out, (x, w, s, 1, shift, y), (2, C))
        np.testing.assert_allclose(fused(), separate(), rtol=1e-5, atol=1e-2)
        rows.append((f"{N}x{H}x{W}x{C} s{s}",) + _pair(separate, fused, max(5, reps // (1 + N * H * W * C // 10**6))))
    return rows


def main():
    parser = argparse.ArgumentParser(prog="python benchmarks/fusions.py")
    parser.add_argument("--reps", type=int, default=40)
    args = parser.parse_args()
    _launch.PARALLEL_MIN_WORK = 1 << 62          # every kernel on its serial copy, in this thread
    rng = np.random.default_rng(0)
    _report("inference: depthwise + bias + ReLU6 in one kernel (before: depthwise forward, then bias_act)",
            depthwise_bias_act_rows(rng, args.reps))
    _report("inference: pointwise product + bias + ReLU6 as a Numba loop (before: BLAS, then bias_act)",
            pointwise_rows(rng, args.reps))
    _report("training: BatchNorm sums in the depthwise forward kernel (before: depthwise forward, then the sums "
            "pass)", depthwise_sums_rows(rng, args.reps))


if __name__ == "__main__":
    main()
