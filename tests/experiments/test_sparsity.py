"""Depthwise kernel sparsity: counts on models whose kernels were zeroed by hand, every input form, the command."""
import json

import numpy as np
import pytest

import numpymnv2 as mn
from numpymnv2.cli import main
from numpymnv2.experiments.sparsity import (depthwise_kernels, depthwise_sparsity, format_table, load_state,
                                            sparsity_figure)
from numpymnv2.models import save_weights

DW = "features.3.conv.1.0"          # 24 -> 48 -> 24 at width 0.35 (make_divisible(8 * 6) = 48 channels)


@pytest.fixture
def model():
    m = mn.MobileNetV2(num_classes=10, width_mult=0.35, seed=0)
    layers = dict(m.named_modules())
    w = layers[DW].weight.data
    w[:, :, :5] = 0.0                                   # five dead kernels
    w[:, :, 5] *= 1e-3                                  # one nearly dead
    layers["features.5.conv.1.0"].weight.data[:, :, 7] = 0.0
    return m


def layer(report, name):
    return next(entry for entry in report.layers if entry.name == name)


def test_every_depthwise_layer_is_found_in_network_order(model):
    report = depthwise_sparsity(model)
    dw_modules = [name for name, mod in model.named_modules() if isinstance(mod, mn.nn.DepthwiseConv2d)]
    assert [entry.name for entry in report.layers] == dw_modules
    modules = dict(model.named_modules())
    assert report.channels == sum(modules[name].channels for name in dw_modules)


def test_counts_the_zeroed_kernels(model):
    report = depthwise_sparsity(model, threshold=0.1, mode="relative")
    assert layer(report, DW).near_zero == 6 and layer(report, DW).channels == 48
    assert layer(report, DW).fraction == pytest.approx(6 / 48)
    assert layer(report, "features.5.conv.1.0").near_zero == 1
    assert sum(e.near_zero for e in report.layers) == 7
    assert report.fraction == pytest.approx(7 / report.channels)
    # a fresh Kaiming initialisation has no kernel below a tenth of its layer's largest
    fresh = depthwise_sparsity(mn.MobileNetV2(num_classes=10, width_mult=0.35, seed=1))
    assert fresh.fraction == 0.0 and fresh.folded_fraction == 0.0


def test_absolute_threshold(model):
    report = depthwise_sparsity(model, threshold=1e-2, mode="absolute")
    assert layer(report, DW).near_zero == 6                  # the 1e-3-scaled kernel has norm ~3e-4
    report = depthwise_sparsity(model, threshold=1e-6, mode="absolute")
    assert layer(report, DW).near_zero == 5                  # only the exact zeros
    assert all(e.cutoff == 1e-6 for e in report.layers)


def test_folded_norms_see_batchnorm(model):
    """A zero BatchNorm gamma kills a channel whose kernel is intact; BN cannot revive a zero kernel."""
    bn = dict(model.named_modules())["features.3.conv.1.1"]
    bn.weight.data[10:13] = 0.0
    report = depthwise_sparsity(model)
    entry = layer(report, DW)
    assert entry.near_zero == 6 and entry.folded_near_zero == 9
    w = dict(model.named_modules())[DW].weight.data.astype(np.float64)
    expected = np.linalg.norm(w.reshape(9, -1), axis=0) * np.abs(bn.weight.data) / np.sqrt(bn.running_var + 1e-5)
    np.testing.assert_allclose(entry.folded_norms, expected, rtol=1e-6)


def test_a_constant_channel_is_dead_and_does_not_hide_the_others(model):
    """Zero running variance: the folding formula would divide by sqrt(eps) and dwarf every other kernel."""
    bn = dict(model.named_modules())["features.5.conv.1.1"]
    bn.running_var[:] = np.linspace(0.5, 2.0, bn.running_var.size)
    bn.running_var[3] = 0.0
    entry = layer(depthwise_sparsity(model), "features.5.conv.1.0")
    assert entry.dead_count == 1 and entry.dead[3]
    assert entry.folded_norms[3] == 0.0
    assert entry.folded_near_zero == 2                      # the dead channel and the zeroed kernel 7, no others
    assert layer(depthwise_sparsity(model), DW).dead_count == 0
    fresh = depthwise_sparsity(mn.MobileNetV2(num_classes=10, width_mult=0.35, seed=1))
    assert fresh.dead_fraction == 0.0


