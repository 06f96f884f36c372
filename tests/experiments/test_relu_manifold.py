"""Properties of the ReLU manifold experiment (paper Section 3.2, Figure 1): the math, not the picture."""
import argparse
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpymnv2.cli import main
from numpymnv2.experiments.relu_manifold import (METRICS, activate, linear_mask, make_spiral, pinv_scale,
                                                 plot_relu_manifold, reconstruct_active_set, reconstruct_pinv,
                                                 relative_error, relu_manifold_figure, run, run_relu_manifold)

DIMS = (2, 3, 5, 15, 30)
SEEDS = (0, 1, 2, 3, 4)


def means(result, name):
    """The per-d means of one metric, in dims order."""
    return np.array([row[f"{name}_mean"] for row in result.table()])


@pytest.fixture(scope="module")
def relu_runs():
    return {seed: run_relu_manifold(dims=DIMS, n_points=400, trials=10, seed=seed) for seed in SEEDS}


def test_spiral_points_are_off_the_origin_and_ordered():
    A, s = make_spiral(100, radius=2.0)
    assert A.shape == (100, 2) and s.shape == (100,)
    assert np.all(np.linalg.norm(A, axis=1) > 0)
    np.testing.assert_allclose(np.linalg.norm(A, axis=1), 2.0 * s)
    assert np.all(np.diff(s) > 0)


def test_identity_reconstructs_exactly():
    result = run_relu_manifold(dims=DIMS, n_points=300, trials=5, activation="identity", seed=3)
    for d in DIMS:
        np.testing.assert_allclose(result.pinv_examples[d], result.spiral, atol=1e-10, rtol=0)
    assert means(result, "pinv_error").max() < 1e-10
    assert means(result, "active_error").max() < 1e-10
    assert np.all(means(result, "pinv_recovered") == 1.0)
    assert np.all(means(result, "collapsed") == 0.0) and np.all(means(result, "dead") == 0.0)


def test_one_unit_cannot_hold_a_2d_point_even_without_activation():
    result = run_relu_manifold(dims=(1,), n_points=100, trials=3, activation="identity")
    assert means(result, "collapsed")[0] == 1.0
    assert means(result, "pinv_error")[0] > 0.1


@pytest.mark.parametrize("seed", SEEDS)
def test_relu_in_two_dims_loses_most_points(relu_runs, seed):
    d2 = relu_runs[seed].table()[0]
    assert d2["d"] == 2
    # expected ~0.25: both units must be active, a cone of angle pi - angle(t_1, t_2)
    assert d2["pinv_recovered_mean"] < 0.5
    assert d2["active_recovered_mean"] < 0.5
    assert d2["collapsed_mean"] > 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_information_survives_as_d_grows(relu_runs, seed):
    active_error = means(relu_runs[seed], "active_error")
    collapsed = means(relu_runs[seed], "collapsed")
    assert np.all(np.diff(active_error[:3]) < 0)          # d = 2 > 3 > 5
    assert active_error[0] > 0.3 and active_error[-1] < 1e-9
    assert np.all(np.diff(collapsed) <= 0)
    assert collapsed[-1] == 0.0 and means(relu_runs[seed], "active_recovered")[-1] == 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_pinv_reconstruction_tends_to_half_the_spiral(relu_runs, seed):
    # T^+ ReLU(T a) -> E[t ReLU(t . a)] = a / 2, so the paper's reconstruction keeps an error near 1/2
    row = relu_runs[seed].table()[-1]
    assert row["d"] == 30
    assert 0.45 < row["pinv_error_mean"] < 0.6
    assert row["pinv_recovered_mean"] < 0.02


@pytest.mark.parametrize("seed", SEEDS)
def test_twice_the_pinv_reconstruction_approaches_the_spiral_for_large_d(seed):
    A, _ = make_spiral(500)
    T = np.random.default_rng(seed).standard_normal((3000, 2))
    A_hat = reconstruct_pinv(activate(A @ T.T, "relu"), T)
    assert relative_error(2.0 * A_hat, A).mean() < 0.15


def test_collapse_and_dead_fractions_match_the_binomial_law():
    # each unit is active with probability 1/2 independently: P(|S| < 2) = (1 + d) 2^-d, P(|S| = 0) = 2^-d
    result = run_relu_manifold(dims=(2, 3, 5, 8), n_points=200, trials=300, seed=11)
    for row in result.table():
        d = row["d"]
        assert abs(row["collapsed_mean"] - (1 + d) / 2.0 ** d) < 0.04
        assert abs(row["dead_mean"] - 2.0 ** -d) < 0.03


