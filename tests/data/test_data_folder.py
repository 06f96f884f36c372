import numpy as np
import pytest
from PIL import Image

from numpymnv2.data import load_dataset


def save(path, color, size=(6, 4), mode="RGB"):
    """A solid image of ``size`` = (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_flat_layout(tmp_path):
    save(tmp_path / "dog" / "b.png", (0, 0, 255))
    save(tmp_path / "dog" / "a.png", (0, 255, 0))
    save(tmp_path / "cat" / "x.bmp", (255, 0, 0))
    save(tmp_path / "cat" / "y.PNG", 128, mode="L")        # grayscale becomes RGB; extension case ignored
    (tmp_path / "cat" / "notes.txt").write_text("skipped")
    (tmp_path / "stray.png").write_bytes(b"not in a class folder")
    ds = load_dataset("folder", tmp_path)
    assert ds.classes == ["cat", "dog"] and ds.name == "folder"
    assert ds.images.shape == (4, 4, 6, 3) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.labels.dtype == np.int64
    assert ds.images[:, 0, 0].tolist() == [[255, 0, 0], [128, 128, 128], [0, 255, 0], [0, 0, 255]]


def test_flat_layout_has_no_test_split(tmp_path):
    save(tmp_path / "a" / "1.png", (1, 2, 3))
    with pytest.raises(FileNotFoundError, match="test"):
        load_dataset("folder", tmp_path, split="test")


def test_split_layout_shares_train_classes(tmp_path):
    for c in ("ant", "bee", "cow"):
        save(tmp_path / "train" / c / "0.png", (10, 10, 10))
    save(tmp_path / "val" / "cow" / "0.jpg", (200, 200, 200))
    test = load_dataset("folder", tmp_path, split="test")             # no test/: falls back to val/
    assert test.classes == ["ant", "bee", "cow"] and test.labels.tolist() == [2]
    assert len(load_dataset("folder", tmp_path, split="val")) == 1
    assert len(load_dataset("folder", tmp_path, split="train")) == 3


def test_unknown_test_class(tmp_path):
    save(tmp_path / "train" / "ant" / "0.png", 0)
    save(tmp_path / "test" / "wasp" / "0.png", 0)
    with pytest.raises(ValueError, match="wasp"):
        load_dataset("folder", tmp_path, split="test")


def test_sizes_must_match_unless_resized(tmp_path):
    save(tmp_path / "a" / "0.png", (9, 9, 9), size=(6, 4))
    save(tmp_path / "a" / "1.png", (9, 9, 9), size=(5, 5))
    with pytest.raises(ValueError) as err:
        load_dataset("folder", tmp_path)
    assert "1.png" in str(err.value) and "5x5" in str(err.value) and "6x4" in str(err.value)
    ds = load_dataset("folder", tmp_path, size=(8, 16))
    assert ds.images.shape == (2, 8, 16, 3)
    assert (ds.images == 9).all()


def test_center_crop_fits_each_image_as_predict_and_torchvision_do(tmp_path):
    """With center_crop, a wide image loses its sides and then its outer 12.5% instead of being squeezed; the
    arrays equal what predict's load_image makes of each file."""
    from numpymnv2.train.inference import load_image
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, 20:60] = 200                                     # a bright centre 40 wide, dark sides
    wide[10:30, 30:50] = 50                                  # and a dark square inside it
    (tmp_path / "a").mkdir()
    Image.fromarray(wide).save(tmp_path / "a" / "wide.png")
    tall = np.random.default_rng(0).integers(0, 255, (90, 30, 3), dtype=np.uint8)
    Image.fromarray(tall).save(tmp_path / "a" / "tall.png")
    cropped = load_dataset("folder", tmp_path, size=16, center_crop=0.875)
    stretched = load_dataset("folder", tmp_path, size=16)
    pre = {"image_size": [16, 16], "channels": 3, "center_crop": 0.875}
    for k, name in enumerate(["tall.png", "wide.png"]):
        assert np.array_equal(cropped.images[k], load_image(tmp_path / "a" / name, pre)[0])
    crop_wide, squeezed = cropped.images[1], stretched.images[1]
    assert crop_wide[:, [0, -1]].min() > 150                 # the dark sides are cut off, not squeezed in
    assert squeezed[:, [0, -1]].max() < 10
    assert crop_wide[8, 8].max() == 50                       # the square still at the centre
    with pytest.raises(ValueError, match="center_crop=0.875 needs size"):
        load_dataset("folder", tmp_path, center_crop=0.875)


def test_missing_root_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("folder", tmp_path / "nowhere")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        load_dataset("folder", tmp_path)
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("folder")


def test_corrupt_image(tmp_path):
    save(tmp_path / "a" / "0.png", 0)
    (tmp_path / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="1.png"):
        load_dataset("folder", tmp_path)
