"""Random command lines for every verb: the exit status is 0, 1 or 2, a failure is one line without a traceback,
and a command that fails leaves no file behind.

Each verb has a table of options with values a user might type: sensible small ones, zero and negative numbers,
NaN and infinity, numbers too large for any machine, junk, and paths to nothing, a folder, a text file, a
truncated checkpoint, a decompression bomb. Values that would start long work (many epochs, large networks)
are left out: the point is every way in, not the work itself. Commands run in-process (``numpymnv2.cli.main``)
in a fresh working folder, so default output folders land there and are inspected.
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY_TRAIN, assert_clean_failure, examples, quick_curves, run_cli, scratch, snapshot
from numpymnv2._memory import InsufficientMemoryError
from numpymnv2.cli import COMMANDS, main

SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]

INTS = ["0", "-1", "1", "2", "x", "", "nan", "1.5", "1e3", "99999999999999999999999"]
FLOATS = ["0", "-1", "nan", "inf", "-inf", "1e-300", "1e308", "0.5", "x", ""]
FRACTIONS = ["0", "0.1", "0.5", "1", "-0.1", "nan", "inf", "2"]
FILES = ["@missing", "@folder", "@text", "@empty", "@truncated", "@checkpoint", ""]
IMAGES = ["@digit", "@digit16", "@cut", "@bomb", "@text", "@folder", "@missing"]
OUTS = ["out", "out/nested", "@text", "@text/below", ""]


def options(table: dict):
    """A random selection of ``table``'s options with values: a list of argv pieces."""
    def one(item):
        flag, values = item
        if values is None:
            return st.just([flag])
        return st.sampled_from(values).map(lambda v: [flag, v])
    return st.lists(st.sampled_from(sorted(table.items())).flatmap(one), max_size=5).map(
        lambda parts: [x for part in parts for x in part])


def resolve(argv, inputs, cwd):
    """``@name`` -> the path of that input file; ``@text/below`` -> a path under a file."""
    out = []
    for a in argv:
        if a.startswith("@"):
            name, _, rest = a[1:].partition("/")
            path = inputs[name]
            a = str(path / rest) if rest else str(path)
        out.append(a)
    return out


def check(argv, inputs, allowed=(0, 1, 2)):
    """Run ``argv`` in a fresh folder; assert a clean outcome and, on failure, an untouched file system."""
    inputs_before = snapshot(inputs["folder"].parent)
    with scratch() as cwd:
        before = snapshot(cwd)
        outcome = run_cli(resolve(argv, inputs, cwd))
        assert_clean_failure(outcome, allowed)
        if outcome.status != 0:
            assert snapshot(cwd) == before, f"{argv}: files left behind\n{outcome}"
    assert snapshot(inputs["folder"].parent) == inputs_before, f"{argv} changed its input files"
    return outcome


TRAIN = {
    "--dataset": ["digits", "mnist", "cifar10", "folder", "imagenet", ""],
    "--data-dir": ["@missing", "@folder", "@text"],
    "--resolution": ["16", "32", "0", "-5", "x", "40", "1e2"],
    "--val-fraction": FRACTIONS,
    "--patience": ["0", "1", "-1", "x"],
    "--limit": ["0", "1", "2", "8", "-3", "x"],
    "--width": ["0", "-1", "nan", "inf", "1e9", "0.05", "1e-9", "x"],
    "--arch": ["imagenet", "small", "cifar", "x"],
    "--dropout": ["0", "0.5", "1", "-0.1", "nan"],
    "--dtype": ["float32", "float64", "float16"],
    "--epochs": ["0", "-1", "1", "x", "nan"],
    "--batch-size": ["0", "1", "2", "-4", "x", "1000000000"],
    "--optimizer": ["sgd", "nesterov", "rmsprop", "adam", "adamw", "lbfgs"],
    "--lr": ["0", "-1", "nan", "inf", "1e6", "0.01", "1e-30", "x"],
    "--momentum": ["0", "0.9", "1", "-1", "nan"],
    "--weight-decay": ["0", "-1", "nan", "1e30"],
    "--schedule": ["cosine", "step", "exponential", "constant", "x"],
    "--warmup-epochs": ["0", "1", "-1", "x"],
    "--label-smoothing": FRACTIONS,
    "--seed": ["0", "-1", "99999999999999999999999", "x"],
    "--out": OUTS,
    "--resume": FILES,
    "--overwrite": None,
    "--no-augment": None,
    "--backend": ["fast", "reference", "x"],
}


