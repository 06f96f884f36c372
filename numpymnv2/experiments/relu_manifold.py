r"""The ReLU manifold experiment (Sandler et al. 2018, Section 3.2 and Figure 1).

The argument
------------
A layer maps a pixel's features ``a`` in R^k to ``z = T a`` with ``T`` in R^{d x k} and then applies a
per-coordinate activation, ``f(z)``. If the features of all pixels lie on a low-dimensional manifold (here a
2-D spiral, ``k = 2``), does ``f(T a)`` still hold enough to get ``a`` back? The paper's Figure 1 answers with a
picture: embed the spiral with a random ``T``, apply ReLU, project back with the pseudo-inverse,

.. math::

    z = T a, \qquad \hat a = T^{+}\, \mathrm{ReLU}(T a), \qquad T^{+} = (T^\top T)^{-1} T^\top,

and look. With ``d = 2`` or ``3`` whole arms of the spiral collapse onto lines or onto the origin; with
``d = 15`` or ``30`` the spiral survives. This is the reason MobileNetV2 puts ReLU6 only in the *expanded*
(wide) layers and keeps the narrow bottleneck linear.

Why information is lost, exactly
--------------------------------
ReLU is linear on the units it lets through. Call ``S(a) = {j : (T a)_j > 0}`` the active units of point
``a``; then ``ReLU(T a)_S = T_S a`` and, if ``T_S`` has rank 2, ``a = T_S^+ ReLU(T a)_S``: the point is
recovered *exactly*, and ``S`` itself can be read off the output (the non-zero entries). With fewer than 2
active units the rank collapses and a direction of ``a`` is gone for every decoder. For a Gaussian ``T`` each
unit is active with probability 1/2 independently of the others (``t_j . a ~ N(0, |a|^2)`` is symmetric), so
for any point

.. math::

    P(|S| = 0) = 2^{-d}, \qquad P(|S| < 2) = (1 + d)\, 2^{-d},

which is 3/4, 1/2, 0.19, 5e-4 and 3e-8 for d = 2, 3, 5, 15, 30. ReLU6 is linear only on ``0 < z < 6``; its
active set excludes the clipped units too.

Why the paper's pseudo-inverse shrinks the spiral
-------------------------------------------------
``T^+`` inverts the linear map but ignores that ReLU zeroed about half the units. For large ``d``,
``T^T T / d -> I`` and ``T^T ReLU(T a) / d -> E[t ReLU(t . a)] = a / 2`` (``t (t . a)`` is even in
``t``, so the half-space ``t . a > 0`` carries half of ``E[t t^T] a = a``). Hence ``a_hat -> a / 2`` and the
relative error of the paper's reconstruction tends to **1/2**, not to 0, while its shape error
``|2 a_hat - a| / |a|`` falls like ``1 / sqrt(d)``. Figure 1's autoscaled axes hide the factor 2. We therefore
report both decoders: the paper's ``T^+`` (what Figure 1 draws) and the active-set decoder above (what the
output still determines).

Conventions follow the notation post (``z = T a``, columns); the code stores points as rows, so the whole
spiral goes through in one matrix product, ``Z = A @ T.T`` with ``A`` of shape ``(m, 2)``.

Command line: ``numpymnv2 relu-manifold --dims 2 3 5 15 30 --trials 10 --out runs/relu-manifold``.
"""
from __future__ import annotations

import argparse
import json
import operator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from numpymnv2._atomic import atomic_write_figure
from numpymnv2._memory import check_memory

__all__ = ["ACTIVATIONS", "METRICS", "ManifoldResult", "make_spiral", "activate", "linear_mask",
           "reconstruct_pinv", "reconstruct_active_set", "relative_error", "run_relu_manifold",
           "format_table", "pinv_scale", "relu_manifold_figure", "plot_relu_manifold", "configure_parser", "run"]

ACTIVATIONS = ("relu", "relu6", "identity")
SPIRAL_TURNS = 2.0

# metric name -> short label for the printed table, in printing order
METRICS = {
    "pinv_error": "pinv error",
    "pinv_recovered": "pinv recovered",
    "active_error": "active-set error",
    "active_recovered": "active-set recov.",
    "collapsed": "rank < 2",
    "dead": "all zero",
}


