"""``numpymnv2 export`` end to end on tiny checkpoints and weights files (skipped without onnx/onnxruntime)."""
import json
import zipfile

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from numpymnv2.cli import main  # noqa: E402
from numpymnv2.interop import onnx as onnx_export  # noqa: E402
from numpymnv2.interop.onnx import ort_session, reference_outputs  # noqa: E402
from numpymnv2.models import MobileNetV2, save_weights  # noqa: E402
from numpymnv2.train.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from numpymnv2.train.config import TrainConfig, build_model, model_spec  # noqa: E402
from numpymnv2.train.inference import load_trained_model  # noqa: E402

CLASSES = ["zero", "one", "two", "three"]
PREPROCESS = {"image_size": [8, 8], "channels": 1, "resolution": 32, "mean": [0.3] * 3, "std": [0.35] * 3,
              "dtype": "float32", "crop_padding": 4, "flip": False}


def tiny_checkpoint(path, arch="small", width=0.25, model_state_from=None):
    """A checkpoint as `numpymnv2 train` writes it, with BatchNorm statistics moved by two training forwards."""
    spec = model_spec(TrainConfig(arch=arch, width=width), len(CLASSES))
    model = build_model(spec)
    rng = np.random.default_rng(0)
    for _ in range(2):
        model.train()(rng.normal(0.3, 1.2, (4, 32, 32, 3)).astype(np.float32))
    state = (model_state_from or model).state_dict()
    config = {"model": spec, "preprocess": PREPROCESS, "classes": CLASSES}
    save_checkpoint(path, Checkpoint(model=state, config=config, progress={"epoch": 1}))
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "last.npz"
    tiny_checkpoint(path)
    return path


