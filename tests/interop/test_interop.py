"""torchvision layouts and keys without torch, and the ``numpymnv2 convert`` command."""
import importlib.util
import os
import sys

import numpy as np
import pytest

from numpymnv2.cli import main
from numpymnv2.interop import from_torchvision, ours_to_torch, to_torchvision, torch_to_ours
from numpymnv2.models import MobileNetV2, load_weights


def torch_layout_reference(model):
    """torchvision's layouts written out per key kind, independently of interop's per-module table."""
    out = {}
    for k, v in model.state_dict().items():
        if k == "features.0.0.weight":                       # (C_out, K, K, C_in) -> (C_out, C_in, K, K)
            v = np.moveaxis(v, 3, 1)
        elif v.ndim == 3:                                    # depthwise (K, K, C) -> (C, 1, K, K)
            v = np.moveaxis(v, 2, 0)[:, None]
        elif v.ndim == 2 and not k.startswith("classifier"):  # pointwise (C_out, C_in) -> (C_out, C_in, 1, 1)
            v = v[:, :, None, None]
        out[k] = v
    return out


@pytest.fixture(scope="module")
def model():
    m = MobileNetV2(num_classes=10, width_mult=0.35, seed=4)
    rng = np.random.default_rng(0)
    for name, b in m.named_buffers():
        if name.endswith("running_var"):
            b[...] = rng.uniform(0.5, 1.5, b.shape)
        elif name.endswith("num_batches_tracked"):
            b[...] = 7
    return m


def test_export_layouts_and_dtypes(model):
    exported = to_torchvision(model)
    expected = torch_layout_reference(model)
    assert list(exported) == list(expected)
    for k, v in expected.items():
        assert exported[k].shape == v.shape and exported[k].dtype == v.dtype, k
        np.testing.assert_array_equal(exported[k], v)
        assert exported[k].flags.c_contiguous
    assert exported["features.0.0.weight"].shape == (16, 3, 3, 3)
    assert exported["features.2.conv.1.0.weight"].shape == (48, 1, 3, 3)
    assert exported["features.2.conv.2.weight"].shape == (8, 48, 1, 1)
    nbt = exported["features.0.1.num_batches_tracked"]
    assert nbt.dtype == np.int64 and nbt.shape == () and int(nbt) == 7


def test_round_trip_and_gradients(model):
    sd = to_torchvision(model)
    back = from_torchvision(sd, num_classes=10, width_mult=0.35)
    assert not back.training
    for k, v in to_torchvision(back).items():
        np.testing.assert_array_equal(v, sd[k])
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(back(x), model.eval()(x))
    model.train()
    model.zero_grad()
    model.backward(np.ones_like(model(x)))
    grads = to_torchvision(model, grads=True)
    assert list(grads) == [k for k, _ in model.named_parameters()]
    np.testing.assert_array_equal(grads["features.3.conv.1.0.weight"],
                                  ours_to_torch(model.features[3].conv[1].conv.weight.grad, "depthwise"))
    for layout, shape in [("conv2d", (4, 3, 3, 2)), ("depthwise", (3, 3, 5)), ("pointwise", (4, 6)), ("same", (7,))]:
        a = np.random.default_rng(0).standard_normal(shape)
        np.testing.assert_array_equal(torch_to_ours(ours_to_torch(a, layout), layout), a)


def test_float64_and_num_classes_from_the_weights(model):
    m = from_torchvision(to_torchvision(model), num_classes=None, width_mult=0.35, dtype="float64")
    assert m.num_classes == 10 and m.param_dtype() == np.float64


def test_mismatched_state_dicts_name_the_key(model):
    sd = to_torchvision(model)
    with pytest.raises(ValueError, match=r"features.3.conv.0.0.weight: expected shape \(96, 16, 1, 1\) in "
                                         r"torchvision's layout, got \(48, 8, 1, 1\)"):
        from_torchvision(sd, num_classes=10, width_mult=0.5)
    with pytest.raises(ValueError, match=r"classifier.1.weight: expected shape \(1000, 1280\)"):
        from_torchvision(sd, width_mult=0.35)
    partial = dict(sd)
    del partial["features.5.conv.3.running_var"]
    partial["features.5.conv.9.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"missing keys \(1\): features.5.conv.3.running_var(.|\n)*unexpected "
                                         r"keys \(1\): features.5.conv.9.weight"):
        from_torchvision(partial, num_classes=10, width_mult=0.35)
    with pytest.raises(TypeError, match="state_dict"):
        from_torchvision([1, 2], num_classes=10)
    no_classifier = {k: v for k, v in sd.items() if not k.startswith("classifier")}
    with pytest.raises(ValueError, match="classifier.1.weight"):
        from_torchvision(no_classifier, num_classes=None, width_mult=0.35)