def make_spiral(n_points: int, turns: float = SPIRAL_TURNS, radius: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    r"""Points on an Archimedean spiral around the origin.

    .. math:: s_i = \frac{i + 1/2}{m}, \quad \theta_i = 2\pi \cdot \mathrm{turns} \cdot s_i, \quad
              a_i = \mathrm{radius} \cdot s_i\, (\cos\theta_i, \sin\theta_i), \qquad i = 0, \dots, m-1.

    The midpoint rule keeps every point off the origin (so relative errors are defined) and, over whole turns,
    spreads the directions evenly over the circle: ReLU's effect on a point depends only on its direction.

    Parameters
    ----------
    n_points : int
        Number of points ``m``.
    turns : float
        Number of turns around the origin.
    radius : float
        Distance of the last point from the origin.

    Returns
    -------
    A : ndarray, shape (m, 2)
        The points, one per row.
    s : ndarray, shape (m,)
        Position along the spiral in (0, 1), used to colour the plots.
    """
    s = (np.arange(n_points) + 0.5) / n_points
    theta = 2.0 * np.pi * turns * s
    A = radius * s[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return A, s


def activate(Z: np.ndarray, activation: str) -> np.ndarray:
    """Apply ``f`` elementwise: ``max(z, 0)``, ``min(max(z, 0), 6)`` or ``z``. ``Z`` has any shape."""
    if activation == "relu":
        return np.maximum(Z, 0.0)
    if activation == "relu6":
        return np.clip(Z, 0.0, 6.0)
    if activation == "identity":
        return Z.copy()
    raise ValueError(f"activation (--activation): expected one of {', '.join(ACTIVATIONS)}, got {activation!r}")


def linear_mask(Y: np.ndarray, activation: str) -> np.ndarray:
    """Which units are in the linear regime of ``f``, read from the output ``Y = f(Z)`` alone.

    ReLU passes ``y > 0`` unchanged; ReLU6 passes ``0 < y < 6`` (a unit clipped at 6 only says ``z >= 6``);
    the identity passes everything. With probability 1 no pre-activation is exactly 0 or 6, so reading the
    mask from ``Y`` instead of ``Z`` loses nothing: the decoder below needs only what the layer outputs.

    Parameters
    ----------
    Y : ndarray, shape (m, d)
    activation : str

    Returns
    -------
    mask : ndarray of bool, shape (m, d)
    """
    if activation == "relu":
        return Y > 0.0
    if activation == "relu6":
        return (Y > 0.0) & (Y < 6.0)
    if activation == "identity":
        return np.ones(Y.shape, dtype=bool)
    raise ValueError(f"activation (--activation): expected one of {', '.join(ACTIVATIONS)}, got {activation!r}")


def reconstruct_pinv(Y: np.ndarray, T: np.ndarray) -> np.ndarray:
    r"""The paper's reconstruction, :math:`\hat a = T^{+} y` for every point.

    Parameters
    ----------
    Y : ndarray, shape (m, d)
        Activations ``f(T a)``, one point per row.
    T : ndarray, shape (d, 2)
        The embedding.

    Returns
    -------
    A_hat : ndarray, shape (m, 2)
        ``Y @ pinv(T).T``, the row form of ``T^+ y``.
    """
    return Y @ np.linalg.pinv(T).T


def reconstruct_active_set(Y: np.ndarray, T: np.ndarray, mask: np.ndarray) -> np.ndarray:
    r"""Invert ``f`` where it is linear: :math:`\hat a = T_S^{+} y_S` with ``S`` the units in ``mask``.

    Per point, :math:`T_S^{+} y_S = (T_S^\top T_S)^{+} T_S^\top y_S`, and with ``D = diag(mask)``,
    :math:`T_S^\top T_S = T^\top D T` and :math:`T_S^\top y_S = T^\top D y`. All points are solved at once as a
    stack of 2 x 2 systems. If rank ``T_S`` = 2 the result is exact; with one active unit ``t`` it is the
    projection ``t (t . a) / |t|^2``; with none it is 0.

    Parameters
    ----------
    Y : ndarray, shape (m, d)
        Activations ``f(T a)``.
    T : ndarray, shape (d, 2)
    mask : ndarray of bool, shape (m, d)
        Units in the linear regime, from :func:`linear_mask`.

    Returns
    -------
    A_hat : ndarray, shape (m, 2)
    """
    D = mask.astype(T.dtype)
    G = np.einsum("nj,jk,jl->nkl", D, T, T)      # (m, 2, 2): T_S^T T_S per point
    b = (D * Y) @ T                               # (m, 2):    T_S^T y_S per point
    # pinv, not solve: G is singular exactly where information was lost, and pinv then gives the projection
    return np.einsum("nkl,nl->nk", np.linalg.pinv(G), b)


def relative_error(A_hat: np.ndarray, A: np.ndarray) -> np.ndarray:
    r"""Per-point relative error :math:`e_i = \|\hat a_i - a_i\| / \|a_i\|`; shapes (m, 2), (m, 2) -> (m,)."""
    return np.linalg.norm(A_hat - A, axis=1) / np.linalg.norm(A, axis=1)


@dataclass
class ManifoldResult:
    r"""What :func:`run_relu_manifold` computed.

    Attributes
    ----------
    params : dict
        Every input: dims, n_points, trials, activation, seed, tol, radius, turns.
    spiral : ndarray, shape (m, 2)
        The input points ``a_i``.
    position : ndarray, shape (m,)
        Position of each point along the spiral in (0, 1); the plots colour by it.
    pinv_examples, active_examples : dict[int, ndarray of shape (m, 2)]
        The first trial's reconstructions for each ``d``, by :math:`T^+` and by the active-set decoder.
    example_errors : dict[int, dict[str, float]]
        ``pinv_error`` and ``active_error`` of those example trials (the plot titles).
    per_trial : dict[str, ndarray of shape (len(dims), trials)]
        Each metric of :func:`run_relu_manifold` for each ``d`` (rows, in ``dims`` order) and trial.
    """
    params: dict
    spiral: np.ndarray
    position: np.ndarray
    pinv_examples: dict = field(default_factory=dict)
    active_examples: dict = field(default_factory=dict)
    example_errors: dict = field(default_factory=dict)
    per_trial: dict = field(default_factory=dict)

    @property
    def dims(self) -> list[int]:
        return list(self.params["dims"])

    def table(self) -> list[dict]:
        """One row per ``d``: ``{"d": d, "<metric>_mean": ..., "<metric>_std": ...}``, std over trials (ddof 0)."""
        rows = []
        for i, d in enumerate(self.dims):
            row = {"d": d}
            for name in METRICS:
                values = self.per_trial[name][i]
                row[f"{name}_mean"] = float(values.mean())
                row[f"{name}_std"] = float(values.std())
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {
            "experiment": "relu-manifold",
            "paper": "Sandler et al. 2018, MobileNetV2, arXiv:1801.04381, Section 3.2, Figure 1",
            "params": dict(self.params),
            "metrics": {
                "pinv_error": "mean over points of |a_hat - a| / |a|, a_hat = pinv(T) f(T a) (the paper's Figure 1)",
                "pinv_recovered": "fraction of points with |a_hat - a| / |a| < tol, a_hat = pinv(T) f(T a)",
                "active_error": "mean over points of |a_hat - a| / |a|, a_hat = pinv(T_S) f(T a)_S, "
                                "S = units in f's linear regime, read from the output",
                "active_recovered": "fraction of points with |a_hat - a| / |a| < tol for the active-set decoder",
                "collapsed": "fraction of points with fewer than 2 units in f's linear regime (rank T_S < 2)",
                "dead": "fraction of points with f(T a) = 0 (every unit zero)",
            },
            "table": self.table(),
            "per_trial": {name: values.tolist() for name, values in self.per_trial.items()},
        }

    def to_json(self, path=None) -> str:
        """The parameters, metric definitions, table and per-trial values as JSON; also written to ``path``."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from numpymnv2._atomic import atomic_write_text
            atomic_write_text(path, text + "\n")
        return text


RADIUS_RANGE = (1e-6, 1e6)


def _check_params(dims, n_points, trials, activation, tol, radius) -> list[int]:
    """Validate the inputs of :func:`run_relu_manifold`; errors name the option, what it expects and the value."""
    try:
        dims = [operator.index(d) for d in dims]
    except TypeError:
        raise ValueError(f"dims (--dims): expected a list of integers >= 1, got {dims!r}") from None
    if not dims or min(dims) < 1:
        raise ValueError(f"dims (--dims): expected a non-empty list of integers >= 1, got {dims}")
    if len(set(dims)) != len(dims):
        raise ValueError(f"dims (--dims): expected distinct values, got {dims}")
    if operator.index(n_points) < 10:
        raise ValueError(f"n_points (--points): expected an integer >= 10, got {n_points}")
    if operator.index(trials) < 1:
        raise ValueError(f"trials (--trials): expected an integer >= 1, got {trials}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation (--activation): expected one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol (--tol): expected a number > 0, got {tol}")
    if not (RADIUS_RANGE[0] <= radius <= RADIUS_RANGE[1]):      # also False for NaN
        # outside it the squared norms of the errors under- or overflow; relu6 clips everything from a few
        # hundred on, so nothing of interest lies beyond
        raise ValueError(f"radius (--radius): expected a number from {RADIUS_RANGE[0]:g} to {RADIUS_RANGE[1]:g}, "
                         f"got {radius}")
    # a trial at the largest d holds about six (m, d) float64 arrays at once (T a, f(T a), the mask, D, D y)
    m, d = operator.index(n_points), max(dims)
    check_memory(48 * m * d, f"the experiment at d = {d} with {m} points", "use smaller --dims or fewer --points")
    return dims


def run_relu_manifold(dims=(2, 3, 5, 15, 30), n_points: int = 1000, trials: int = 10, activation: str = "relu",
                      seed: int = 0, tol: float = 0.05, radius: float = 1.0) -> ManifoldResult:
    r"""Embed a 2-D spiral in R^d with random ``T``, apply ``f``, reconstruct, and measure what was lost.

    For each ``d`` and each of ``trials`` draws of ``T`` (shape ``(d, 2)``, standard normal entries, from
    ``numpy.random.default_rng([seed, d])`` so the numbers for one ``d`` do not depend on the other ``dims``),
    with ``y_i = f(T a_i)`` and per-point relative error :math:`e_i = \|\hat a_i - a_i\| / \|a_i\|`:

    - ``pinv_error`` :math:`= \frac1m \sum_i e_i` with :math:`\hat a_i = T^{+} y_i` (the paper's Figure 1).
      Tends to 1/2 for ReLU at large ``d`` (see the module docstring), and can be large for ``d = 2`` when
      ``T`` is ill-conditioned.
    - ``pinv_recovered`` :math:`= \frac1m \sum_i [e_i < \mathrm{tol}]` for the same :math:`\hat a_i`.
    - ``active_error`` and ``active_recovered``: the same two measures for the active-set decoder
      :math:`\hat a_i = T_{S_i}^{+} (y_i)_{S_i}`, ``S_i`` the units of point ``i`` in the linear regime of
      ``f`` (:func:`linear_mask`). It measures what the output still determines: zero error on every point
      with ``rank T_S = 2``.
    - ``collapsed`` :math:`= \frac1m \sum_i [|S_i| < 2]`: points whose active rows cannot span R^2 (for
      Gaussian ``T`` any two rows are independent almost surely, so this is ``rank T_S < 2``). Expected value
      for ReLU: :math:`(1 + d) 2^{-d}`.
    - ``dead`` :math:`= \frac1m \sum_i [y_i = 0]`: every unit zero, nothing of ``a_i`` survives.
      Expected value for ReLU: :math:`2^{-d}`.

    Parameters
    ----------
    dims : sequence of int
        Output dimensions ``d`` to try, each >= 1 and distinct. ``d = 1`` cannot hold a 2-D point even
        without an activation.
    n_points : int
        Points on the spiral, ``m >= 10``.
    trials : int
        Random ``T`` per ``d``; the table reports mean and standard deviation over them.
    activation : {"relu", "relu6", "identity"}
        ``f``. The identity is the control: zero loss for every ``d >= 2``.
    seed : int
        Seed of the random embeddings.
    tol : float
        Relative error below which a point counts as recovered, > 0.
    radius : float
        Size of the spiral. ReLU is positively homogeneous, so its results do not depend on it; ReLU6 clips
        only when ``|t_j . a| > 6``, which needs a radius of several units.

    Returns
    -------
    ManifoldResult
    """
    dims = _check_params(dims, n_points, trials, activation, tol, radius)
    A, position = make_spiral(n_points, SPIRAL_TURNS, radius)
    result = ManifoldResult(
        params={"dims": dims, "n_points": int(n_points), "trials": int(trials), "activation": activation,
                "seed": int(seed), "tol": float(tol), "radius": float(radius), "turns": SPIRAL_TURNS},
        spiral=A, position=position)
    per_trial = {name: np.zeros((len(dims), trials)) for name in METRICS}

    for i, d in enumerate(dims):
        rng = np.random.default_rng([seed, d])
        for k in range(trials):
            T = rng.standard_normal((d, 2))
            Y = activate(A @ T.T, activation)          # (m, d): row i is f(T a_i)
            mask = linear_mask(Y, activation)
            A_pinv = reconstruct_pinv(Y, T)
            A_active = reconstruct_active_set(Y, T, mask)
            e_pinv = relative_error(A_pinv, A)
            e_active = relative_error(A_active, A)
            n_linear = mask.sum(axis=1)

            per_trial["pinv_error"][i, k] = e_pinv.mean()
            per_trial["pinv_recovered"][i, k] = np.mean(e_pinv < tol)
            per_trial["active_error"][i, k] = e_active.mean()
            per_trial["active_recovered"][i, k] = np.mean(e_active < tol)
            per_trial["collapsed"][i, k] = np.mean(n_linear < 2)
            per_trial["dead"][i, k] = np.mean(~Y.any(axis=1))
            if k == 0:
                result.pinv_examples[d] = A_pinv
                result.active_examples[d] = A_active
                result.example_errors[d] = {"pinv_error": float(e_pinv.mean()),
                                            "active_error": float(e_active.mean())}

    result.per_trial = per_trial
    return result


def format_table(result: ManifoldResult) -> str:
    """The metrics table as text: one row per ``d``, each cell ``mean ± std`` over trials."""
    p = result.params
    lines = [f"ReLU manifold (paper Fig. 1): activation={p['activation']}, {p['n_points']} points, "
             f"{p['trials']} trials, tol={p['tol']:g}, radius={p['radius']:g}, seed={p['seed']}",
             f"{'d':>4}" + "".join(f"  {label:>17}" for label in METRICS.values())]
    for row in result.table():
        cells = (f"{row[name + '_mean']:.3f} ± {row[name + '_std']:.3f}" for name in METRICS)
        lines.append(f"{row['d']:>4}" + "".join(f"  {cell:>17}" for cell in cells))
    lines += ["pinv:       a_hat = pinv(T) f(T a), the paper's reconstruction (tends to a/2 for ReLU, error 1/2)",
              "active-set: a_hat = pinv(T_S) f(T a)_S over the units S in f's linear regime (exact if rank T_S = 2)",
              "error = mean |a_hat - a| / |a|; recovered = fraction with error < tol;",
              "rank < 2 = fraction with fewer than 2 units in the linear regime; all zero = fraction with f(T a) = 0"]
    return "\n".join(lines)


def pinv_scale(A_hat: np.ndarray, A: np.ndarray) -> float:
    r"""The least-squares scale of a reconstruction, :math:`\arg\min_c \sum_i \|\hat a_i - c\, a_i\|^2
    = \sum_i \hat a_i \cdot a_i / \sum_i \|a_i\|^2`; shapes (m, 2), (m, 2).

    For the paper's reconstruction with ReLU it is about 1/2 for every ``d`` (0.50 ± 0.06 over 50 trials at
    ``d = 15``, 0.50 ± 0.005 at ``d = 1000``), while the shape only converges slowly: ``|2 a_hat - a| / |a|`` is
    still about 0.5 at ``d = 15`` and 0.3 at ``d = 30``, falling like ``1.7 / sqrt(d)``.
    """
    return float(np.sum(A_hat * A) / np.sum(A * A))


def relu_manifold_figure(result: ManifoldResult):
    """The figure of :func:`plot_relu_manifold`, as a matplotlib ``Figure`` (drawn with Agg, not shown).

    Top row: the input spiral, then :math:`T^+ f(T a)` per ``d`` (the paper's Figure 1). Bottom row: the
    metrics against ``d`` (log axis), then the active-set reconstruction per ``d``. Points are coloured by their
    position along the spiral, with the same colormap everywhere, so a collapsed arm shows as a run of colours
    piled onto a line or onto the origin. The input spiral is drawn in grey behind each reconstruction for
    scale. Each reconstruction panel is one trial (the first); its title gives that trial's error and, beside
    it, the mean ± std of the error over all trials. The top row's panels also give the trial's best-fit scale
    (:func:`pinv_scale`): with ReLU the paper's reconstruction is a spiral at about half the size of the input.
    """
    from matplotlib.figure import Figure

    dims, A, s = result.dims, result.spiral, result.position
    cmap = "viridis"
    n_cols = len(dims) + 1
    fig = Figure(figsize=(2.9 * n_cols, 6.6))
    axes = fig.subplots(2, n_cols, squeeze=False)
    trials = result.params["trials"]
    table = {row["d"]: row for row in result.table()}

    def spiral_panel(ax, points, title):
        ax.plot(A[:, 0], A[:, 1], color="0.85", lw=1.0, zorder=1)
        ax.scatter(points[:, 0], points[:, 1], c=s, cmap=cmap, s=4, vmin=0.0, vmax=1.0, zorder=2)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)

    def error_text(d, name):
        one = result.example_errors[d][name]
        if trials == 1:
            return f"error {one:.3f}"
        return f"error {one:.3f}; {trials} trials: {table[d][name + '_mean']:.3f} ± {table[d][name + '_std']:.3f}"

    spiral_panel(axes[0, 0], A, "input spiral a in R^2")
    for j, d in enumerate(dims, start=1):
        scale = pinv_scale(result.pinv_examples[d], A)
        spiral_panel(axes[0, j], result.pinv_examples[d],
                     f"d = {d}: pinv(T) f(Ta), scale {scale:.2f}\n{error_text(d, 'pinv_error')}")
        spiral_panel(axes[1, j], result.active_examples[d],
                     f"d = {d}: active-set decoder\n{error_text(d, 'active_error')}")

    ax = axes[1, 0]
    x = list(table)
    for name, label in (("pinv_error", "pinv error"), ("active_error", "active-set error"),
                        ("collapsed", "fraction rank T_S < 2")):
        ax.errorbar(x, [table[d][name + "_mean"] for d in x], yerr=[table[d][name + "_std"] for d in x],
                    marker="o", ms=3, capsize=2, label=label)
    ax.set_xscale("log")
    ax.minorticks_off()                           # log-scale minor labels would crowd the d labels
    ax.set_xticks(x, [str(d) for d in x])
    ax.set_xlabel("d (log scale)", fontsize=8)
    ax.set_ylabel("mean relative error | fraction of points", fontsize=8)
    ax.set_title(f"mean ± std over {trials} trial{'s' if trials != 1 else ''}", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)

    p = result.params
    fig.suptitle(f"{p['activation']} on a 2-D spiral embedded in R^d by a random T "
                 f"(Sandler et al. 2018, Fig. 1); colour = position along the spiral; grey = the input, "
                 f"full size", fontsize=10)
    if p["activation"] != "identity":
        fig.text(0.5, 0.005, "Top row (the paper's reconstruction): pinv(T) ignores that the activation zeroed "
                 "about half the units, so the spiral comes back at about half scale, and distorted for small d "
                 "(scale = least-squares factor c of a_hat ≈ c a; → 1/2 as d grows for ReLU). Bottom row: "
                 "decoding only the units in f's linear regime.", ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def plot_relu_manifold(result: ManifoldResult, path) -> Path:
    """Write :func:`relu_manifold_figure` to ``path`` as a PNG (parent folders are created); return ``path``."""
    return atomic_write_figure(path, relu_manifold_figure(result), dpi=120)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``numpymnv2 relu-manifold`` options to ``parser``."""
    from numpymnv2._argtypes import path
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3, 5, 15, 30], metavar="D",
                        help="output dimensions d of the random embedding T (default: 2 3 5 15 30)")
    parser.add_argument("--points", type=int, default=1000, help="points on the spiral, >= 10 (default: 1000)")
    parser.add_argument("--trials", type=int, default=10, help="random T per d to average over (default: 10)")
    parser.add_argument("--activation", choices=ACTIVATIONS, default="relu", help="f (default: relu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random embeddings (default: 0)")
    parser.add_argument("--tol", type=float, default=0.05,
                        help="relative error below which a point counts as recovered (default: 0.05)")
    parser.add_argument("--radius", type=float, default=1.0,
                        help="size of the spiral, 1e-6 to 1e6; matters only for relu6, which clips at 6 (default: 1)")
    parser.add_argument("--out", default="runs/relu-manifold", type=path,
                        help="folder for relu_manifold.png and relu_manifold.json (default: runs/relu-manifold)")


def run(args: argparse.Namespace) -> int:
    """Run the experiment from parsed options, print the table, write the PNG and JSON into ``args.out``."""
    result = run_relu_manifold(dims=args.dims, n_points=args.points, trials=args.trials,
                               activation=args.activation, seed=args.seed, tol=args.tol,
                               radius=getattr(args, "radius", 1.0))
    print(format_table(result))
    figure = relu_manifold_figure(result)           # before the folder exists: a failure leaves nothing behind
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = atomic_write_figure(out / "relu_manifold.png", figure, dpi=120)
    json_path = out / "relu_manifold.json"
    result.to_json(json_path)
    print(f"wrote {png}")
    print(f"wrote {json_path}")
    return 0
