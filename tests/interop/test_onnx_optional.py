"""onnx and onnxruntime stay optional: nothing imports them until an export runs, and their absence is explained.

These tests run with or without the packages installed (they block the imports themselves).
"""
import subprocess
import sys

import pytest

from numpymnv2.cli import main
from numpymnv2.interop import to_onnx
from numpymnv2.models import MobileNetV2, save_weights


def test_the_package_and_the_export_command_import_without_onnx():
    code = ("import sys; import numpymnv2, numpymnv2.interop, numpymnv2.interop.export; "
            "from numpymnv2.cli import build_parser; build_parser(['export', '--help']); "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_onnx_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    model = MobileNetV2(num_classes=3, width_mult=0.1, seed=0).eval()
    with pytest.raises(ImportError, match=r'needs the onnx package.*pip install "numpymnv2\[onnx\]"'):
        to_onnx(model, tmp_path / "m.onnx")
    save_weights(model, tmp_path / "w.npz")
    assert main(["export", str(tmp_path / "w.npz"), str(tmp_path / "m.onnx")]) == 2
    assert 'pip install "numpymnv2[onnx]"' in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]


def test_missing_onnxruntime_names_the_extra_and_the_way_around(monkeypatch, tmp_path):
    pytest.importorskip("onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = MobileNetV2(num_classes=3, width_mult=0.1, seed=0).eval()
    with pytest.raises(ImportError, match=r'needs onnxruntime.*numpymnv2\[onnx\].*check=False'):
        to_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    assert to_onnx(model, tmp_path / "m.onnx", check=False).check is None