def test_convert_command(tmp_path, model, capsys):
    torch = pytest.importorskip("torch")
    from numpymnv2.train import load_trained_model
    pth = tmp_path / "mnv2.pth"
    torch.save({k: torch.from_numpy(v) for k, v in to_torchvision(model).items()}, pth)
    out = tmp_path / "converted.npz"
    assert main(["convert", str(pth), str(out)]) == 0                  # width and classes read from the shapes
    printed = capsys.readouterr().out
    assert "width_mult=0.35 (read from the channel counts), num_classes=10, arch imagenet: stem stride 2" in printed
    assert "classes 0 to 9" in printed and f"next: numpymnv2 predict --checkpoint {out} IMAGE" in printed
    loaded, ckpt = load_trained_model(out)
    assert loaded.config == {**model.config, "dropout": loaded.config["dropout"]} and loaded.num_classes == 10
    assert ckpt.config["preprocess"]["mean"] == [0.485, 0.456, 0.406] and ckpt.config["preprocess"]["resolution"] == 224
    assert ckpt.config["preprocess"]["center_crop"] == 224 / 256        # torchvision's Resize(256), CenterCrop(224)
    assert ckpt.config["classes"] == [str(k) for k in range(10)]
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
    wrapped = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": torch.load(pth, weights_only=True), "epoch": 3}, wrapped)
    assert main(["convert", str(wrapped), str(tmp_path / "w2.npz"), "--width", "0.35"]) == 0

    assert main(["convert", str(pth), str(tmp_path / "bad.npz"), "--width", "0.5"]) == 2   # contradicts the shapes
    assert "--width 0.5 does not fit the weights" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "x.npz")]) == 2
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    assert main(["convert", str(garbage), str(tmp_path / "x.npz")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "bad.npz").exists() and not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("width", [0.5, 0.75, 1.0, 1.4, 0.1])
def test_the_width_is_read_from_the_channel_counts(width):
    from numpymnv2.interop.torchvision import infer_width_mult
    assert infer_width_mult(to_torchvision(MobileNetV2(num_classes=3, width_mult=width))) == width


def test_a_converted_ddp_file_is_a_checkpoint_every_command_takes(tmp_path, capsys):
    """DDP's module. prefix, class names, --arch; then predict, evaluate, summary and export read the file."""
    torch = pytest.importorskip("torch")
    from PIL import Image
    small = MobileNetV2(num_classes=3, width_mult=0.25, seed=5, stem_stride=1)
    pth = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": torch.from_numpy(v) for k, v in to_torchvision(small).items()}, pth)
    (tmp_path / "classes.txt").write_text("cat\ndog\n\nfox\n")
    out = tmp_path / "model.npz"
    assert main(["convert", str(pth), str(out), "--classes", str(tmp_path / "classes.txt"), "--arch", "small",
                 "--resolution", "64"]) == 0
    printed = capsys.readouterr().out
    assert "removed DistributedDataParallel's 'module.' key prefix" in printed and "arch small" in printed

    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "fox"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / name / f"{i}.png")
    assert main(["predict", "--checkpoint", str(out), "--json", str(tmp_path / "photos" / "dog")]) == 0
    import json
    report = json.loads(capsys.readouterr().out)
    assert len(report["predictions"]) == 2
    assert {t["class"] for t in report["predictions"][0]["top"]} == {"cat", "dog", "fox"}
    assert main(["evaluate", "--checkpoint", str(out), "--data-dir", str(tmp_path / "photos"),
                 "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "every image in the class sub-folders" in printed and "central 87.5% kept" in printed
    # evaluate fits the 100x80 photos as predict does (centre crop, not stretch): the same predictions
    predicted = []
    for name in ("cat", "dog", "fox"):
        assert main(["predict", "--checkpoint", str(out), "--json", str(tmp_path / "photos" / name)]) == 0
        predicted += [(name, p["top"][0]["class"]) for p in json.loads(capsys.readouterr().out)["predictions"]]
    names = ["cat", "dog", "fox"]
    expected = np.zeros((3, 3), int)
    for true, guess in predicted:
        expected[names.index(true), names.index(guess)] += 1
    evaluation = json.loads((tmp_path / "eval" / "model_test_evaluation.json").read_text())
    assert evaluation["confusion_matrix"] == expected.tolist()
    assert main(["evaluate", "--checkpoint", str(out)]) == 2
    assert "pass --data-dir DIR" in capsys.readouterr().err
    assert main(["summary", "--checkpoint", str(out)]) == 0
    assert "input 64x64x3" in capsys.readouterr().out
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        assert main(["export", str(out), str(tmp_path / "model.onnx"), "--preprocess"]) == 0
        assert "checked: onnxruntime vs numpymnv2" in capsys.readouterr().out
    (tmp_path / "few.txt").write_text("a\nb\n")
    assert main(["convert", str(pth), str(tmp_path / "x.npz"), "--classes", str(tmp_path / "few.txt")]) == 2
    assert "names 2 classes, but the classifier has 3 outputs" in capsys.readouterr().err


def test_convert_keeps_its_source_and_writes_ordinary_files(tmp_path, model, capsys):
    torch = pytest.importorskip("torch")
    pth = tmp_path / "mnv2.pth"
    torch.save({k: torch.from_numpy(v) for k, v in to_torchvision(model).items()}, pth)
    before = pth.read_bytes()
    assert main(["convert", str(pth), str(pth), "--width", "0.35"]) == 2
    assert "is the source file itself" in capsys.readouterr().err and pth.read_bytes() == before
    out = tmp_path / "w.npz"
    assert main(["convert", str(pth), str(out)]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~mask


def test_convert_refuses_a_pth_claiming_more_than_any_mobilenetv2(tmp_path, capsys):
    import struct
    import zipfile
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data/0", bytes(1000))
    raw = bytearray(bomb.read_bytes())                            # its directory now claims 4 GB uncompressed
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24:central + 28] = struct.pack("<I", 0xFFFFFFF0)
    bomb.write_bytes(bytes(raw))
    assert main(["convert", str(bomb), str(tmp_path / "w.npz")]) == 2
    assert "more than the" in capsys.readouterr().err and not (tmp_path / "w.npz").exists()


def test_convert_without_torch_says_so(tmp_path, monkeypatch, capsys):
    pth = tmp_path / "mnv2.pth"
    pth.write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, "torch", None)         # makes `import torch` raise ImportError
    assert main(["convert", str(pth), str(tmp_path / "w.npz")]) == 2
    assert "needs PyTorch" in capsys.readouterr().err


def test_importing_the_package_does_not_import_torch():
    import subprocess
    code = ("import sys, numpymnv2 as mn; mn.interop; mn.MobileNetV2(num_classes=2, width_mult=0.35); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