@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 40), activation=st.sampled_from(["relu", "relu6"]))
def test_active_set_decoder_is_exact_where_two_units_are_linear(seed, d, activation):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((64, 2)) * 4.0          # scale so relu6 clips some units
    T = rng.standard_normal((d, 2))
    Y = activate(A @ T.T, activation)
    mask = linear_mask(Y, activation)
    err = relative_error(reconstruct_active_set(Y, T, mask), A)
    full_rank = mask.sum(axis=1) >= 2
    assert np.all(err[full_rank] < 1e-8)
    # one linear unit t: the decoder returns the projection of a onto t, never more than a
    assert np.all(err[~full_rank] <= 1.0 + 1e-12)


def test_relu_results_do_not_depend_on_the_spiral_size():
    # ReLU(c z) = c ReLU(z) for c > 0 and both decoders are linear in y, so relative errors are scale-free
    small = run_relu_manifold(dims=(2, 5, 15), n_points=200, trials=4, radius=1.0)
    large = run_relu_manifold(dims=(2, 5, 15), n_points=200, trials=4, radius=50.0)
    for name in METRICS:
        np.testing.assert_allclose(small.per_trial[name], large.per_trial[name], atol=1e-9)


def test_relu6_clipping_loses_more_than_relu_on_a_large_spiral():
    # units clipped at 6 leave the linear regime, so fewer units are left to pin a point down
    relu = run_relu_manifold(dims=(15, 30), n_points=300, trials=5, activation="relu", radius=30.0)
    relu6 = run_relu_manifold(dims=(15, 30), n_points=300, trials=5, activation="relu6", radius=30.0)
    assert np.all(means(relu6, "collapsed") > means(relu, "collapsed"))
    assert np.all(means(relu, "active_error") < 1e-9) and np.all(means(relu6, "active_error") > 1e-3)


def test_same_seed_same_numbers_and_dims_are_independent():
    a = run_relu_manifold(dims=(2, 5, 15), n_points=100, trials=3, seed=7)
    b = run_relu_manifold(dims=(2, 5, 15), n_points=100, trials=3, seed=7)
    c = run_relu_manifold(dims=(2, 5, 15), n_points=100, trials=3, seed=8)
    only_5 = run_relu_manifold(dims=(5,), n_points=100, trials=3, seed=7)
    for name in METRICS:
        np.testing.assert_array_equal(a.per_trial[name], b.per_trial[name])
        np.testing.assert_array_equal(a.per_trial[name][1], only_5.per_trial[name][0])
    np.testing.assert_array_equal(a.pinv_examples[15], b.pinv_examples[15])
    assert not np.array_equal(a.per_trial["pinv_error"], c.per_trial["pinv_error"])


def test_json_has_the_table_and_every_parameter(tmp_path):
    result = run_relu_manifold(dims=(2, 30), n_points=50, trials=2, seed=1, tol=0.1)
    path = tmp_path / "r.json"
    text = result.to_json(path)
    data = json.loads(path.read_text())
    assert data == json.loads(text)
    assert data["params"] == {"dims": [2, 30], "n_points": 50, "trials": 2, "activation": "relu", "seed": 1,
                              "tol": 0.1, "radius": 1.0, "turns": 2.0}
    assert [row["d"] for row in data["table"]] == [2, 30]
    for name in METRICS:
        assert {f"{name}_mean", f"{name}_std"} <= set(data["table"][0])
        assert name in data["metrics"]
        assert np.array(data["per_trial"][name]).shape == (2, 2)


def test_plot_writes_a_readable_png(tmp_path):
    import matplotlib.pyplot as plt

    result = run_relu_manifold(dims=(2, 15), n_points=100, trials=2)
    path = plot_relu_manifold(result, tmp_path / "sub" / "plot.png")
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 1000
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_figure_labels_its_axes_and_shows_the_mean_beside_the_trial_drawn():
    result = run_relu_manifold(dims=(2, 5, 30), n_points=200, trials=4)
    fig = relu_manifold_figure(result)
    axes = fig.axes
    summary = axes[len(result.dims) + 1]           # bottom row, first column
    assert summary.get_xscale() == "log"
    assert summary.get_xlabel().startswith("d")
    assert summary.get_ylabel() != ""
    assert [t.get_text() for t in summary.get_xticklabels()] == ["2", "5", "30"]
    table = {row["d"]: row for row in result.table()}
    for j, d in enumerate(result.dims, start=1):
        pinv_title = axes[j].get_title()
        active_title = axes[len(result.dims) + 1 + j].get_title()
        assert f"{result.example_errors[d]['pinv_error']:.3f}" in pinv_title
        assert f"{table[d]['pinv_error_mean']:.3f} ± {table[d]['pinv_error_std']:.3f}" in pinv_title
        assert f"{table[d]['active_error_mean']:.3f} ± {table[d]['active_error_std']:.3f}" in active_title
        assert f"scale {pinv_scale(result.pinv_examples[d], result.spiral):.2f}" in pinv_title
    assert any("half scale" in t.get_text() for t in fig.texts)


