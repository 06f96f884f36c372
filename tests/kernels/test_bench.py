"""Smoke test of the benchmark harness on tiny shapes (it asserts no timings)."""
import pytest

from numpymnv2 import bench


def test_numpymnv2_worker_and_tables_on_tiny_shapes():
    spec = {"depthwise": [(2, 6, 6, 8, 1), (2, 6, 6, 8, 2)], "bn": [(2, 4, 4, 8)], "pointwise": [(2, 4, 4, 8, 16)],
            "reps": 1, "warmup": 1}
    res = bench._worker("numpymnv2", "ops", spec)
    names = set(res["times"])
    assert {"dw 2x6x6x8 s1", "dw 2x6x6x8 s2", "bn+relu6 2x4x4x8", "pw 2x4x4 8->16", "matmul 2x4x4 8->16"} <= names
    assert res["meta"]["threads"]["numba_num_threads"] >= 1
    ms = {"numpymnv2": {k: 1e3 * v[0] + 1e-3 for k, v in res["times"].items()}}
    table = bench._op_table({"ms": ms, "min_ms": ms}, ("numpymnv2",), 100.0, 150.0)
    assert any(line.startswith("| dw 2x6x6x8 s2 |") for line in table)
    assert any(line.startswith(bench.RATIO_NOTE) for line in table)     # which way the ratios read
    assert "below 1 numpymnv2 is faster" in bench.RATIO_NOTE
    assert bench._op_flops("dw 2x6x6x8 s2") == 3 * 2 * 9 * 2 * 3 * 3 * 8


def test_model_rows_use_the_library_optimizer():
    model, _, _ = bench._np_model(("train tiny", 2, 32, 0.35, 10, "imagenet", "train"))
    step, name = bench._np_optimizer(model)
    assert name == "numpymnv2.optim.SGD" and type(step.__self__).__name__ == "SGD"


def test_without_threadpoolctl_bench_says_what_to_install(monkeypatch, capsys):
    real_find_spec = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name, *args: None if name == "threadpoolctl" else real_find_spec(name, *args))
    parser = bench.argparse.ArgumentParser()
    bench.configure_parser(parser)
    assert bench.run(parser.parse_args(["--suite", "ops", "--no-torch"])) == 2
    assert "needs threadpoolctl" in capsys.readouterr().err


def test_inference_rows_run_the_fused_model_and_onnxruntime(monkeypatch):
    row = ("infer tiny", 2, 32, 0.35, 10, "imagenet", "infer")
    fn, meta = bench._np_step_fn(row)
    assert meta == {"inference": "model.fuse()"} and fn().shape == (2, 10)
    if not bench._onnxruntime_available():
        pytest.skip("onnx and onnxruntime are not installed")
    train_row = ("train tiny", 2, 32, 0.35, 10, "imagenet", "train")
    res = bench._worker("ort-model", "model", {"rows": [train_row, row], "reps": 1, "warmup": 1})
    assert list(res["times"]) == ["infer tiny"] and res["times"]["infer tiny"][0] > 0   # inference rows only
    monkeypatch.setattr(bench, "MODEL_ROWS", [train_row, row])
    ms = {"numpymnv2": {"infer tiny": 2.0, "train tiny": 5.0}, "ort-model": {"infer tiny": 1.0}}
    table = bench._model_table({"ms": ms, "min_ms": ms, "load_average_end": (0.0, 0.0, 0.0)}, ("numpymnv2",))
    assert any(line.startswith("| infer tiny |") and line.endswith("| 1.0 | 2.00 |") for line in table)
    assert any(line.startswith("| train tiny |") and line.endswith("| - | - |") for line in table)
    assert any(bench.RATIO_NOTE in line for line in table)
