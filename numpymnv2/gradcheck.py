"""Finite-difference gradient checking, for users as much as for our tests.

A hand-written backward pass is checked against central differences of the forward pass. The scalar that is
differentiated is a fixed random projection of the output, ``L = sum(out * R)`` with ``R ~ N(0, 1)`` drawn from
the seed, so that every output element contributes and ``dL/dout = R`` is what the backward pass receives.
For one coordinate ``theta_i`` of an input or a parameter::

    numeric_i  = (L(theta + eps e_i) - L(theta - eps e_i)) / (2 eps)      (error O(eps^2))
               = sum(R * (out(theta + eps e_i) - out(theta - eps e_i))) / (2 eps)
    analytic_i = what backward(R) returned
    pass       if |analytic_i - numeric_i| <= atol + rtol |numeric_i|     (torch.autograd.gradcheck's rule)

The relative error reported for an array is normwise, ``max_i |analytic_i - numeric_i| / max_i |numeric_i|``:
it does not blow up at coordinates whose true gradient is zero, where a per-coordinate ratio would divide the
finite-difference round-off by nothing. The outputs are subtracted before they are projected (the second line
above): outputs that a coordinate does not touch then cancel exactly, and the round-off is that of the touched
outputs only, about ``u |out_j| / eps`` each (``u = 2.2e-16``, float64's machine epsilon), not ``u |L| / eps`` of
a sum over the whole output. For the same reason the denominator is at least
``floor = 1024 u max_j |out_j R_j| / eps`` (about ``2e-7 max_j |out_j R_j|`` with the default ``eps``), a thousand
times the round-off of one difference:
a gradient near or below what a central difference resolves (say ``1e-200`` after a tiny BatchNorm weight, or
``1e-16`` next to outputs of order 1) is judged on that scale, rather than reported with an error of ``1e+60`` or
of 100% when the difference quotient is pure round-off. A wrong gradient of ordinary size is unaffected. Checks
run in float64: in float32 a central difference has almost no significant digits left.

Kinks: a coordinate whose ``+-eps`` moves some ReLU6 input across 0 or 6 gets a central difference that mixes
the slopes of both sides. Where the central difference disagrees with the backward pass, the one-sided
differences ``(L(theta + eps e_i) - L(theta)) / eps`` and ``(L(theta) - L(theta - eps e_i)) / eps`` are taken
too; when they disagree with each other a kink lies within ``eps``, and the coordinate passes if the backward
pass matches the one on the side without it (the report counts these coordinates).

Two ways to call it::

    mn.gradcheck(module, x)                                # the module's input and all its parameters
    mn.gradcheck((F.depthwise_conv2d_forward, F.depthwise_conv2d_backward), (x, w), stride=2)

The command ``numpymnv2 gradcheck TARGET`` runs it on any operation, block or the whole network.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable, Sequence

import numpy as np

from numpymnv2.nn.module import Module


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` (with ``raise_exception=True``) when a gradient disagrees."""


@dataclasses.dataclass
class ArrayReport:
    """The comparison for one array: ``input``/``input<i>`` or a parameter's qualified name.

    ``max_rel_error`` is normwise (see the module docstring); ``worst_index`` is the coordinate with the largest
    absolute difference, where ``analytic`` (from backward) and ``numeric`` (central difference) are shown.
    """
    name: str
    shape: tuple
    checked: int              # coordinates compared
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple        # where max_rel_error occurred
    analytic: float           # the two values there
    numeric: float
    failures: int             # coordinates outside atol + rtol |numeric|
    at_kinks: int = 0         # coordinates within eps of a kink, judged by a one-sided difference