def test_pinv_reconstruction_is_half_scale_on_average_but_distorted_at_moderate_d():
    A, _ = make_spiral(400)
    for d, shape_error in ((15, 0.3), (1000, 0.1)):
        rng = np.random.default_rng([7, d])
        scales, shapes = [], []
        for _ in range(20):
            T = rng.standard_normal((d, 2))
            A_hat = reconstruct_pinv(activate(A @ T.T, "relu"), T)
            scales.append(pinv_scale(A_hat, A))
            shapes.append(relative_error(2 * A_hat, A).mean())
        assert abs(np.mean(scales) - 0.5) < 0.05
        assert (np.mean(shapes) > shape_error) == (d == 15)


def test_identity_figure_has_no_half_scale_note():
    fig = relu_manifold_figure(run_relu_manifold(dims=(3,), n_points=50, trials=1, activation="identity"))
    assert not any("half scale" in t.get_text() for t in fig.texts)


def test_cli_writes_png_and_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["relu-manifold", "--out", str(out), "--trials", "2", "--points", "200"]) == 0
    assert (out / "relu_manifold.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "relu_manifold.json").read_text())
    assert data["params"]["dims"] == [2, 3, 5, 15, 30] and data["params"]["n_points"] == 200
    printed = capsys.readouterr().out
    assert "pinv error" in printed and str(out / "relu_manifold.json") in printed


def cli_args(**overrides):
    args = dict(dims=[2, 3], points=100, trials=1, activation="relu", seed=0, tol=0.05, radius=1.0, out="unused")
    args.update(overrides)
    return argparse.Namespace(**args)


@pytest.mark.parametrize("overrides, option", [
    ({"dims": [0, 3]}, "--dims"),
    ({"dims": []}, "--dims"),
    ({"dims": [3, 3]}, "--dims"),
    ({"points": 5}, "--points"),
    ({"trials": 0}, "--trials"),
    ({"activation": "tanh"}, "--activation"),
    ({"tol": 0.0}, "--tol"),
    ({"tol": -1.0}, "--tol"),
    ({"radius": 0.0}, "--radius"),
    ({"radius": 1e308}, "--radius"),        # its squared norms overflow: NaN errors, a figure that cannot draw
    ({"radius": 1e-300}, "--radius"),       # and underflow
    ({"radius": float("nan")}, "--radius"),
])
def test_bad_options_raise_value_error_naming_the_option(overrides, option):
    with pytest.raises(ValueError, match=option):
        run(cli_args(**overrides))


@pytest.mark.parametrize("argv", [["--dims", "0"], ["--points", "5"], ["--tol", "0"], ["--tol", "-0.1"]])
def test_cli_reports_bad_options_with_exit_code_2(argv, tmp_path, capsys):
    assert main(["relu-manifold", "--out", str(tmp_path), *argv]) == 2
    assert "error" in capsys.readouterr().err


def test_a_d_too_large_for_the_memory_is_refused_before_any_work(tmp_path, capsys):
    # 20 points at d = 10^10 would need terabytes: refused with exit 2 before T is drawn, nothing written
    out = tmp_path / "out"
    assert main(["relu-manifold", "--points", "20", "--dims", "10000000000", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "d = 10000000000 with 20 points needs about" in err and "--dims" in err and not out.exists()


def test_cli_failure_leaves_no_output_folder(tmp_path, capsys, monkeypatch):
    # the figure is drawn before the folder is made: a figure that fails leaves nothing behind
    import numpymnv2.experiments.relu_manifold as rm

    def broken(result):
        raise ValueError("Axis limits cannot be NaN or Inf")
    monkeypatch.setattr(rm, "relu_manifold_figure", broken)
    out = tmp_path / "out" / "nested"
    assert main(["relu-manifold", "--points", "20", "--trials", "1", "--dims", "2", "--out", str(out)]) == 2
    assert "Axis limits" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_cli_rejects_unknown_activation():
    with pytest.raises(SystemExit) as info:     # argparse's choices catch it before run
        main(["relu-manifold", "--activation", "tanh"])
    assert info.value.code == 2
