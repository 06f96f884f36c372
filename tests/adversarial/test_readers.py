"""Every reader against damaged and hostile files: it returns what the (damaged) file validly holds, or raises the
error its documentation promises, naming the file; never another exception, never an allocation the file's
size cannot justify."""
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from adversarial_files import damaged, gz, idx_bytes, npy_header_claiming, npz_bytes, png_claiming
from conftest import examples
from numpymnv2._memory import InsufficientMemoryError
from numpymnv2.data import load_dataset, read_cifar_batch, read_idx
from numpymnv2.data.images import read_image
from numpymnv2.models import MobileNetV2
from numpymnv2.models.io import load_weights, save_weights
from numpymnv2.train.inference import load_trained_model

SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


def read_back(read, data: bytes, name: str, errors=(ValueError,)):
    """``(result, None)``, or ``(None, message)`` when ``read`` refused a file ``name`` holding ``data`` with one
    of ``errors``; any other exception fails the test."""
    folder = Path(tempfile.mkdtemp(prefix="numpymnv2-adv-"))
    path = folder / name
    path.write_bytes(data)
    try:
        return read(path), None
    except errors as exc:
        return None, str(exc)
    finally:
        shutil.rmtree(folder)


# -- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------------------------------
IDX_VALID = idx_bytes(np.arange(3 * 5 * 4, dtype=np.uint8).reshape(3, 5, 4))


@settings(max_examples=examples(40), deadline=None, suppress_health_check=SLOW_OK)
@given(data=damaged(IDX_VALID), compressed=st.booleans(), damage_stream=st.booleans())
def test_idx(data, compressed, damage_stream):
    blob = gz(data) if compressed else data
    if compressed and damage_stream:
        blob = blob[: max(len(blob) - 9, 1)]              # a cut gzip stream
    name = "train-images-idx3-ubyte" + (".gz" if compressed else "")
    array, error = read_back(read_idx, blob, name)
    if error:
        assert name in error
    else:       # the file was still valid: what came out is exactly what its header announces
        shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(data[3]))
        assert array.shape == shape


# -- CIFAR-10 binary ----------------------------------------------------------------------------------------------
@settings(max_examples=examples(25), deadline=None, suppress_health_check=SLOW_OK)
@given(records=st.integers(0, 3), extra=st.binary(max_size=40), labels=st.lists(st.integers(0, 255), min_size=3,
                                                                               max_size=3))