@dataclasses.dataclass
class GradcheckResult:
    """Outcome of :func:`gradcheck`: one :class:`ArrayReport` per checked array.

    ``roundoff`` is the round-off of one central difference, ``u max_j |out_j R_j| / eps``: a derivative of size
    ``g`` is resolved to a relative accuracy of about ``roundoff / g`` at best, so a relative error below ``r`` can
    only be asked of gradients larger than ``roundoff / r``.
    """
    reports: list
    eps: float
    atol: float
    rtol: float
    roundoff: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.failures == 0 for r in self.reports)

    @property
    def worst(self) -> ArrayReport:
        return max(self.reports, key=lambda r: r.max_rel_error)

    @property
    def max_rel_error(self) -> float:
        return max((r.max_rel_error for r in self.reports), default=0.0)

    @property
    def checked(self) -> int:
        return sum(r.checked for r in self.reports)

    @property
    def at_kinks(self) -> int:
        return sum(r.at_kinks for r in self.reports)

    def __str__(self) -> str:
        width = max([len(r.name) for r in self.reports] + [5])
        lines = [f"{'array':<{width}}  {'shape':<18} {'checked':>7}  {'max abs err':>11}  {'max rel err':>11}  "
                 f"failures"]
        for r in self.reports:
            lines.append(f"{r.name:<{width}}  {str(r.shape):<18} {r.checked:>7}  {r.max_abs_error:11.3e}  "
                         f"{r.max_rel_error:11.3e}  {r.failures}")
        w = self.worst if self.reports else None
        verdict = "PASSED" if self.passed else "FAILED"
        kinks = (f"; {self.at_kinks} within eps of a kink, judged by a one-sided difference"
                 if self.at_kinks else "")
        lines.append(f"{verdict}: {self.checked} coordinates, eps={self.eps:g}, atol={self.atol:g}, "
                     f"rtol={self.rtol:g}{kinks}")
        if w is not None:
            lines.append(f"worst relative error {w.max_rel_error:.3e} at {w.name}{list(w.worst_index)}: "
                         f"analytic {w.analytic:.12g}, numeric {w.numeric:.12g}")
        return "\n".join(lines)


def _pick(size: int, max_coords: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_coords is None or size <= max_coords:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_coords, replace=False))


def _roundoff(out: np.ndarray, R: np.ndarray, eps: float) -> float:
    """The round-off of one central difference of ``sum(out * R)``, ``u max_j |out_j R_j| / eps``."""
    return np.finfo(np.float64).eps * float(np.max(np.abs(out * R), initial=0.0)) / eps


def _compare(name, array, analytic, output, R, idx, eps, atol, rtol, floor=0.0) -> ArrayReport:
    """Central differences of ``sum(output() * R)`` at the flat coordinates ``idx`` of ``array`` (perturbed in
    place and restored).

    A coordinate within ``eps`` of a kink (a ReLU6 input that the perturbation moves across 0 or 6) has a central
    difference that mixes the slopes of both sides. Where the central difference disagrees with ``analytic``,
    the two one-sided differences are taken as well: if they disagree with each other (beyond the same
    tolerance) the coordinate is at such a kink, and it passes when ``analytic`` matches the one on the side
    without it. A wrong gradient away from kinks still fails: there both one-sided differences agree with the
    central one.
    """
    flat = array.reshape(-1)
    if not np.shares_memory(flat, array):
        raise ValueError(f"gradcheck: {name} must be a contiguous array")
    analytic = np.asarray(analytic, dtype=np.float64)
    if analytic.shape != array.shape:
        raise ValueError(f"gradcheck: the backward pass returned a gradient of shape {analytic.shape} for {name}, "
                         f"which has shape {array.shape}")
    analytic = analytic.reshape(-1)
    a = analytic[idx]
    numeric = np.empty(len(idx))
    base = None
    at_kinks = 0

    def within(value, reference):
        return abs(value - reference) <= atol + rtol * abs(reference)

    for k, i in enumerate(idx):
        saved = flat[i]
        flat[i] = saved + eps
        plus = output()
        flat[i] = saved - eps
        minus = output()
        flat[i] = saved
        numeric[k] = np.sum((plus - minus) * R) / (2 * eps)
        if not within(a[k], numeric[k]) and np.isfinite(a[k]):
            base = output() if base is None else base
            forward = np.sum((plus - base) * R) / eps
            backward = np.sum((base - minus) * R) / eps
            if not within(forward, backward) and not within(backward, forward):
                side = min((forward, backward), key=lambda v: abs(a[k] - v))
                if within(a[k], side):
                    numeric[k] = side
                    at_kinks += 1
    abs_err = np.abs(a - numeric)
    rel_err = abs_err / max(float(np.abs(numeric).max(initial=0.0)), floor, 1e-300)
    # "not within tolerance" rather than "beyond it": a NaN in either gradient is a failure, never a pass
    failures = int(np.count_nonzero(~(abs_err <= atol + rtol * np.abs(numeric))))
    k = int(np.argmax(rel_err)) if len(idx) else 0
    worst = tuple(int(v) for v in np.unravel_index(idx[k], array.shape)) if len(idx) else ()
    return ArrayReport(name, tuple(array.shape), len(idx), float(abs_err.max(initial=0.0)),
                       float(rel_err.max(initial=0.0)), worst, float(a[k]) if len(idx) else 0.0,
                       float(numeric[k]) if len(idx) else 0.0, failures, at_kinks)


