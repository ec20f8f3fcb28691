"""MNIST / IDX / Tiny Shakespeare loaders on the real shared files and on corrupt copies.

The real files come from $JNN_DATA_DIR (tests/conftest.py points it at ../shared/data):
the official 10k test set and the first 20k training images. Nothing here downloads.
"""
import gzip
import os
import pathlib
import re

import numpy as np
import pytest

from jnn import data
from jnn.data import DatasetUnavailableError, load_mnist, load_tiny_shakespeare, read_idx

SHARED = pathlib.Path(os.environ["JNN_DATA_DIR"])
needs_mnist = pytest.mark.skipif(
    not data.mnist_available(SHARED), reason=f"real MNIST files not found under {SHARED}/mnist"
)
needs_shakespeare = pytest.mark.skipif(
    not (SHARED / "tinyshakespeare" / "input.txt").is_file(),
    reason=f"tinyshakespeare/input.txt not found under {SHARED}",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """Serializes a uint8 array as an (uncompressed) IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_split(folder: pathlib.Path, split: str, images: bytes, labels: bytes) -> None:
    """Writes gzip IDX image and label files for ``split`` ("train" or "t10k")."""
    (folder / "mnist").mkdir(parents=True, exist_ok=True)
    (folder / "mnist" / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (folder / "mnist" / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


def small_split(n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


# --- the real files -------------------------------------------------------------------


@needs_mnist
@pytest.mark.parametrize("split, n", [("train", 20_000), ("test", 10_000)])
def test_real_mnist_shapes_dtypes_ranges(split, n):
    images, labels = load_mnist(split, download=False)
    assert images.shape == (n, 28, 28, 1) and images.dtype == np.float32
    assert labels.shape == (n,) and labels.dtype == np.int32
    assert images.min() == 0.0 and images.max() == 1.0
    assert labels.min() == 0 and labels.max() == 9
    fractions = np.bincount(labels, minlength=10) / n
    assert np.all((fractions > 0.08) & (fractions < 0.13)), fractions


@needs_mnist
def test_real_mnist_test_pixel_mean_matches_independent_reading():
    with gzip.open(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    reference = raw.astype(np.float64).mean() / 255.0
    images, _ = load_mnist("test", data_dir=SHARED, download=False)
    assert reference == pytest.approx(0.1325, abs=5e-4)
    assert float(images.mean(dtype=np.float64)) == pytest.approx(reference, abs=1e-6)


@needs_mnist
def test_real_mnist_labels_match_independent_reading():
    with gzip.open(SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    _, labels = load_mnist("test", download=False)
    np.testing.assert_array_equal(labels, raw.astype(np.int32))


@needs_mnist
def test_mnist_available():
    assert data.mnist_available()
    assert data.mnist_available(SHARED)


def test_mnist_available_false_for_empty_or_partial_dir(tmp_path):
    assert not data.mnist_available(tmp_path)
    images, labels = small_split()
    write_split(tmp_path, "t10k", idx_bytes(images), idx_bytes(labels))
    assert not data.mnist_available(tmp_path)  # the train files are still missing


# --- synthetic files ------------------------------------------------------------------


def test_load_mnist_from_synthetic_files(tmp_path):
    images, labels = small_split(7)
    write_split(tmp_path, "t10k", idx_bytes(images), idx_bytes(labels))
    x, y = load_mnist("test", data_dir=tmp_path, download=False)
    assert x.shape == (7, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], images / np.float32(255.0), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(y, labels.astype(np.int32))


def test_read_idx_accepts_uncompressed_files(tmp_path):
    images, _ = small_split(3)
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(images))
    out = read_idx(path, ndim=3)
    np.testing.assert_array_equal(out, images)
    assert out.flags.writeable


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([[1, -2, 3], [70000, 5, -6]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + np.asarray(values.shape, ">u4").tobytes() + values.tobytes())
    out = read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def test_wrong_magic_raises(tmp_path):
    images, labels = small_split()
    # A doubly gzipped image file: after one decompression it starts with 0x1f8b, not IDX magic.
    write_split(tmp_path, "t10k", gzip.compress(idx_bytes(images)), idx_bytes(labels))
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*expected IDX magic 0x0000tt03.*got 0x1f8b"):
        load_mnist("test", data_dir=tmp_path, download=False)
    path.write_bytes(gzip.compress(bytes([0, 0, 9, 1, 0, 0, 0, 0])))  # valid 1-D IDX
    with pytest.raises(ValueError, match=r"expected a 3-D IDX file .* got 1-D \(magic 0x00000901\)"):
        read_idx(path, ndim=3)
    path.write_bytes(gzip.compress(bytes.fromhex("deadbeef") + bytes(100)))
    with pytest.raises(ValueError, match=r"not an IDX file.*got 0xdeadbeef"):
        read_idx(path)


def test_truncated_payload_raises(tmp_path):
    images, labels = small_split(5)
    write_split(tmp_path, "t10k", idx_bytes(images)[:-100], idx_bytes(labels))
    expected = re.escape("truncated IDX file: header says 5x28x28 = 3920 bytes, found 3820")
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: " + expected):
        load_mnist("test", data_dir=tmp_path, download=False)


def test_trailing_bytes_raise(tmp_path):
    _, labels = small_split(5)
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx_bytes(labels) + b"\x00\x01")
    with pytest.raises(ValueError, match=r"2 unexpected trailing bytes.*header says 5 = 5 bytes, found 7"):
        read_idx(path)


def test_truncated_header_raises(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 5]))
    with pytest.raises(ValueError, match=r"short-idx3-ubyte: truncated IDX header: 3 dimensions need 16 bytes, found 8"):
        read_idx(path)


def test_truncated_gzip_stream_raises(tmp_path):
    images, labels = small_split(5)
    write_split(tmp_path, "t10k", idx_bytes(images), idx_bytes(labels))
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: corrupt or truncated gzip stream"):
        load_mnist("test", data_dir=tmp_path, download=False)


def test_corrupt_gzip_stream_raises(tmp_path):
    path = tmp_path / "bad-idx1-ubyte.gz"
    whole = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8) % 10)))
    whole[12:20] = b"\xff" * 8  # clobber the deflate stream
    path.write_bytes(bytes(whole))
    with pytest.raises(ValueError, match=r"bad-idx1-ubyte\.gz: corrupt or truncated gzip stream"):
        read_idx(path)


def test_image_label_count_mismatch_raises(tmp_path):
    images, _ = small_split(5)
    _, labels = small_split(4)
    write_split(tmp_path, "t10k", idx_bytes(images), idx_bytes(labels))
    pattern = (
        r"count mismatch: .*t10k-images-idx3-ubyte\.gz has 5 images "
        r"but .*t10k-labels-idx1-ubyte\.gz has 4 labels"
    )
    with pytest.raises(ValueError, match=pattern):
        load_mnist("test", data_dir=tmp_path, download=False)


def test_wrong_image_size_raises(tmp_path):
    images = np.zeros((3, 32, 32), np.uint8)
    write_split(tmp_path, "t10k", idx_bytes(images), idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 28, 28\), got \(3, 32, 32\)"):
        load_mnist("test", data_dir=tmp_path, download=False)


def test_labels_out_of_range_raise(tmp_path):
    images, _ = small_split(3)
    write_split(tmp_path, "t10k", idx_bytes(images), idx_bytes(np.array([1, 12, 3], np.uint8)))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: labels must be in 0\.\.9, found \[12\]"):
        load_mnist("test", data_dir=tmp_path, download=False)


def test_unknown_split_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown MNIST split 'validation'"):
        load_mnist("validation", data_dir=tmp_path, download=False)


def test_missing_dir_without_download_raises(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetUnavailableError, match="No download was attempted") as info:
        load_mnist("train", data_dir=missing, download=False)
    message = str(info.value)
    assert str(missing / "mnist") in message
    assert "train-images-idx3-ubyte.gz" in message
    assert "JNN_DATA_DIR" in message and "download=False" in message
    assert isinstance(info.value, RuntimeError)
    assert not missing.exists()  # nothing was created


# --- Tiny Shakespeare -----------------------------------------------------------------


@needs_shakespeare
def test_tiny_shakespeare_loads():
    text = load_tiny_shakespeare(download=False)
    assert len(text) == 1_115_394
    assert len(set(text)) == 65
    assert text.startswith("First Citizen:")


def test_tiny_shakespeare_local_file_and_missing(tmp_path):
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_bytes(b"To be,\r\nor not.\n")
    assert load_tiny_shakespeare(data_dir=tmp_path, download=False, verify=False) == "To be,\r\nor not.\n"
    with pytest.raises(DatasetUnavailableError, match=r"'input\.txt'.*tinyshakespeare"):
        load_tiny_shakespeare(data_dir=tmp_path / "empty", download=False)
