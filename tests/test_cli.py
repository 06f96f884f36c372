"""The ``numpymnv2`` command as a whole: one vocabulary across verbs, help for every option, ``--version``."""
import argparse
import re
import subprocess
import sys

import pytest

import numpymnv2
from numpymnv2.cli import COMMANDS, build_parser, main


def verb_parser(name: str) -> argparse.ArgumentParser:
    """The fully configured parser of one verb, as ``numpymnv2 NAME ...`` builds it."""
    parser, _ = build_parser([name])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def options(parser: argparse.ArgumentParser) -> dict:
    """``{"--flag" or "positional": action}`` of every argument a user can see."""
    return {(a.option_strings[-1] if a.option_strings else a.dest): a for a in parser._actions
            if a.help is not argparse.SUPPRESS}


@pytest.mark.parametrize("verb", list(COMMANDS))
def test_every_option_of_every_verb_has_help_text(verb):
    def says_something(text):      # more than a default: "(default: 64)" alone does not say what the option does
        return re.sub(r"\(default[^)]*\)", "", text or "").strip(" .")

    missing = [name for name, action in options(verb_parser(verb)).items() if not says_something(action.help)]
    assert not missing, f"numpymnv2 {verb}: options without help text: {missing}"


def test_every_verb_that_builds_a_network_offers_the_same_arch():
    """--arch: the same choices and the same description of the layouts everywhere (only the default differs)."""
    archs = {verb: options(verb_parser(verb)).get("--arch") for verb in COMMANDS}
    builders = {"train", "summary", "gradcheck", "ablate", "export"}
    assert builders <= {verb for verb, a in archs.items() if a is not None}
    first = archs["train"]
    assert tuple(first.choices) == ("imagenet", "small", "cifar")
    for verb in builders:
        assert tuple(archs[verb].choices) == tuple(first.choices), verb
        assert archs[verb].help.split(" (default: ")[0] == first.help.split(" (default: ")[0], verb
    assert not any("--preset" in options(verb_parser(verb)) for verb in COMMANDS)   # hidden, deprecated


def test_preset_still_works_as_a_deprecated_spelling_of_arch(capsys):
    assert main(["summary", "--preset", "cifar", "--resolution", "32", "--num-classes", "10"]) == 0
    captured = capsys.readouterr()
    assert "arch=cifar" in captured.out and "4x4x1280" in captured.out
    assert "--preset is deprecated, use --arch cifar" in captured.err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"numpymnv2 {numpymnv2.__version__}"


def test_dir_lists_the_lazy_names():
    names = dir(numpymnv2)
    for name in ("MobileNetV2", "InvertedResidual", "summary", "save_weights", "load_weights", "interop", "nn",
                 "optim", "data", "train", "experiments", "functional", "kernels", "ops", "__version__"):
        assert name in names, name
    for name in numpymnv2.__all__:
        assert name in names and getattr(numpymnv2, name) is not None


def test_the_readme_library_snippet_builds_the_network_train_builds_by_default(tmp_path, monkeypatch):
    from pathlib import Path

    from numpymnv2.train.config import TrainConfig, build_model, model_spec
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## The library"):]
    code = section[section.index("```python") + len("```python"):section.index("```", section.index("```python") + 3)]
    monkeypatch.chdir(tmp_path)             # the snippet writes weights.npz
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    trained = build_model(model_spec(TrainConfig(), 10))
    assert namespace["model"].config == trained.config
    assert namespace["same"].config == trained.config


def test_summary_of_a_checkpoint_prints_the_trained_model(tmp_path, capsys):
    from numpymnv2.models import MobileNetV2
    from numpymnv2.models.mobilenetv2 import arch_kwargs
    from numpymnv2.train.inference import save_model_checkpoint

    model = MobileNetV2(num_classes=7, width_mult=0.5, **arch_kwargs("cifar"))
    preprocess = {"image_size": [40, 40], "channels": 3, "resolution": 40, "mean": [0.5] * 3, "std": [0.25] * 3,
                  "dtype": "float32", "crop_padding": 0, "flip": False}
    path = save_model_checkpoint(tmp_path / "m.npz", model, preprocess, list("abcdefg"))
    assert main(["summary", "--checkpoint", str(path)]) == 0
    out = capsys.readouterr().out
    assert "num_classes=7" in out and "arch cifar" in out and "input 40x40x3" in out
    assert f"total parameters {model.num_parameters():,}" in out and "5x5x1280" in out   # 40 px / 8
    assert main(["summary", "--checkpoint", str(path), "--width", "1.0"]) == 2
    assert "--width 1.0 (the file has 0.5)" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["summary"], ["summary", "--arch", "small", "--width", "0.35", "--resolution", "32"]])
def test_a_closed_pipe_ends_quietly_with_141(argv):
    # `numpymnv2 summary | head -1`, with the reader gone before the first write: no error line, no traceback
    proc = subprocess.Popen([sys.executable, "-m", "numpymnv2", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