def test_cifar(records, extra, labels):
    rng = np.random.default_rng(0)
    body = b"".join(bytes([labels[i]]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes()
                    for i in range(records))
    result, error = read_back(read_cifar_batch, body + extra, "data_batch_1.bin")
    if error:
        assert "data_batch_1.bin" in error
    else:
        images, y = result
        assert images.shape == (records, 32, 32, 3) and not extra and (y < 10).all()


# -- image files and the image folder ------------------------------------------------------------------------------
def _image_bytes(mode: str, fmt: str) -> bytes:
    import io
    size = (6, 5)
    if mode == "I;16":
        im = Image.fromarray(np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000)
    else:
        im = Image.new(mode, size)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


IMAGE_SOURCES = [("RGB", "PNG"), ("L", "PNG"), ("I;16", "PNG"), ("P", "GIF"), ("RGBA", "PNG"), ("RGB", "JPEG"),
                 ("1", "BMP"), ("CMYK", "TIFF"), ("LA", "PNG"), ("RGB", "WEBP")]


@settings(max_examples=examples(50), deadline=None, suppress_health_check=SLOW_OK)
@given(source=st.sampled_from(IMAGE_SOURCES), data=st.data())
def test_image_files(source, data):
    blob = data.draw(damaged(_image_bytes(*source)))
    x, error = read_back(lambda p: read_image(p, max_pixels=10_000), blob, "x.png")
    if error:
        assert "x.png" in error
    else:
        assert x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3 and x.shape[0] * x.shape[1] <= 10_000


@settings(max_examples=examples(15), deadline=None, suppress_health_check=SLOW_OK)
@given(blobs=st.lists(st.one_of(st.sampled_from([png_claiming(40000, 40000), b"", b"GIF89a"]),
                                st.builds(lambda s: _image_bytes(*s), st.sampled_from(IMAGE_SOURCES))),
                      min_size=1, max_size=4),
       empty_class=st.booleans())
def test_image_folder(blobs, empty_class):
    root = Path(tempfile.mkdtemp(prefix="numpymnv2-adv-"))
    try:
        for i, blob in enumerate(blobs):
            folder = root / f"class{i % 2}"
            folder.mkdir(exist_ok=True)
            (folder / f"{i}.png").write_bytes(blob)
        if empty_class:
            (root / "zz-empty").mkdir()
        try:
            ds = load_dataset("folder", root, size=8)
        except (ValueError, FileNotFoundError) as exc:
            assert str(root) in str(exc)
        else:
            assert not empty_class and ds.images.shape[1:] == (8, 8, 3) and len(ds) == len(blobs)
    finally:
        shutil.rmtree(root)


# -- checkpoints, weights, .pth ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_bytes(tiny_run) -> bytes:
    return (tiny_run / "last.npz").read_bytes()


@settings(max_examples=examples(40), deadline=None, suppress_health_check=SLOW_OK)
@given(data=st.data())
def test_checkpoint_bytes_damaged(checkpoint_bytes, data):
    blob = data.draw(damaged(checkpoint_bytes))
    result, error = read_back(load_trained_model, blob, "last.npz")
    if error:                 # CheckpointError, or a stored configuration the model cannot be rebuilt from
        assert "last.npz" in error or "MobileNetV2" in error
    else:
        model, ckpt = result
        assert all(np.isfinite(v).all() for v in ckpt.model.values() if v.dtype.kind == "f")


ENTRY_DAMAGE = ["drop", "nan", "inf", "negative_var", "reshape", "dtype", "object_header", "huge_header",
                "meta_garbage", "meta_config_width", "extra_entry"]


@settings(max_examples=examples(30), deadline=None, suppress_health_check=SLOW_OK)
@given(kind=st.sampled_from(ENTRY_DAMAGE), pick=st.integers(0, 10 ** 6), compressed=st.booleans())
def test_checkpoint_entries_damaged(tiny_run, kind, pick, compressed):
    """Structurally valid archives whose content lies: what no trained model holds is refused by name."""
    with np.load(tiny_run / "last.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    floats = sorted(k for k, v in arrays.items() if k.startswith("model/") and v.dtype.kind == "f")
    key = floats[pick % len(floats)]
    if kind == "drop":
        del arrays[key]
    elif kind in ("nan", "inf"):
        arrays[key] = arrays[key].copy()
        arrays[key].reshape(-1)[pick % arrays[key].size] = np.nan if kind == "nan" else -np.inf
    elif kind == "negative_var":
        var = sorted(k for k in floats if k.endswith("running_var"))[pick % 3]
        arrays[var] = arrays[var] - arrays[var].max() - 1
    elif kind == "reshape":
        arrays[key] = arrays[key].reshape(-1)[:-1] if arrays[key].size > 1 else np.zeros(2, np.float32)
    elif kind == "dtype":
        arrays[key] = arrays[key].astype(np.complex64)
    elif kind == "meta_garbage":
        arrays["meta/config"] = np.array("{not json")
    elif kind == "meta_config_width":
        import json
        config = json.loads(str(arrays["meta/config"]))
        config["model"]["width_mult"] = [1e9, -1, "x", None][pick % 4]
        arrays["meta/config"] = np.array(json.dumps(config))
    elif kind == "extra_entry":
        arrays["model/not.a.layer"] = np.ones(3, np.float32)
    blob = npz_bytes(arrays, compressed)
    if kind in ("object_header", "huge_header"):
        import io
        import zipfile
        buf = io.BytesIO(blob)
        with zipfile.ZipFile(buf, "a") as zf:
            header = npy_header_claiming((1,), "|O") if kind == "object_header" else \
                npy_header_claiming((2 ** 20, 2 ** 20), "<f4")
            zf.writestr("model/zz.npy", header + b"\0" * 16)
        blob = buf.getvalue()
    # a configuration claiming a gigantic model is refused by the memory check, before anything is built
    result, error = read_back(load_trained_model, blob, "last.npz", errors=(ValueError, InsufficientMemoryError))
    assert error, f"a checkpoint damaged by {kind} ({key}) was accepted"
    assert "last.npz" in error or kind == "meta_config_width"


@pytest.fixture(scope="module")
def weights_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("weights") / "w.npz"
    save_weights(MobileNetV2(num_classes=3, width_mult=0.1), path)
    return path.read_bytes()


@settings(max_examples=examples(30), deadline=None, suppress_health_check=SLOW_OK)
@given(data=st.data(), into=st.booleans())
def test_weights_damaged(weights_bytes, data, into):
    blob = data.draw(damaged(weights_bytes))
    target = MobileNetV2(num_classes=3, width_mult=0.1) if into else None
    model, error = read_back(lambda p: load_weights(p, target), blob, "w.npz")
    if error:
        assert "w.npz" in error or "MobileNetV2" in error
    else:
        assert all(np.isfinite(v).all() for v in model.state_dict().values() if v.dtype.kind == "f")


@pytest.fixture(scope="module")
def pth_bytes(tmp_path_factory) -> bytes:
    torch = pytest.importorskip("torch")
    from numpymnv2.interop import to_torchvision
    sd = {k: torch.from_numpy(np.ascontiguousarray(v))
          for k, v in to_torchvision(MobileNetV2(num_classes=3, width_mult=0.1)).items()}
    path = tmp_path_factory.mktemp("pth") / "m.pth"
    torch.save(sd, path)
    return path.read_bytes()


@settings(max_examples=examples(20), deadline=None, suppress_health_check=SLOW_OK)
@given(data=st.data())
def test_pth_damaged(pth_bytes, data):
    from numpymnv2.interop.convert import load_torch_state_dict
    blob = data.draw(damaged(pth_bytes))
    state, error = read_back(load_torch_state_dict, blob, "m.pth")
    if error:
        assert "m.pth" in error
    else:
        assert all(isinstance(v, np.ndarray) for v in state.values())


@pytest.mark.parametrize("cut", [b"}", b")"])
def test_npy_header_that_is_not_a_python_literal_is_a_clear_error(tmp_path, cut):
    """NumPy parses a .npy header as a Python literal: an unterminated dict or tuple raised tokenize.TokenError
    out of the reader (found by the damaged-checkpoint test above). The member is written with a valid CRC, so
    that it is the header that fails."""
    import io
    import zipfile
    from numpymnv2._untrusted import UntrustedFileError, load_npz
    buffer = io.BytesIO()
    np.save(buffer, np.arange(3.0))
    npy = buffer.getvalue()
    end = npy.index(b"}")
    npy = npy[:end + 1].replace(cut, b" ") + npy[end + 1:]
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.npy", npy)
    with pytest.raises(UntrustedFileError, match=r"w\.npz.*cannot be read"):
        load_npz(path, str(path))
