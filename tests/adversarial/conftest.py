"""Shared pieces of the adversarial suite: an in-process CLI runner, file-tree snapshots, a tiny trained run.

The suite attacks every entry point with what a careless or hostile user can hand it: corrupt and malicious
files for every reader, random command lines for every verb, processes killed in the middle of a save, two runs
on one folder, learning rates that diverge. What it asserts is the same everywhere: an expected error is one
line and exit status 2 (bad usage or input) or 1 (the work failed), never a traceback, and a failed command
leaves no partial output behind.

Example counts follow the Hypothesis profile (``tests/conftest.py``): ``HYPOTHESIS_PROFILE=thorough`` runs many
more cases. ``examples(n)`` gives ``n`` under the default profile and the profile's own count otherwise.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

from adversarial_files import png_claiming
from numpymnv2.cli import main

TINY_TRAIN = ["--width", "0.1", "--limit", "32", "--batch-size", "16", "--epochs", "1", "--no-progress"]
DEFAULT_PROFILE = settings.get_profile("ci")


def examples(n: int) -> int:
    """``n`` examples under the default profile, the profile's own (larger) count under any other."""
    current = settings.default.max_examples
    return n if current <= DEFAULT_PROFILE.max_examples else current


@dataclass
class Outcome:
    status: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.status}\n--- stdout\n{self.out[-2000:]}\n--- stderr\n{self.err[-3000:]}"


def run_cli(argv) -> Outcome:
    """``numpymnv2 *argv`` in this process; stdout and stderr captured, argparse's exits turned into a status.

    An exception that ``main`` lets through (its verdict: a bug) propagates and fails the test.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return Outcome(int(status), out.getvalue(), err.getvalue())


def assert_clean_failure(outcome: Outcome, allowed=(0, 1, 2)) -> None:
    """The status is one of ``allowed``; a failure says why in one ``error:`` line and shows no traceback."""
    assert outcome.status in allowed, str(outcome)
    assert "Traceback" not in outcome.err and "Traceback" not in outcome.out, str(outcome)
    if outcome.status != 0:
        assert outcome.err.strip(), str(outcome)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``folder``: relative path -> (size, modification time in ns) for a file,
    (-1, 0) for a folder (whose time changes when a file is made and removed in it, which is allowed)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[str((Path(root) / name).relative_to(folder))] = (-1, 0)
        for name in files:
            p = Path(root) / name
            st = p.lstat()
            found[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return found


@contextlib.contextmanager
def working_dir(path: Path):
    """``cd path`` for the block (contextlib.chdir needs Python 3.11)."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(before)


@contextlib.contextmanager
def scratch():
    """A fresh empty folder, the working directory for the block (Hypothesis examples cannot share tmp_path),
    with ``NUMPYMNV2_DATA`` pointing at nothing, so no dataset of the machine is found by accident."""
    with tempfile.TemporaryDirectory(prefix="numpymnv2-adv-") as d, working_dir(Path(d)) as p:
        before = os.environ.get("NUMPYMNV2_DATA")
        os.environ["NUMPYMNV2_DATA"] = str(p / "no-data-here")
        try:
            yield p
        finally:
            if before is None:
                del os.environ["NUMPYMNV2_DATA"]
            else:
                os.environ["NUMPYMNV2_DATA"] = before


def _plain_png(path, history, title="", label_smoothing=0.0):
    """The curves file without matplotlib's drawing, which dominates a tiny run's time (figures are tested in
    tests/train; here only that the file appears)."""
    from numpymnv2._atomic import atomic_write
    return atomic_write(path, lambda f: f.write(b"\x89PNG\r\n\x1a\n"))


@contextlib.contextmanager
def quick_curves():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("numpymnv2.train.trainer.plot_curves", _plain_png)
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished one-epoch run of a width-0.1 MobileNetV2 on 32 digits (tests copy what they modify)."""
    out = tmp_path_factory.mktemp("adversarial-run") / "run"
    outcome = run_cli(["train", "--out", out, *TINY_TRAIN])
    assert outcome.status == 0, str(outcome)
    return out


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, tiny_run) -> dict[str, Path]:
    """Files a fuzzed command line may name: good, bad and hostile ones (read-only for the tests)."""
    d = tmp_path_factory.mktemp("adversarial-inputs")
    (d / "folder").mkdir()
    (d / "text.txt").write_text("not an image, not a checkpoint\n")
    (d / "empty.npz").write_bytes(b"")
    Image.new("L", (8, 8), 200).save(d / "digit.png")
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(d / "digit16.png")
    data = (d / "digit.png").read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 2])
    (d / "bomb.png").write_bytes(png_claiming(30000, 30000))
    shutil.copy(tiny_run / "last.npz", d / "checkpoint.npz")
    ckpt = (d / "checkpoint.npz").read_bytes()
    (d / "truncated.npz").write_bytes(ckpt[: len(ckpt) // 3])
    return {p.stem if p.is_file() else p.name: p for p in d.iterdir()} | {"missing": d / "missing.npz"}
