"""Reliability, category 5: data files are validated and named, with the fix."""
import gzip
import os

import numpy as np
import pytest

from jnn.data import DatasetUnavailableError, load_mnist, load_tiny_shakespeare
from jnn.data.fetch import download


def _write_idx(path, array, code):
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(array.dtype.newbyteorder(">")).tobytes()))


def _fake_mnist(root, image_dtype=np.uint8, code=0x08):
    folder = root / "mnist"
    folder.mkdir(parents=True)
    images = (np.arange(2 * 28 * 28) % 256).reshape(2, 28, 28).astype(image_dtype)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", images, code)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([3, 7], np.uint8), 0x08)
    return images


def test_float_idx_images_are_rejected_not_scaled_twice(tmp_path):
    _fake_mnist(tmp_path, np.float32, 0x0D)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: expected uint8 values \(IDX type 0x08\).*got float32"):
        load_mnist("test", data_dir=tmp_path, download=False)


def test_uint8_idx_images_load_in_the_unit_interval(tmp_path):
    images = _fake_mnist(tmp_path)
    x, y = load_mnist("test", data_dir=tmp_path, download=False)
    np.testing.assert_allclose(x[..., 0], images / 255.0, rtol=1e-6)
    assert y.tolist() == [3, 7]


@pytest.mark.parametrize("content, match", [
    (b"", r"input.txt: the file is empty; delete it and load again with download=True"),
    (b"First \xff\xfeCitizen", r"input.txt: not UTF-8 text \(byte 6: .*\); re-save it as UTF-8"),
])
def test_empty_or_non_utf8_text_names_the_file(tmp_path, content, match):
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_tiny_shakespeare(data_dir=tmp_path, download=False)


def test_text_round_trips(tmp_path):
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_bytes("Thou art\r\nnaïve".encode())
    assert load_tiny_shakespeare(data_dir=tmp_path, download=False, verify=False) == "Thou art\r\nnaïve"


def test_data_dir_under_a_regular_file(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("a file")
    for fn in (lambda: load_mnist("test", data_dir=blocker), lambda: load_tiny_shakespeare(data_dir=blocker)):
        with pytest.raises(DatasetUnavailableError, match=r"(?s)cannot create the folder: .*data' is a file, not a folder"):
            fn()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_data_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(DatasetUnavailableError, match=r"(?s)'hello.txt'.*locked' is not writable; fix its permissions"):
            download((tmp_path / "x").as_uri(), locked / "hello.txt")
    finally:
        locked.chmod(0o700)