@settings(max_examples=examples(20), deadline=None, suppress_health_check=SLOW_OK)
@given(extra=options(TRAIN))
def test_train(inputs, extra):
    with quick_curves():
        check(["train", *TINY_TRAIN, *extra], inputs)


EVALUATE = {
    "--checkpoint": FILES,
    "--split": ["train", "val", "test", "x"],
    "--data-dir": ["@missing", "@folder", "@text"],
    "--limit": INTS,
    "--batch-size": INTS,
    "--out": OUTS,
    "--backend": ["fast", "reference", "x"],
}


@settings(max_examples=examples(25), deadline=None, suppress_health_check=SLOW_OK)
@given(extra=options(EVALUATE), checkpoint=st.sampled_from(FILES))
def test_evaluate(inputs, extra, checkpoint):
    check(["evaluate", "--checkpoint", checkpoint, "--limit", "16", "--out", "out", *extra], inputs)


PREDICT = {"--checkpoint": FILES, "--top-k": INTS, "--invert": None, "--no-invert": None,
           "--resize": ["crop", "pad", "squash", "x"], "--json": None, "--csv": None,
           "--backend": ["fast", "reference", "x"]}


@settings(max_examples=examples(25), deadline=None, suppress_health_check=SLOW_OK)
@given(extra=options(PREDICT), images=st.lists(st.sampled_from(IMAGES), min_size=0, max_size=3),
       checkpoint=st.sampled_from(FILES))
def test_predict(inputs, extra, images, checkpoint):
    check(["predict", "--checkpoint", checkpoint, *extra, *images], inputs)


SUMMARY = {"--width": ["0.1", "1", "1e9", "nan", "-1", "x", "1e-9"], "--resolution": ["16", "32", "224", "0", "x",
                                                                                       "100000"],
           "--num-classes": ["0", "1", "10", "1000000000000", "x"], "--arch": ["imagenet", "small", "cifar", "x"],
           "--leaves": None, "--checkpoint": FILES}


@settings(max_examples=examples(25), deadline=None, suppress_health_check=SLOW_OK)
@given(extra=options(SUMMARY))
def test_summary(inputs, extra):
    check(["summary", *extra], inputs)


GRADCHECK_TARGETS = ["conv2d", "depthwise", "pointwise", "batchnorm", "relu6", "relu", "global-avg-pool", "linear",
                     "dropout", "cross-entropy", "inverted-residual", "mobilenetv2", "x"]
GRADCHECK = {
    "--shape": ["2,5,5,3", "1", "2,3", "0,1", "x", "2,5,5,3,1", "2,4,4,8"],
    "--backend": ["fast", "reference", "x"],
    "--out-channels": ["0", "1", "3", "-1", "x"], "--kernel": ["0", "1", "3", "9"], "--stride": ["0", "1", "2"],
    "--padding": ["-1", "0", "1", "4"], "--expand-ratio": ["0", "1", "6"], "--activation": ["relu6", "relu", "x"],
    "--eval": None, "--p": FRACTIONS, "--label-smoothing": FRACTIONS, "--width": ["0.1", "nan", "0", "1e9"],
    "--resolution": ["32", "16", "0"], "--arch": ["cifar", "imagenet", "small"], "--params": ["0", "1", "4", "-2"],
    "--max-coords": ["1", "2", "-1", "x"], "--eps": ["0", "-1", "nan", "inf", "1e-6", "1"],
    "--atol": ["nan", "-1", "inf", "0", "1e-5"], "--rtol": ["nan", "-1", "inf", "0", "1e-3"],
    "--seed": ["0", "-1", "x"],
}


@settings(max_examples=examples(20), deadline=None, suppress_health_check=SLOW_OK)
@given(target=st.sampled_from(GRADCHECK_TARGETS), extra=options(GRADCHECK))
def test_gradcheck(inputs, target, extra):
    outcome = check(["gradcheck", target, "--max-coords", "2", *extra], inputs)
    if outcome.status == 0:
        assert "PASSED" in outcome.out and "(backend: " in outcome.out
    if any(v in ("nan", "inf") for v in extra):
        assert "PASSED" not in outcome.out


