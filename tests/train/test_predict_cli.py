"""``numpymnv2 predict`` on real image files: polarity, area-averaged shrinking, aspect ratio, folders, partial
failures, JSON and CSV. The checkpoint is an untrained network with the digits' preprocessing record, written with
:func:`numpymnv2.train.inference.save_model_checkpoint` (no training needed to check how images are read)."""
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from numpymnv2.cli import main
from numpymnv2.data import channel_stats, load_dataset
from numpymnv2.models import MobileNetV2
from numpymnv2.models.mobilenetv2 import arch_kwargs
from numpymnv2.train.inference import (load_image, load_trained_model, polarity_mismatch, predict_proba,
                                       save_model_checkpoint)


@pytest.fixture(scope="module")
def digits_test():
    return load_dataset("digits", split="test")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A width-0.1 network with the digits' preprocessing: 8x8 grayscale, light strokes on black."""
    train = load_dataset("digits", split="train")
    mean, std = channel_stats(train.images)
    preprocess = {"image_size": [8, 8], "channels": 1, "resolution": 32, "mean": [float(mean[0])] * 3,
                  "std": [float(std[0])] * 3, "dtype": "float32", "crop_padding": 0, "flip": False}
    model = MobileNetV2(num_classes=10, width_mult=0.1, seed=1, **arch_kwargs("small"))
    return save_model_checkpoint(tmp_path_factory.mktemp("ckpt") / "digits.npz", model, preprocess,
                                 [str(k) for k in range(10)])


def save(path, x):
    Image.fromarray(np.asarray(x, np.uint8)).save(path)
    return str(path)