def run_ort(path, x):
    sess = ort_session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_export_a_checkpoint_and_its_run_folder(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint.parent), str(out)]) == 0
    text = capsys.readouterr().out
    assert "MobileNetV2(width_mult=0.25, num_classes=4, arch small)" in text
    assert f"wrote {out}" in text and "opset 17" in text and "'input' float32" in text
    assert "checked: onnxruntime vs numpymnv2: largest relative difference" in text
    model, _ = load_trained_model(checkpoint)
    x = np.random.default_rng(1).standard_normal((3, 48, 40, 3)).astype(np.float32)
    got = run_ort(out, x)
    want = model(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classes"]) == CLASSES and json.loads(meta["numpymnv2_config"])["width_mult"] == 0.25


def test_export_with_preprocessing_softmax_and_another_opset(checkpoint, tmp_path, capsys):
    out = tmp_path / "pre.onnx"
    assert main(["export", str(checkpoint), str(out), "--preprocess", "--softmax", "--opset", "13"]) == 0
    text = capsys.readouterr().out
    assert "'image' uint8 RGB" in text and "resized to 32x32" in text and "'probabilities' (batch, 4)" in text
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 13
    assert json.loads({p.key: p.value for p in proto.metadata_props}["preprocess"]) == PREPROCESS
    model, _ = load_trained_model(checkpoint)
    images = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    got = run_ort(out, images)
    want = reference_outputs(model, images, PREPROCESS, softmax=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_export_weights_files_with_and_without_an_architecture_record(tmp_path, capsys):
    model = MobileNetV2(num_classes=6, width_mult=0.35, stem_stride=1, seed=2, linear_bottleneck=False).eval()
    save_weights(model, tmp_path / "w.npz")
    assert main(["export", str(tmp_path / "w.npz"), str(tmp_path / "w.onnx")]) == 0
    assert "linear_bottleneck=False" in capsys.readouterr().out
    save_weights(MobileNetV2(num_classes=3, width_mult=0.1, seed=2, dtype="float64"), tmp_path / "w64.npz")
    assert main(["export", str(tmp_path / "w64.npz"), str(tmp_path / "w64.onnx")]) == 0
    assert "note: the model is float64; the graph computes in float32" in capsys.readouterr().out
    bare = tmp_path / "bare.npz"                 # a state dict only, as np.savez writes it
    np.savez(bare, **MobileNetV2(num_classes=6, width_mult=0.5, seed=3).state_dict())
    assert main(["export", str(bare), str(tmp_path / "bare.onnx"), "--width", "0.5", "--arch", "imagenet"]) == 0
    assert "MobileNetV2(width_mult=0.5, num_classes=6, arch imagenet)" in capsys.readouterr().out
    assert main(["export", str(bare), str(tmp_path / "bad.onnx")]) == 2           # default width 1.0
    err = capsys.readouterr().err
    assert "records no architecture: pass the --arch, --width and --num-classes" in err
    assert "tried width 1, 6 classes, arch imagenet" in err and not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("args,message", [
    (["--width", "1.0"], "--width 1.0 (the file has 0.25)"),
    (["--arch", "cifar", "--num-classes", "4"], "--arch cifar (the file has small)"),
    (["--opset", "9"], "opset must be an integer from 11 to"),
    (["--tolerance", "0"], "--tolerance must be between 0 and 1"),
])
def test_options_that_do_not_fit_are_refused(checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "m.onnx"
    assert main(["export", str(checkpoint), str(out), *args]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_a_checkpoint_of_another_architecture(tmp_path, capsys):
    """The stored weights are of width 0.35 while the record says 0.25: named, nothing written."""
    path = tmp_path / "other.npz"
    tiny_checkpoint(path, model_state_from=MobileNetV2(num_classes=4, width_mult=0.35, seed=0))
    assert main(["export", str(path), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "a different architecture" in err and not (tmp_path / "m.onnx").exists()


def test_bad_sources(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.npz"), str(tmp_path / "m.onnx")]) == 2
    assert "no such checkpoint or weights file" in capsys.readouterr().err
    pth = tmp_path / "model.pth"                 # the zip layout of torch.save, without needing torch
    with zipfile.ZipFile(pth, "w") as z:
        z.writestr("model/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("model/version", b"3\n")
    assert main(["export", str(pth), str(tmp_path / "m.onnx")]) == 2
    assert "PyTorch file (torch.save); convert it to a numpymnv2 checkpoint first: numpymnv2 convert" in \
        capsys.readouterr().err
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    assert main(["export", str(text), str(tmp_path / "m.onnx")]) == 2
    assert "not a readable .npz weights file" in capsys.readouterr().err
    save_weights(MobileNetV2(num_classes=3, width_mult=0.1, seed=0), tmp_path / "w.npz")
    assert main(["export", str(tmp_path / "w.npz"), str(tmp_path / "m.onnx"), "--preprocess"]) == 2
    assert "--preprocess needs the preprocessing record of a training checkpoint" in capsys.readouterr().err


def test_an_existing_output_is_replaced_only_when_it_is_an_onnx_model(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), str(out), "--no-check"]) == 0
    assert main(["export", str(checkpoint), str(out), "--no-check", "--softmax"]) == 0      # a re-export
    assert onnx.load(str(out)).graph.output[0].name == "probabilities"
    capsys.readouterr()
    for name, content in [("notes.txt", b"my notes"), ("empty.onnx", b""), ("other.npz", checkpoint.read_bytes())]:
        path = tmp_path / name
        path.write_bytes(content)
        assert main(["export", str(checkpoint), str(path)]) == 2
        err = capsys.readouterr().err
        assert "exists and is not an ONNX model" in err and err.count("\n") == 1
        assert path.read_bytes() == content


def test_unwritable_output_and_missing_packages(checkpoint, tmp_path, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    assert main(["export", str(checkpoint), str(tmp_path / "a_file" / "m.onnx")]) == 2
    assert "cannot write" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    assert main(["export", str(checkpoint), str(tmp_path / "m.onnx")]) == 2
    assert "pip install \"numpymnv2[onnx]\"" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()
    assert main(["export", str(checkpoint), str(tmp_path / "m.onnx"), "--no-check"]) == 0
    assert "not checked in onnxruntime (--no-check)" in capsys.readouterr().out
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    assert main(["export", str(checkpoint), str(tmp_path / "m2.onnx"), "--no-check"]) == 2
    assert "needs the onnx package" in capsys.readouterr().err


def test_a_mismatch_fails_the_command(checkpoint, tmp_path, capsys, monkeypatch):
    real = onnx_export.reference_outputs
    monkeypatch.setattr(onnx_export, "reference_outputs", lambda *a, **k: real(*a, **k) + 0.5)
    assert main(["export", str(checkpoint), str(tmp_path / "m.onnx")]) == 2
    assert "does not reproduce numpymnv2" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()