def gradcheck(target, inputs, *, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              max_coords: int | None = None, params: bool | Sequence[str] = True, seed: int = 0,
              raise_exception: bool = False, **kwargs) -> GradcheckResult:
    """Compare a backward pass with central finite differences of its forward pass.

    Parameters
    ----------
    target : Module, or (forward, backward) pair
        A :class:`~numpymnv2.nn.Module` (its input and parameters are checked), or two functions with the
        package's operation contract: ``out, cache = forward(*inputs, **kwargs)`` and
        ``grads = backward(dout, cache)``, where ``grads`` (an array or a tuple) starts with the gradients of
        ``inputs`` in order (None for an input that has no gradient).
    inputs : ndarray or sequence of ndarray
        For a module, its input ``x``. All arrays must be float64.
    eps, atol, rtol : float
        Step and tolerances, the defaults of ``torch.autograd.gradcheck`` for float64.
    max_coords : int, optional
        Check at most this many randomly chosen coordinates of each array (all of them by default).
    params : bool or sequence of str
        For a module: check all parameters (True), none (False), or those named.
    seed : int
        Seeds the projection ``R`` and the choice of coordinates.
    raise_exception : bool
        Raise :class:`GradcheckError` with the report when any coordinate fails.
    **kwargs
        Passed to ``forward`` (hyper-parameters such as ``stride``).

    Returns
    -------
    GradcheckResult
        ``.passed``, ``.max_rel_error``, ``.worst``, and a printable per-array table.
    """
    eps = _real(eps, "eps", positive=True)
    atol = _real(atol, "atol")
    rtol = _real(rtol, "rtol")
    if max_coords is not None:
        if isinstance(max_coords, (bool, np.bool_)) or not isinstance(max_coords, (int, np.integer)):
            raise TypeError(f"gradcheck: max_coords must be an integer or None, got {max_coords!r}")
        if max_coords < 1:
            raise ValueError(f"gradcheck: max_coords must be at least 1 (or None for every coordinate), "
                             f"got {max_coords}")
    if not isinstance(params, (bool, np.bool_)) and (isinstance(params, str) or not _is_name_sequence(params)):
        raise TypeError(f"gradcheck: params must be True, False or a sequence of parameter names, got {params!r}")
    rng = np.random.default_rng(seed)
    if isinstance(target, Module):
        reports, roundoff = _check_module(target, inputs, eps, atol, rtol, max_coords, params, rng)
    elif isinstance(target, tuple) and len(target) == 2 and all(callable(f) for f in target):
        reports, roundoff = _check_function(target[0], target[1], inputs, kwargs, eps, atol, rtol, max_coords,
                                            rng)
    else:
        raise TypeError(f"gradcheck: target must be a Module or a (forward, backward) pair of functions, got "
                        f"{type(target).__name__}")
    if not reports:
        raise ValueError("gradcheck: nothing to check (the backward pass returned no gradient for any array "
                         "input)")
    result = GradcheckResult(reports, eps, atol, rtol, roundoff)
    if raise_exception and not result.passed:
        raise GradcheckError("gradient check failed:\n" + str(result))
    return result