def enlarged(x8, size=128):
    """An 8x8 digit as a size x size image, each pixel a block (as a viewer's nearest-neighbour zoom)."""
    return np.kron(x8[:, :, 0], np.ones((size // 8, size // 8), np.uint8))


def test_shrinking_averages_areas_so_an_enlarged_digit_comes_back_exactly(checkpoint, digits_test, tmp_path):
    """Every block of a 128x128 digit averages back to its 8x8 pixel; the bilinear filter (before) blurred
    neighbouring blocks into each other."""
    _, ckpt = load_trained_model(checkpoint)
    pre = ckpt.config["preprocess"]
    for i in range(20):
        x, notes = load_image(save(tmp_path / f"{i}.png", enlarged(digits_test.images[i])), pre)
        np.testing.assert_array_equal(x, digits_test.images[i])
        assert notes == []
    bilinear = np.asarray(Image.open(tmp_path / "0.png").resize((8, 8), Image.BILINEAR))
    assert not np.array_equal(bilinear, digits_test.images[0, :, :, 0])       # what it was


def test_dark_on_light_images_are_inverted_and_the_output_says_so(checkpoint, digits_test, tmp_path, capsys):
    light = save(tmp_path / "light_digit.png", enlarged(digits_test.images[3]))
    dark = save(tmp_path / "dark_digit.png", 255 - enlarged(digits_test.images[3]))
    assert main(["predict", "--checkpoint", str(checkpoint), "--top-k", "10", light, dark]) == 0
    out = capsys.readouterr().out
    first, second = out.split(dark)
    assert "note:" not in first
    assert "note: inverted: dark on light" in second and "trained on light on dark (0.31)" in second
    assert "--no-invert" in second
    # the inverted image is predicted exactly as the light original
    assert [line for line in first.splitlines() if ". " in line] == \
        [line for line in second.splitlines() if ". " in line]

    assert main(["predict", "--checkpoint", str(checkpoint), "--no-invert", "--json", dark]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["invert"] == "never" and report["predictions"][0]["inverted"] is False
    assert "looks inverted" in report["predictions"][0]["notes"][0]
    assert main(["predict", "--checkpoint", str(checkpoint), "--invert", "--json", light]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["inverted"] is True


def test_polarity_is_judged_only_for_clearly_dark_or_light_training_images(digits_test):
    digit = digits_test.images[0]
    digits_pre = {"mean": [0.31] * 3}
    assert polarity_mismatch(digit, digits_pre) is None
    assert "dark on light" in polarity_mismatch(255 - digit, digits_pre)
    imagenet_pre = {"mean": [0.485, 0.456, 0.406]}          # photos: never flagged
    assert polarity_mismatch(255 - digit, imagenet_pre) is None and polarity_mismatch(digit, imagenet_pre) is None
    assert "light on dark" in polarity_mismatch(digit, {"mean": [0.9] * 3})


@pytest.mark.parametrize("mode, kept", [("crop", "centre 64x64 kept"), ("pad", "padded to 128x128"),
                                        ("squash", "stretched")])
def test_non_square_images_are_cropped_padded_or_squashed_and_the_output_says_which(checkpoint, tmp_path, capsys,
                                                                                     mode, kept):
    wide = np.zeros((64, 128), np.uint8)
    wide[:, 32:96] = 200            # a bright square in the middle of black margins
    path = save(tmp_path / "wide.png", wide)
    argv = ["predict", "--checkpoint", str(checkpoint), path] + (["--resize", mode] if mode != "crop" else [])
    assert main(argv) == 0
    assert f"note: 128x64, {kept}" in capsys.readouterr().out
    _, ckpt = load_trained_model(checkpoint)
    x, _ = load_image(path, ckpt.config["preprocess"], mode)
    if mode == "crop":
        assert (x == 200).all()                          # only the square is left
    elif mode == "pad":
        assert (x[:2] == 0).all() and (x[6:] == 0).all() and (x[2:6, 3:5] == 200).all()   # black above, below
    else:
        assert (x[:, :2] == 0).all() and (x[:, 3:5] == 200).all()


def test_folders_and_unreadable_files_one_error_each_the_rest_predicted(checkpoint, digits_test, tmp_path,
                                                                         capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    for name, i in (("b.png", 1), ("a.png", 0), ("c.jpg", 2)):
        save(folder / name, enlarged(digits_test.images[i], 32))
    (folder / "notes.txt").write_text("not an image, and skipped: not an image file name")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    argv = ["predict", "--checkpoint", str(checkpoint), "--top-k", "1", str(tmp_path / "missing.png"), str(folder),
            str(broken), str(tmp_path / "empty_folder")]
    (tmp_path / "empty_folder").mkdir()
    assert main(argv + ["--csv", "--output", str(tmp_path / "p.csv")]) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("numpymnv2 predict: error: ") for line in errors)
    assert "missing.png does not exist" in errors[0] and "broken.png" in errors[1]
    assert "no image files" in errors[2] and "3 of 6 images could not be read" in errors[3]
    assert "Traceback" not in captured.err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert [r["image"] for r in rows] == [str(folder / n) for n in ("a.png", "b.png", "c.jpg")]
    assert [r["rank"] for r in rows] == ["1", "1", "1"] and all(0 <= float(r["probability"]) <= 1 for r in rows)
    assert captured.out == f"wrote 3 predictions to {tmp_path / 'p.csv'}\n"


def test_json_to_stdout_matches_predict_proba(checkpoint, digits_test, tmp_path, capsys):
    paths = [save(tmp_path / f"d{i}.png", digits_test.images[i, :, :, 0]) for i in range(3)]
    assert main(["predict", "--checkpoint", str(checkpoint), "--json", "--top-k", "2", *paths]) == 0
    report = json.loads(capsys.readouterr().out)            # nothing but the JSON on stdout
    model, ckpt = load_trained_model(checkpoint)
    probs = predict_proba(model, digits_test.images[:3], ckpt.config["preprocess"])
    for entry, p, path in zip(report["predictions"], probs, paths):
        assert entry["image"] == path and len(entry["top"]) == 2
        best = int(np.argmax(p))
        assert entry["top"][0] == {"class": str(best), "probability": pytest.approx(float(p[best]), rel=1e-6)}
    assert report["errors"] == []
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--checkpoint", str(checkpoint), "--json", "--csv", paths[0]])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(checkpoint), "--output", paths[0], paths[0]]) == 2
    assert "is the source file itself" in capsys.readouterr().err


def test_center_crop_keeps_the_central_share_as_torchvision_resize_then_center_crop(tmp_path):
    # a 16x16 image whose one-pixel border is white: keeping the central 14/16 = 0.875 cuts exactly the border
    x = np.zeros((16, 16), np.uint8)
    x[0, :] = x[-1, :] = x[:, 0] = x[:, -1] = 255
    path = save(tmp_path / "framed.png", x)
    pre = {"image_size": [14, 14], "channels": 1}
    kept, _ = load_image(path, dict(pre, center_crop=0.875))
    assert kept.shape == (14, 14, 1) and kept.max() == 0
    whole, _ = load_image(path, pre)                    # no center_crop: the whole image, the border shrunk in
    assert whole[0].min() > 0 and whole[:, 0].min() > 0
    padded, _ = load_image(path, dict(pre, center_crop=0.875), resize="pad")    # crop only with --resize crop
    assert padded[0].min() > 0
    with pytest.raises(ValueError, match=r"center_crop must be a fraction in \(0, 1\], got 1.5"):
        load_image(path, dict(pre, center_crop=1.5))
