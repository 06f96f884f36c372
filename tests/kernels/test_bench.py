"""Smoke test of the benchmark harness on tiny shapes (it asserts no timings)."""
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