def _real(value, name: str, positive: bool = False) -> float:
    """A finite real number (> 0 if ``positive``, else >= 0): a NaN tolerance would pass every comparison."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"gradcheck: {name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or (value <= 0 if positive else value < 0):
        raise ValueError(f"gradcheck: {name} must be a finite number {'> 0' if positive else '>= 0'}, "
                         f"got {value}")
    return value


def _is_name_sequence(params) -> bool:
    try:
        return all(isinstance(p, str) for p in params)
    except TypeError:
        return False


def _require_float64(array, name):
    if not isinstance(array, np.ndarray) or array.dtype != np.float64:
        raise TypeError(f"gradcheck: {name} must be a float64 ndarray (finite differences need double "
                        f"precision), got {getattr(array, 'dtype', type(array).__name__)}")


def _check_function(forward: Callable, backward: Callable, inputs, kwargs, eps, atol, rtol, max_coords, rng):
    inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    inputs = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in inputs]
    for i, a in enumerate(inputs):
        if isinstance(a, np.ndarray):
            _require_float64(a, f"input {i}")
    out, cache = forward(*inputs, **kwargs)
    out = np.asarray(out)
    R = rng.standard_normal(out.shape)
    grads = backward(R if out.ndim else np.float64(R), cache)
    grads = grads if isinstance(grads, tuple) else (grads,)

    def output():
        o, _ = forward(*inputs, **kwargs)
        return np.asarray(o, dtype=np.float64)

    if not np.array_equal(output(), out):
        raise ValueError("gradcheck: the forward pass is not deterministic (two calls at the same point "
                         "differ); seed its randomness inside forward")
    roundoff = _roundoff(out, R, eps)
    floor = 1024 * roundoff
    reports = []
    for i, a in enumerate(inputs):
        if isinstance(a, np.ndarray) and i < len(grads) and grads[i] is not None:
            reports.append(_compare(f"input{i}", a, grads[i], output, R, _pick(a.size, max_coords, rng),
                                    eps, atol, rtol, floor))
    return reports, roundoff


def _check_module(module: Module, x, eps, atol, rtol, max_coords, params, rng):
    _require_float64(x, "the module's input")
    named = list(module.named_parameters())
    for name, p in named:
        _require_float64(p.data, f"parameter {name} (build the module with dtype='float64')")
    if params is True:
        chosen = named
    elif params is False:
        chosen = []
    else:
        wanted = list(params)
        unknown = sorted(set(wanted) - {n for n, _ in named})
        if unknown:
            raise ValueError(f"gradcheck: {module.label} has no parameter(s) {unknown}")
        chosen = [(n, p) for n, p in named if n in wanted]
    x = np.array(x, copy=True)
    saved_state = module.state_dict()
    saved_grads = [p.grad.copy() for _, p in named]
    # random generators (Dropout's) are state too: a check must not shift the masks of later training steps
    generators = [m.generator for m in module.modules()
                  if isinstance(getattr(m, "generator", None), np.random.Generator)]
    saved_generators = [g.bit_generator.state for g in generators]
    try:
        module.zero_grad()
        out = module(x)
        R = rng.standard_normal(out.shape)
        dx = module.backward(R)

        def output():
            return np.asarray(module(x), dtype=np.float64)

        if not np.array_equal(output(), out):
            raise ValueError(f"gradcheck: {module.label} is not deterministic in this mode (dropout in "
                             f"training mode?); use eval() or dropout=0")
        roundoff = _roundoff(out, R, eps)
        floor = 1024 * roundoff
        reports = [_compare("input", x, dx, output, R, _pick(x.size, max_coords, rng), eps, atol, rtol, floor)]
        for name, p in chosen:
            reports.append(_compare(name, p.data, p.grad, output, R, _pick(p.data.size, max_coords, rng),
                                    eps, atol, rtol, floor))
    finally:
        module.load_state_dict(saved_state)
        for (_, p), g in zip(named, saved_grads):
            p.grad[...] = g
        for gen, state in zip(generators, saved_generators):
            gen.bit_generator.state = state
    return reports, roundoff


# ---------------------------------------------------------------------------------------------------------
# the command line: `numpymnv2 gradcheck TARGET`


def _shape(text: str) -> tuple:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a shape like 2,8,8,4, got {text!r}") from exc
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected positive dimensions, got {text!r}")
    return dims


def _targets(backend: str):
    """name -> function(args, rng) returning (target, inputs, kwargs) for gradcheck.

    Operations are the ``backend`` rows of :mod:`numpymnv2.ops` (cross-entropy runs on NumPy on both); blocks
    and the network run on whichever backend is active, so call this under ``use_backend(backend)``.
    """
    from numpymnv2 import functional as F
    from numpymnv2 import ops as O

    def pair(op):
        impl = op.on(backend)
        return impl.forward, impl.backward

    def nhwc(args, rng):
        if len(args.shape) != 4:
            raise ValueError(f"gradcheck: --shape must be N,H,W,C for this target, got {args.shape}")
        return rng.uniform(-1, 1, args.shape)

    def conv2d(args, rng):
        x = nhwc(args, rng)
        w = rng.standard_normal((args.out_channels, args.kernel, args.kernel, x.shape[-1])) * 0.3
        return pair(O.CONV2D), (x, w), dict(stride=args.stride, padding=args.padding)

    def depthwise(args, rng):
        x = nhwc(args, rng)
        w = rng.standard_normal((args.kernel, args.kernel, x.shape[-1])) * 0.3
        return pair(O.DEPTHWISE_CONV2D), (x, w), dict(stride=args.stride, padding=args.padding)

    def pointwise(args, rng):
        x = nhwc(args, rng)
        T = rng.standard_normal((args.out_channels, x.shape[-1])) * 0.3
        return pair(O.POINTWISE_CONV2D), (x, T), {}

    def batchnorm(args, rng):
        x = nhwc(args, rng)
        C = x.shape[-1]
        gamma, beta = rng.uniform(0.5, 1.5, C), rng.uniform(-0.5, 0.5, C)
        stats = (rng.uniform(-0.2, 0.2, C), rng.uniform(0.5, 1.5, C))

        def forward(x, gamma, beta, activation=None):
            # fresh copies: the running statistics must not drift between the finite-difference calls
            return bn_forward(x, gamma, beta, stats[0].copy(), stats[1].copy(), not args.eval,
                              activation=activation)

        bn_forward, bn_backward = pair(O.BATCHNORM_ACT)
        return (forward, bn_backward), (x, gamma, beta), dict(activation=args.activation)

    def activation(fwd, bwd):
        def make(args, rng):
            x = nhwc(args, rng) * 4 + 2   # values around the interesting range of ReLU6
            return (fwd, bwd), (x,), {}
        return make

    def pool(args, rng):
        return pair(O.GLOBAL_AVG_POOL), (nhwc(args, rng),), {}

    def linear(args, rng):
        if len(args.shape) != 2:
            raise ValueError(f"gradcheck: --shape must be N,D for linear, got {args.shape}")
        x = rng.uniform(-1, 1, args.shape)
        w = rng.standard_normal((args.out_channels, x.shape[1])) * 0.3
        b = rng.standard_normal(args.out_channels)
        return pair(O.LINEAR), (x, w, b), {}

    def dropout(args, rng):
        dropout_forward, dropout_backward = pair(O.DROPOUT)

        def forward(x, p):
            return dropout_forward(x, p, True, np.random.default_rng(args.seed))
        return (forward, dropout_backward), (nhwc(args, rng),), dict(p=args.p)

    def cross_entropy(args, rng):
        if len(args.shape) != 2:
            raise ValueError(f"gradcheck: --shape must be N,K for cross-entropy, got {args.shape}")
        labels = rng.integers(0, args.shape[1], args.shape[0])

        def forward(logits):
            loss, dlogits = F.softmax_cross_entropy(logits, labels, args.label_smoothing)
            return loss, dlogits

        return (forward, lambda dloss, dlogits: dloss * dlogits), (rng.standard_normal(args.shape),), {}

    def block(args, rng):
        from numpymnv2.models import InvertedResidual
        x = nhwc(args, rng)
        m = InvertedResidual(x.shape[-1], args.out_channels, args.stride, args.expand_ratio,
                             seed=args.seed, dtype="float64")
        _randomize_bn(m, rng)
        return (m.eval() if args.eval else m.train()), x, {}

    def network(args, rng):
        from numpymnv2.models import MobileNetV2
        from numpymnv2.models.mobilenetv2 import arch_kwargs
        m = MobileNetV2(num_classes=args.out_channels, width_mult=args.width, dropout=0.0, seed=args.seed,
                        dtype="float64", **arch_kwargs(args.arch))
        _randomize_bn(m, rng)
        x = rng.uniform(-1, 1, (args.shape[0], args.resolution, args.resolution, 3))
        return (m.eval() if args.eval else m.train()), x, {}

    return {
        "conv2d": conv2d, "depthwise": depthwise, "pointwise": pointwise, "batchnorm": batchnorm,
        "relu6": activation(*pair(O.RELU6)), "relu": activation(*pair(O.RELU)),
        "global-avg-pool": pool, "linear": linear, "dropout": dropout, "cross-entropy": cross_entropy,
        "inverted-residual": block, "mobilenetv2": network,
    }


def _randomize_bn(module: Module, rng: np.random.Generator) -> None:
    """Non-trivial BatchNorm parameters and statistics, so the check exercises every term."""
    for name, p in module.named_parameters():
        if p.data.ndim == 1:
            p.data[...] = rng.uniform(0.5, 1.5, p.data.shape) if name.endswith("weight") else \
                rng.uniform(-0.3, 0.3, p.data.shape)
    for name, b in module.named_buffers():
        if name.endswith("running_mean"):
            b[...] = rng.uniform(-0.2, 0.2, b.shape)
        elif name.endswith("running_var"):
            b[...] = rng.uniform(0.5, 1.5, b.shape)


def configure_parser(p: argparse.ArgumentParser) -> None:
    from numpymnv2 import _argtypes as T
    p.add_argument("target", choices=sorted(_TARGET_NAMES), help="operation, block or network to check")
    p.add_argument("--shape", type=_shape, default=(2, 7, 7, 4),
                   help="input shape: N,H,W,C for image ops and blocks, N,D for linear/cross-entropy, "
                        "N for mobilenetv2 (default 2,7,7,4)")
    p.add_argument("--backend", choices=("fast", "reference"), default="fast",
                   help="which implementation to check: fast (the Numba kernels, where an operation has one) or "
                        "reference (the readable NumPy code); applies to every target (default: fast)")
    p.add_argument("--out-channels", type=T.positive_int, default=6, help="output channels / features / classes")
    p.add_argument("--kernel", type=T.positive_int, default=3, help="convolution kernel size (default 3)")
    p.add_argument("--stride", type=T.positive_int, default=1, help="convolution stride (default 1)")
    p.add_argument("--padding", type=T.nonnegative_int, default=1, help="zero padding on each side (default 1)")
    p.add_argument("--expand-ratio", type=T.positive_int, default=6, help="inverted-residual: t")
    p.add_argument("--activation", choices=["relu6", "relu"], default=None, help="batchnorm: fused activation")
    p.add_argument("--eval", action="store_true", help="evaluation mode (running statistics)")
    p.add_argument("--p", type=T.fraction, default=0.2, help="dropout probability")
    p.add_argument("--label-smoothing", type=T.fraction, default=0.0, help="cross-entropy: label smoothing")
    p.add_argument("--width", type=T.positive_float, default=0.35, help="mobilenetv2: width multiplier")
    p.add_argument("--resolution", type=T.resolution, default=32, help="mobilenetv2: input height and width")
    T.add_arch_argument(p, "small", "small, as numpymnv2 train; mobilenetv2 only")
    T.add_deprecated_preset_argument(p)
    p.add_argument("--params", type=T.positive_int, default=None,
                   help="check this many randomly chosen parameter arrays (default: all; 8 for mobilenetv2)")
    p.add_argument("--max-coords", type=T.nonnegative_int, default=None,
                   help="coordinates checked per array (0: all; default 20, 3 for mobilenetv2)")
    p.add_argument("--eps", type=T.positive_float, default=None,
                   help="finite-difference step (default 1e-6; 1e-9 for mobilenetv2, where a larger step moves "
                        "some of its many ReLU6 inputs across a kink)")
    p.add_argument("--atol", type=T.nonnegative_float, default=None,
                   help="absolute tolerance (default 1e-5; for mobilenetv2 1e-6 times its largest gradient)")
    p.add_argument("--rtol", type=T.nonnegative_float, default=1e-3,
                   help="relative tolerance: a coordinate passes if |analytic - numeric| <= atol + rtol |numeric| "
                        "(default 1e-3)")
    p.add_argument("--seed", type=T.nonnegative_int, default=0,
                   help="seeds the inputs, the weights, the projection R and the coordinates checked (default 0)")


_TARGET_NAMES = ("conv2d", "depthwise", "pointwise", "batchnorm", "relu6", "relu", "global-avg-pool", "linear",
                 "dropout", "cross-entropy", "inverted-residual", "mobilenetv2")


def run(args) -> int:
    from numpymnv2.backend import use_backend
    with use_backend(args.backend):
        result = _run_check(args)
    print(f"gradcheck {args.target} (backend: {args.backend})")
    print(result)
    if result.passed:
        return 0
    # the table is the result (stdout); the one line a script or a log reader looks for goes to stderr
    failures = sum(r.failures for r in result.reports)
    print(f"numpymnv2 gradcheck: {args.target}: {failures} of {result.checked} coordinates disagree with the "
          f"finite differences (worst relative error {result.max_rel_error:.3e}, eps={result.eps:g})",
          file=sys.stderr)
    return 1


def _check_op_fits(args) -> None:
    """Refuse an operation's ``--shape`` that needs more memory than the machine has, before any array exists.

    In float64, the check holds the input, the output, the projection R and the gradients, and a convolution its
    patches (``K * K`` times the input): about ``8 (K^2 + 8)`` bytes per input element plus 64 per output one.
    """
    from numpymnv2._memory import check_memory
    n_in = int(np.prod(args.shape, dtype=object))
    n_out = int(np.prod(args.shape[:-1], dtype=object)) * max(args.out_channels, args.shape[-1])
    need = 8 * n_in * (args.kernel ** 2 + 8) + 64 * n_out
    check_memory(need, f"gradcheck {args.target} on an input of shape {args.shape}", "use a smaller --shape")


def _run_check(args) -> GradcheckResult:
    rng = np.random.default_rng(args.seed)
    network = args.target == "mobilenetv2"
    if network:
        from types import SimpleNamespace

        from numpymnv2.models.footprint import check_batch_fits, check_model_fits
        from numpymnv2.models.mobilenetv2 import arch_kwargs
        config = dict(num_classes=args.out_channels, width_mult=args.width, dtype="float64",
                      **arch_kwargs(args.arch))
        check_model_fits(config)        # the weights, then the activations of the batch, before either exists
        check_batch_fits(SimpleNamespace(config=config), (args.shape[0], args.resolution, args.resolution, 3),
                         training=True, advice="use a smaller batch (the first number of --shape) or --resolution")
    else:
        _check_op_fits(args)
    target, inputs, kwargs = _targets(args.backend)[args.target](args, rng)
    eps = args.eps if args.eps is not None else (1e-9 if network else 1e-6)
    max_coords = args.max_coords if args.max_coords is not None else (3 if network else 20)
    n_params = args.params if args.params is not None else (8 if network else None)
    params = True
    if isinstance(target, Module):
        names = [n for n, _ in target.named_parameters()]
        if n_params is not None and n_params < len(names):
            params = sorted(rng.choice(names, size=n_params, replace=False).tolist())
    atol = args.atol
    if atol is None:
        atol = 1e-5
        if network:
            # the round-off of a difference grows with the gradients, so the tolerance follows their scale
            target.backward(rng.standard_normal(target(inputs).shape))
            atol = 1e-6 * max(float(np.abs(p.grad).max()) for p in target.parameters())
            target.zero_grad()
    return gradcheck(target, inputs, eps=eps, atol=atol, rtol=args.rtol, max_coords=max_coords or None,
                     params=params, seed=args.seed, **kwargs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m numpymnv2.gradcheck")
    configure_parser(parser)
    sys.exit(run(parser.parse_args()))