def test_state_dict_weights_file_and_torch_layout_agree(model, tmp_path):
    expected = [e.near_zero for e in depthwise_sparsity(model).layers]
    state = model.state_dict()
    assert [e.near_zero for e in depthwise_sparsity(state).layers] == expected
    path = save_weights(model, tmp_path / "w.npz")
    assert [e.near_zero for e in depthwise_sparsity(path).layers] == expected
    assert load_state(path).keys() == state.keys()
    torch_layout = {k: (v.transpose(2, 0, 1)[:, None] if v.ndim == 3 else v) for k, v in state.items()}
    assert [e.near_zero for e in depthwise_sparsity(torch_layout).layers] == expected
    for (_, w_ours, _), (_, w_torch, _) in zip(depthwise_kernels(state), depthwise_kernels(torch_layout)):
        np.testing.assert_array_equal(w_ours, w_torch)


def test_trainer_checkpoint(model, tmp_path):
    checkpoint = pytest.importorskip("numpymnv2.train.checkpoint")
    path = tmp_path / "run" / "last.npz"
    path.parent.mkdir()
    checkpoint.save_checkpoint(path, checkpoint.Checkpoint(model=dict(model.state_dict())))
    expected = [e.near_zero for e in depthwise_sparsity(model).layers]
    assert [e.near_zero for e in depthwise_sparsity(path).layers] == expected
    assert [e.near_zero for e in depthwise_sparsity(path.parent).layers] == expected      # a run folder


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="median"), "mode"),
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(threshold=1.5), "below 1"),
])
def test_bad_options_name_the_option(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        depthwise_sparsity(model, **kwargs)


def test_no_depthwise_weights():
    with pytest.raises(ValueError, match="no depthwise weights"):
        depthwise_sparsity({"classifier.1.weight": np.zeros((10, 4))})
    with pytest.raises(TypeError):
        depthwise_sparsity(3)


def test_command_writes_table_json_and_png(model, tmp_path, capsys):
    path = save_weights(model, tmp_path / "w.npz")
    out = tmp_path / "out"
    assert main(["sparsity", "--checkpoint", str(path), "--threshold", "0.05", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert DW in printed and "all depthwise layers" in printed
    data = json.loads((out / "sparsity.json").read_text())
    assert data["threshold"] == 0.05 and data["mode"] == "relative"
    entry = next(e for e in data["layers"] if e["name"] == DW)
    assert entry["near_zero"] == 6 and len(entry["norms"]) == 48 and entry["dead"] == 0
    assert data["dead_fraction"] == 0.0
    assert (out / "sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert format_table(depthwise_sparsity(path)).splitlines()[0].startswith("Depthwise kernel sparsity")


def test_command_reports_a_missing_file(tmp_path, capsys):
    assert main(["sparsity", "--checkpoint", str(tmp_path / "nope.npz"), "--out", str(tmp_path)]) == 2
    assert "nope.npz" in capsys.readouterr().err


def test_figure_labels_each_layer_with_its_full_name(model):
    report = depthwise_sparsity(model)
    fig = sparsity_figure({"a": report, "b": report}, title="t")
    top, bottom = fig.axes[:2]
    labels = [t.get_text() for t in bottom.get_xticklabels()]
    assert labels == [layer.name for layer in report.layers]
    assert DW in labels and labels[0].startswith("features.")
    assert bottom.get_yscale() == "log" and bottom.get_ylabel() and top.get_ylabel()
    assert top.get_title() == "t"
