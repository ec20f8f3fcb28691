"""Data integrity: every MNIST checksum constant, and every IDX header check with a failing case
of its own (each file below differs from a valid one in exactly one respect).

Property-based checks of the IDX reader are in tests/test_properties.py."""
import gzip
import hashlib
import os
import pathlib
import struct

import numpy as np
import pytest

from jnn.data import read_idx
from jnn.data.mnist import MNIST_MD5

SHARED = pathlib.Path(os.environ["JNN_DATA_DIR"]) / "mnist"   # ../shared/data by default (conftest)

# The published checksums, as listed on the MNIST page and in torchvision's MNIST class
# (torchvision/datasets/mnist.py, `resources`): an independent record to pin ours against.
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_MD5))
def test_each_mnist_md5_constant_is_the_published_one(name):
    assert MNIST_MD5[name] == PUBLISHED_MD5[name]


@pytest.mark.parametrize("name", ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_md5_constants_match_the_official_test_files(name):
    # The shared test files are byte-identical to the published ones (see ../shared/data/mnist).
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    assert hashlib.md5(path.read_bytes()).hexdigest() == MNIST_MD5[name]


def test_shared_train_files_are_a_subset_and_do_not_match_the_full_files_checksum():
    # The shared train files are the first 20,000 images re-packed: their checksum must differ,
    # which shows the constant is not simply whatever file happens to be on disk.
    path = SHARED / "train-labels-idx1-ubyte.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    assert hashlib.md5(path.read_bytes()).hexdigest() != MNIST_MD5[path.name]
    assert read_idx(path, ndim=1).shape == (20000,)


def idx_bytes(payload=b"\x07\x08\x09", *, prefix=b"\x00\x00", code=0x08, ndim=1, dims=(3,)):
    return prefix + bytes([code, ndim]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def write(tmp_path, data, name="f-idx1-ubyte"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_the_valid_baseline_reads(tmp_path):
    np.testing.assert_array_equal(read_idx(write(tmp_path, idx_bytes()), ndim=1), [7, 8, 9])


# Each case changes one thing in the valid file above (read as the 1-D file it claims to be, or
# with the ndim given third); the message names what was wrong.
HEADER_CASES = {
    "too_short": (b"\x00\x00\x08", r"too short for an IDX header \(3 bytes\)"),
    "magic_only": (b"\x00\x00\x08\x01", r"truncated IDX header: 1 dimensions need 8 bytes, found 4"),
    "nonzero_magic_prefix": (idx_bytes(prefix=b"\x01\x00"), r"not an IDX file: .* got 0x01000801"),
    "second_prefix_byte": (idx_bytes(prefix=b"\x00\x10"), r"not an IDX file: .* got 0x00100801"),
    "unknown_dtype_code": (idx_bytes(code=0x0A), r"not an IDX file: .* got 0x00000a01"),
    "zero_dimensions": (idx_bytes(ndim=0, dims=()), r"not an IDX file: .* got 0x00000800"),
    "wrong_dimensions": (idx_bytes(payload=bytes(6), ndim=2, dims=(2, 3)), r"expected a 1-D IDX file .* got 2-D"),
    "truncated_header": (idx_bytes(payload=b"", ndim=3, dims=(2,)), r"truncated IDX header: 3 dimensions need 16 bytes, found 8", 3),
    "truncated_payload": (idx_bytes(payload=b"\x07\x08"), r"truncated IDX file: header says 3 = 3 bytes, found 2"),
    "trailing_bytes": (idx_bytes(payload=b"\x07\x08\x09\x0a"), r"1 unexpected trailing bytes"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_each_idx_header_check_fails_on_its_own(tmp_path, case):
    data, message, *ndim = HEADER_CASES[case]
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path, ndim=ndim[0] if ndim else 1)
    assert str(path) in str(info.value)


def test_gzip_and_plain_files_give_the_same_array(tmp_path):
    plain = read_idx(write(tmp_path, idx_bytes(), "a"), ndim=1)
    zipped = read_idx(write(tmp_path, gzip.compress(idx_bytes()), "b.gz"), ndim=1)
    np.testing.assert_array_equal(plain, zipped)


def test_a_file_of_exactly_its_header_is_an_empty_array(tmp_path):
    array = read_idx(write(tmp_path, idx_bytes(payload=b"", dims=(0,))), ndim=1)
    assert array.shape == (0,) and array.dtype == np.uint8


def test_without_ndim_the_message_spells_out_the_magic(tmp_path):
    with pytest.raises(ValueError, match=r"expected IDX magic 0x0000ttnn \(tt = dtype code, 08 for uint8; nn = number "
                                         r"of dimensions\), got 0x01000801$"):
        read_idx(write(tmp_path, idx_bytes(prefix=b"\x01\x00")))


def test_a_truncated_gzip_stream_says_to_delete_the_file(tmp_path):
    path = write(tmp_path, gzip.compress(idx_bytes())[:-6], "c.gz")
    with pytest.raises(ValueError, match=r"c\.gz: corrupt or truncated gzip stream \((EOFError|BadGzipFile|error): "
                                         r".*\); delete the file so it can be downloaded again$"):
        read_idx(path, ndim=1)