RELU_MANIFOLD = {"--dims": ["2", "3", "0", "-1", "x", "100000000"], "--points": ["10", "9", "0", "50", "x"],
                 "--trials": ["1", "0", "-1", "x"], "--activation": ["relu", "relu6", "identity", "x"],
                 "--seed": ["0", "-1", "x"], "--tol": FLOATS, "--radius": FLOATS, "--out": OUTS}


@settings(max_examples=examples(12), deadline=None, suppress_health_check=SLOW_OK)
@given(extra=options(RELU_MANIFOLD))
def test_relu_manifold(inputs, extra):
    check(["relu-manifold", "--points", "20", "--trials", "1", "--dims", "2", "3", "--out", "out", *extra], inputs)


ABLATE = {"--variants": ["paper", "x"], "--seeds": ["0", "-1", "x"], "--dataset": ["digits", "x", ""],
          "--width": ["0", "nan", "-1", "1e9"], "--arch": ["imagenet", "cifar", "x"],
          "--resolution": ["16", "0", "x"], "--epochs": ["0", "-1", "x"], "--batch-size": ["0", "1", "x"],
          "--optimizer": ["x"], "--lr": ["0", "nan", "-1"], "--weight-decay": ["-1", "nan"],
          "--limit": ["0", "1", "x"], "--val-fraction": ["1", "-0.1", "nan"], "--threshold": ["nan", "-1"],
          "--jobs": ["0", "-1", "x"], "--out": ["@text", "@text/below"]}


@settings(max_examples=examples(15), deadline=None, suppress_health_check=SLOW_OK)
@given(extra=options(ABLATE).filter(lambda a: a), junk=st.sampled_from(ABLATE["--epochs"]))
def test_ablate_refuses_bad_options_before_training(inputs, extra, junk):
    # every value in the table is wrong, and --epochs always is: nothing may train, everything must be refused
    check(["ablate", "--epochs", junk, *extra], inputs, allowed=(2,))


SPARSITY = {"--checkpoint": FILES, "--threshold": FLOATS, "--mode": ["relative", "absolute", "x"], "--out": OUTS}


@settings(max_examples=examples(20), deadline=None, suppress_health_check=SLOW_OK)
@given(extra=options(SPARSITY), checkpoint=st.sampled_from(FILES))
def test_sparsity(inputs, extra, checkpoint):
    check(["sparsity", "--checkpoint", checkpoint, "--out", "out", *extra], inputs)


CONVERT = {"--width": ["1", "0", "nan", "-1", "x"], "--num-classes": ["0", "3", "-1", "x"],
           "--dtype": ["float32", "float64", "x"], "--arch": ["imagenet", "small", "x"], "--classes": FILES,
           "--resolution": ["224", "16", "x"]}


@settings(max_examples=examples(15), deadline=None, suppress_health_check=SLOW_OK)
@given(source=st.sampled_from(FILES), output=st.sampled_from(["out.npz", "@folder", "@text", "@checkpoint", "@text/x"]),
       extra=options(CONVERT))
def test_convert(inputs, source, output, extra):
    check(["convert", source, output, *extra], inputs)


@settings(max_examples=examples(10), deadline=None, suppress_health_check=SLOW_OK)
@given(rounds=st.sampled_from(["0", "-1", "x", "nan", ""]), extra=options({
    "--suite": ["ops", "x"], "--reps": ["0", "-3", "x"], "--quick": None, "--no-torch": None,
    "--json": ["@folder", "@text/x"]}))
def test_bench_refuses_bad_options_before_timing(inputs, rounds, extra):
    check(["bench", "--rounds", rounds, *extra], inputs, allowed=(2,))


@settings(max_examples=examples(25), deadline=None, suppress_health_check=SLOW_OK)
@given(verb=st.sampled_from(sorted(COMMANDS)), junk=st.lists(st.sampled_from(
    ["--bogus", "-x", "--", "\x00", "--debug=1", "é", "-", "--help=no", "--out", "--checkpoint"]), min_size=1,
    max_size=3))
def test_every_verb_refuses_junk_options(inputs, verb, junk):
    # "--bogus" last: a draw such as ["--out", "é"] is otherwise a valid command (ablate then trained 15 runs)
    check([verb, *junk, "--bogus"], inputs, allowed=(2,))


