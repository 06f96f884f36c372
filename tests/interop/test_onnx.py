"""ONNX export (numpymnv2.interop.onnx): onnxruntime reproduces numpymnv2 from one file at many shapes.

Skipped without onnx and onnxruntime (``pip install "numpymnv2[onnx]"``; CI installs them). Errors are measured
against the largest logit: ``|onnx - numpymnv2| <= 1e-5 * max |numpymnv2|`` everywhere (plus 1e-5 elementwise).
"""
import collections
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from numpymnv2.interop import onnx as onnx_export  # noqa: E402
from numpymnv2.interop.onnx import (MAX_OPSET, MIN_OPSET, OnnxMismatchError, build_onnx, check_onnx,  # noqa: E402
                                    luma, ort_session, to_onnx)
from numpymnv2.models import CIFAR_SETTING, MobileNetV2  # noqa: E402
from numpymnv2.nn import BatchNormAct2d  # noqa: E402
from numpymnv2.train.config import make_transform  # noqa: E402
from numpymnv2.train.inference import predict_proba  # noqa: E402
from strategies import randomize_bn  # noqa: E402

RTOL = 1e-5


def moved_statistics(model, seed=0, resolution=32):
    """Random BatchNorm parameters and statistics, a larger classifier, then three training-mode forwards.

    Every folded scale and shift then differs from 1 and 0 and the running statistics are what training left,
    so a mistake in folding shows in the logits. Returns the model in evaluation mode.
    """
    rng = np.random.default_rng(seed)
    dtype = model.config["dtype"]
    randomize_bn(model, rng)
    state = model.state_dict()
    state["classifier.1.weight"] = state["classifier.1.weight"] * 30     # logits of order 1, not 0.01
    model.load_state_dict(state)
    before = {k: v.copy() for k, v in state.items() if k.endswith(("running_mean", "running_var"))}
    model.train()
    for _ in range(3):
        model(rng.normal(0.5, 1.5, (4, resolution, resolution, 3)).astype(dtype))
    after = model.state_dict()
    assert all(not np.allclose(before[k], after[k]) for k in before), "training did not move the statistics"
    return model.eval()


def assert_close(got, want, what):
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=what)


# (name, constructor arguments): widths 0.35-1.4 with the paper's strides, the presets, the ablations
CONFIGS = [
    ("w0.35", dict(width_mult=0.35)),
    ("w0.5", dict(width_mult=0.5)),
    ("w0.75", dict(width_mult=0.75)),
    ("w1.0", dict(width_mult=1.0)),
    ("w1.4", dict(width_mult=1.4)),
    ("cifar", dict(width_mult=0.5, stem_stride=1, inverted_residual_setting=CIFAR_SETTING)),
    ("small", dict(width_mult=0.5, stem_stride=1)),
    ("relu6 bottleneck", dict(width_mult=0.5, linear_bottleneck=False)),
    ("no shortcut", dict(width_mult=0.5, use_shortcut=False)),
]
SHAPES = [(1, 32, 32, 3), (2, 40, 56, 3), (3, 64, 48, 3)]


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_one_file_reproduces_the_logits_at_every_batch_size_and_resolution(name, kwargs, tmp_path):
    model = moved_statistics(MobileNetV2(num_classes=10, seed=1, **kwargs))
    path = tmp_path / "model.onnx"
    result = to_onnx(model, path, check=False)
    sess = ort_session(path)
    rng = np.random.default_rng(2)
    for shape in SHAPES:
        x = rng.standard_normal(shape).astype(np.float32)
        got = sess.run(None, {"input": x})[0]
        assert got.dtype == np.float32 and got.shape == (shape[0], 10)
        assert_close(got, model(x), f"{name} at input {shape}")
    assert result.input_name == "input" and result.output_name == "logits"


def test_relu_activations_become_relu_nodes():
    """A model whose fused BatchNorms apply ReLU instead of ReLU6 (the activation is each BatchNormAct2d's)."""
    model = moved_statistics(MobileNetV2(num_classes=10, width_mult=0.35, seed=1))
    switched = [m for m in model.modules() if isinstance(m, BatchNormAct2d) and m.activation == "relu6"]
    for m in switched:
        m.activation = "relu"
    x = np.random.default_rng(2).standard_normal((2, 40, 48, 3)).astype(np.float32) * 3
    proto = build_onnx(model)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert ops["Relu"] == len(switched) and "Clip" not in ops
    assert_close(ort_session(proto).run(None, {"input": x})[0], model(x), "relu")


def test_224_pixels_width_1_thousand_classes():
    model = moved_statistics(MobileNetV2(num_classes=1000, width_mult=1.0, seed=3))
    x = np.random.default_rng(4).standard_normal((1, 224, 224, 3)).astype(np.float32)
    got = ort_session(build_onnx(model)).run(None, {"input": x})[0]
    assert_close(got, model(x), "224px")


def test_float64_model_exports_float32_within_tolerance():
    model = moved_statistics(MobileNetV2(num_classes=10, width_mult=0.35, seed=1, dtype="float64"))
    proto = build_onnx(model)
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.FLOAT}
    report = check_onnx(proto, model)
    assert report.worst_rel < RTOL


def test_graph_is_what_onnxruntime_runs_fastest():
    """BN folded (no BatchNormalization), ReLU6 as Clip, depthwise as grouped Conv, one transpose, Gemm head."""
    model = MobileNetV2(num_classes=10, width_mult=0.35, seed=0).eval()
    proto = build_onnx(model, classes=[f"c{i}" for i in range(10)])
    graph = proto.graph
    ops = collections.Counter(n.op_type for n in graph.node)
    folded = model.fuse()
    assert ops == {"Transpose": 1, "Conv": len(folded.steps), "Clip": 35, "Add": 10, "GlobalAveragePool": 1,
                   "Flatten": 1, "Gemm": 1}
    assert [n.op_type for n in graph.node][:2] == ["Transpose", "Conv"]
    assert [n.op_type for n in graph.node][-3:] == ["GlobalAveragePool", "Flatten", "Gemm"]
    attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in graph.node}
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for step in folded.steps:
        conv = attrs[f"{step.name}.conv"]
        w = weights[f"{step.name}.weight"]
        if step.kind == "depthwise":
            assert conv["group"] == w.shape[0] and w.shape[1:] == (1, 3, 3)
        else:
            assert conv["group"] == 1
        assert conv["strides"] == [step.stride] * 2 and conv["pads"] == [step.padding] * 4
    gemm = attrs["logits"]
    assert gemm["transB"] == 1
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "height", "width", 3]
    assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == ["batch", 10]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["input_layout"] == "NHWC" and meta["classes"] == '["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", ' \
                                                                 '"c8", "c9"]'
    onnx.checker.check_model(proto, full_check=True)


def test_every_supported_opset_passes_the_checker_and_runs():
    model = moved_statistics(MobileNetV2(num_classes=4, width_mult=0.1, seed=0, stem_stride=1))
    preprocess = {"image_size": [12, 12], "channels": 1, "resolution": 32, "mean": [0.4] * 3, "std": [0.3] * 3}
    inputs = [np.random.default_rng(0).standard_normal((2, 32, 40, 3)).astype(np.float32)]
    images = [np.random.default_rng(1).integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)]
    for opset in range(MIN_OPSET, MAX_OPSET + 1):
        if opset > onnx.defs.onnx_opset_version():
            break
        assert build_onnx(model, opset=opset).opset_import[0].version == opset
        assert check_onnx(build_onnx(model, opset=opset), model, inputs).worst_rel < RTOL, opset
        proto = build_onnx(model, opset=opset, preprocess=preprocess, softmax=True)
        assert check_onnx(proto, model, images, preprocess=preprocess, softmax=True).worst_rel < RTOL, opset
    for opset in (MIN_OPSET - 1, MAX_OPSET + 1, 17.0, True):
        with pytest.raises(ValueError, match="opset must be an integer"):
            build_onnx(model, opset=opset)


# -- preprocessing in the graph -------------------------------------------------------------------------------
def rgb_preprocess(resolution=32, size=(24, 28)):
    return {"image_size": list(size), "channels": 3, "resolution": resolution, "mean": [0.49, 0.48, 0.45],
            "std": [0.25, 0.24, 0.26], "dtype": "float32", "crop_padding": 4, "flip": True}


def grey_preprocess():
    return {"image_size": [8, 8], "channels": 1, "resolution": 32, "mean": [0.3] * 3, "std": [0.35] * 3,
            "dtype": "float32", "crop_padding": 4, "flip": False}


@pytest.mark.parametrize("preprocess", [rgb_preprocess(), rgb_preprocess(40, (40, 40)), grey_preprocess()],
                         ids=["rgb upsampled", "rgb at its resolution", "grey 8x8"])
@pytest.mark.parametrize("softmax", [False, True], ids=["logits", "softmax"])
def test_preprocessing_graph_equals_the_training_evaluation_transform(preprocess, softmax, tmp_path):
    model = moved_statistics(MobileNetV2(num_classes=10, width_mult=0.35, seed=5, stem_stride=1))
    path = tmp_path / "pre.onnx"
    to_onnx(model, path, preprocess=preprocess, softmax=softmax, check=False)
    sess = ort_session(path)
    assert sess.get_inputs()[0].name == "image" and sess.get_inputs()[0].type == "tensor(uint8)"
    rng = np.random.default_rng(6)
    H, W = preprocess["image_size"]
    for shape in [(1, H, W, 3), (2, H + 7, W + 3, 3), (2, 64, 80, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        got = sess.run(None, {"image": images})[0]
        # written out here rather than through reference_outputs: luma, make_transform, model, softmax
        pixels = luma(images) if preprocess["channels"] == 1 else images
        x = make_transform(dict(preprocess, image_size=list(shape[1:3])), train=False)(pixels, None)
        want = model(x)
        if softmax:
            want = np.exp(want - want.max(axis=1, keepdims=True))
            want /= want.sum(axis=1, keepdims=True)
            np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)
        assert_close(got, want, f"{shape}")


def test_preprocessed_graph_gives_what_predict_gives_on_training_sized_images():
    """An image of the dataset's size and mode reaches the network exactly as `numpymnv2 predict` sends it."""
    model = moved_statistics(MobileNetV2(num_classes=10, width_mult=0.35, seed=5, stem_stride=1))
    preprocess = grey_preprocess()
    grey = np.random.default_rng(7).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    sess = ort_session(build_onnx(model, preprocess=preprocess, softmax=True))
    got = sess.run(None, {"image": np.repeat(grey, 3, axis=-1)})[0]       # the grey image as RGB
    assert_close(got, predict_proba(model, grey, preprocess), "predict_proba")


def test_luma_is_pillows_convert_L():
    from PIL import Image
    images = np.random.default_rng(8).integers(0, 256, (3, 17, 23, 3), dtype=np.uint8)
    want = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in images])[..., None]
    np.testing.assert_array_equal(luma(images), want)
    # the graph's float32 fixed-point luma is exact, so grey models see Pillow's pixels
    model = MobileNetV2(num_classes=3, width_mult=0.1, seed=0, stem_stride=1).eval()
    proto = build_onnx(model, preprocess=dict(grey_preprocess(), resolution=32))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("luma", onnx.TensorProto.FLOAT, None))
    out = ort_session(proto).run(["luma"], {"image": images})[0]
    np.testing.assert_array_equal(out[:, 0], want[..., 0].astype(np.float32))