def test_every_verb_and_the_command_itself_have_help(inputs):
    for argv in ([], ["--help"], *([verb, "--help"] for verb in sorted(COMMANDS))):
        outcome = check(argv, inputs, allowed=(0,))
        assert "usage:" in outcome.out


def test_debug_lets_the_exception_through(inputs):
    for argv in (["--debug", "summary", "--width", "1e9"], ["summary", "--width", "1e9", "--debug"]):
        with scratch(), pytest.raises(InsufficientMemoryError, match="memory"):
            main(argv)
    assert check(["summary", "--width", "1e9"], inputs, allowed=(2,)).err.count("\n") == 1


def test_a_full_disk_and_exhausted_memory_end_in_one_line_with_status_1(inputs, monkeypatch):
    import errno

    import numpy as np

    from numpymnv2.train import trainer as trainer_module

    def disk_full(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    with quick_curves():
        monkeypatch.setattr(np, "savez", disk_full)
        outcome = check(["train", *TINY_TRAIN, "--out", "run"], inputs, allowed=(1,))
        assert "No space left on device" in outcome.err and "no last.npz was written" in outcome.err
        monkeypatch.undo()

        def out_of_memory(self, x, y):
            raise MemoryError("Unable to allocate 3.1 GiB for an array with shape (64, 112, 112, 96)")

        monkeypatch.setattr(trainer_module.Trainer, "train_step", out_of_memory)
        outcome = check(["train", *TINY_TRAIN, "--out", "run"], inputs, allowed=(1,))
        assert "out of memory (Unable to allocate 3.1 GiB" in outcome.err and "--batch-size" in outcome.err
    assert outcome.err.count("\n") == 1


EXPORT = {"--opset": ["0", "-1", "13", "17", "x", "99"], "--preprocess": None, "--softmax": None, "--no-check": None,
          "--tolerance": FLOATS, "--arch": ["imagenet", "small", "cifar", "x"], "--width": ["nan", "0", "1e9", "0.1"],
          "--num-classes": ["0", "-1", "3", "x"]}


@settings(max_examples=examples(15), deadline=None, suppress_health_check=SLOW_OK)
@given(source=st.sampled_from(FILES), output=st.sampled_from(["out.onnx", "@folder", "@text", "@checkpoint"]),
       extra=options(EXPORT))
def test_export(inputs, source, output, extra):
    check(["export", source, output, *extra], inputs)


# Every option or argument that names a file or folder, with the rest of a command line that would run.
EMPTY_PATH_CASES = [
    ["train", "--out", "{}"], ["train", "--data-dir", "{}", "--dataset", "folder"], ["train", "--resume", "{}"],
    ["evaluate", "--checkpoint", "{}"], ["evaluate", "--checkpoint", "@checkpoint", "--out", "{}"],
    ["evaluate", "--checkpoint", "@checkpoint", "--data-dir", "{}"],
    ["predict", "--checkpoint", "{}", "@digit"], ["predict", "--checkpoint", "@checkpoint", "{}"],
    ["predict", "--checkpoint", "@checkpoint", "@digit", "--output", "{}"],
    ["summary", "--checkpoint", "{}"], ["sparsity", "--checkpoint", "{}"],
    ["sparsity", "--checkpoint", "@checkpoint", "--out", "{}"], ["relu-manifold", "--out", "{}"],
    ["ablate", "--out", "{}"], ["ablate", "--data-dir", "{}"], ["bench", "--json", "{}"],
    ["convert", "{}", "out.npz"], ["convert", "@text", "{}"], ["convert", "@text", "out.npz", "--classes", "{}"],
    ["export", "{}", "out.onnx"], ["export", "@checkpoint", "{}"],
]


@pytest.mark.parametrize("blank", ["", " "])
@pytest.mark.parametrize("case", EMPTY_PATH_CASES, ids=" ".join)
def test_an_empty_file_or_folder_name_is_refused_not_read_as_a_default(inputs, case, blank):
    """``evaluate --out ''`` wrote its report next to the checkpoint (an empty name read as "not given"), and
    ``relu-manifold --out ''`` into the working folder: every path option now refuses an empty name."""
    outcome = check([a.format(blank) for a in case], inputs, allowed=(2,))
    assert f"expected a file or folder name, got {blank!r}" in outcome.err