@pytest.mark.parametrize("bad", [None, {"resolution": 32}, dict(grey_preprocess(), channels=2),
                                 dict(grey_preprocess(), std=[0.1, 0.0, 0.1]), dict(grey_preprocess(), resolution=16),
                                 dict(grey_preprocess(), mean=[0.1, 0.2])])
def test_bad_preprocessing_records_are_refused(bad):
    model = MobileNetV2(num_classes=3, width_mult=0.1, seed=0)
    if bad is None:
        bad = "not a dict"
    with pytest.raises(ValueError, match="preprocess"):
        build_onnx(model, preprocess=bad)


# -- the model's mode, bad input, writing ---------------------------------------------------------------------
def test_training_mode_model_exports_evaluation_behaviour_and_says_so(tmp_path):
    model = moved_statistics(MobileNetV2(num_classes=10, width_mult=0.35, seed=1))
    model.train()
    frozen = [m for name, m in model.named_modules() if name == "features.2"][0]
    frozen.eval()                                   # a partly frozen model keeps its per-module modes
    modes = [m.training for m in model.modules()]
    state = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="training mode.*evaluation mode"):
        result = to_onnx(model, tmp_path / "m.onnx")
    assert result.check.worst_rel < RTOL            # checked against evaluation-mode outputs
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():         # running statistics untouched by the check
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    got = ort_session(tmp_path / "m.onnx").run(None, {"input": x})[0]
    assert_close(got, model.eval()(x), "eval behaviour")


def test_evaluation_mode_model_exports_without_a_warning(tmp_path):
    model = MobileNetV2(num_classes=3, width_mult=0.1, seed=0).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_onnx(model, tmp_path / "m.onnx", check=False)


@pytest.mark.parametrize("thing", ["folded", "block", "array"])
def test_only_a_mobilenetv2_is_exported(thing, tmp_path):
    model = MobileNetV2(num_classes=3, width_mult=0.1, seed=0)
    obj = {"folded": model.fuse(), "block": model.features[1], "array": np.zeros(3)}[thing]
    with pytest.raises(TypeError, match="expected a numpymnv2 MobileNetV2"):
        to_onnx(obj, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_class_names_must_match_the_outputs():
    with pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
        build_onnx(MobileNetV2(num_classes=3, width_mult=0.1, seed=0), classes=["a", "b"])


def test_a_mismatch_is_an_error_and_leaves_the_old_file(tmp_path, monkeypatch):
    model = MobileNetV2(num_classes=3, width_mult=0.1, seed=0).eval()
    path = tmp_path / "m.onnx"
    path.write_bytes(b"the previous export")
    real = onnx_export.reference_outputs
    monkeypatch.setattr(onnx_export, "reference_outputs", lambda *a, **k: real(*a, **k) * 1.001)
    with pytest.raises(OnnxMismatchError, match="largest relative difference 9.99e-04.*tolerance 0.0001"):
        to_onnx(model, path)
    assert path.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]           # no temporary file left behind


def test_unwritable_paths_say_what_to_do(tmp_path):
    model = MobileNetV2(num_classes=3, width_mult=0.1, seed=0).eval()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OSError, match="cannot write .*a_file/m.onnx.*folder you can write to"):
        to_onnx(model, tmp_path / "a_file" / "m.onnx", check=False)
    with pytest.raises(IsADirectoryError, match="is a folder; give the file to write"):
        to_onnx(model, tmp_path, check=False)


def test_export_is_atomic_and_replaces_an_existing_file(tmp_path):
    model = MobileNetV2(num_classes=3, width_mult=0.1, seed=0).eval()
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    result = to_onnx(model, path, check=False)
    assert path.stat().st_size == result.size_bytes and onnx.load(str(path)).graph.output[0].name == "logits"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
