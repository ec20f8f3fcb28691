"""download(), data_dir() and the loaders' download paths, against a local HTTP server.

Every test that serves files starts its own http.server on 127.0.0.1 (port 0) in a thread
and shuts it down at the end; nothing here touches the internet.
"""
import gzip
import hashlib
import http.server
import pathlib
import threading

import numpy as np
import pytest

from jnn.data import DatasetUnavailableError, data_dir, download, load_mnist, load_tiny_shakespeare
from jnn.data import mnist as mnist_module
from jnn.data import shakespeare as shakespeare_module

PAYLOAD = bytes(range(256)) * 300  # 76,800 bytes: several read chunks
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
TIMEOUT = 5  # seconds; bounds every client wait in this file


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.hits.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
        else:
            route(self)

    def log_message(self, *args):  # keep pytest output clean
        pass


def serve(content: bytes):
    """A route sending ``content`` whole, with a correct Content-Length."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)

    return route


def serve_truncated(content: bytes, cut: int):
    """A route announcing all of ``content`` but closing the connection after ``cut`` bytes."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content[:cut])
        handler.wfile.flush()
        handler.close_connection = True

    return route


def serve_truncated_chunked(content: bytes, cut: int):
    """A chunked response whose connection drops inside the first chunk."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(f"{len(content):x}\r\n".encode() + content[:cut])
        handler.wfile.flush()
        handler.close_connection = True

    return route


def serve_stalled(content: bytes):
    """A route sending half of ``content`` then stalling until the server stops."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content[: len(content) // 2])
        handler.wfile.flush()
        handler.server.stopping.wait(TIMEOUT)
        handler.close_connection = True

    return route


class LocalServer:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.routes = {}
        self.httpd.hits = []
        self.httpd.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def routes(self) -> dict:
        return self.httpd.routes

    @property
    def hits(self) -> list:
        return self.httpd.hits

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def close(self):
        self.httpd.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


@pytest.fixture
def server():
    srv = LocalServer()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def no_default_mirrors(monkeypatch):
    """Makes any accidental use of the real (internet) mirrors fail immediately."""
    monkeypatch.setattr(mnist_module, "MNIST_MIRRORS", ())
    monkeypatch.setattr(shakespeare_module, "SHAKESPEARE_MIRRORS", ())


def listing(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- download() -----------------------------------------------------------------------


def test_good_file_lands_whole(server, tmp_path):
    server.routes["/good.bin"] = serve(PAYLOAD)
    dest = tmp_path / "sub" / "good.bin"
    out = download(server.url("/good.bin"), dest, md5=PAYLOAD_MD5, sha256=PAYLOAD_SHA256, timeout=TIMEOUT)
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert listing(dest.parent) == ["good.bin"]
    assert dest.stat().st_mode & 0o777 == 0o644


def test_checksums_are_optional_and_case_insensitive(server, tmp_path):
    server.routes["/good.bin"] = serve(PAYLOAD)
    download([server.url("/good.bin")], tmp_path / "a.bin", timeout=TIMEOUT)
    download([server.url("/good.bin")], tmp_path / "b.bin", md5=PAYLOAD_MD5.upper(), timeout=TIMEOUT)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize("kind", ["md5", "sha256"])
def test_wrong_checksum_raises_and_leaves_nothing(server, tmp_path, kind):
    server.routes["/bad.bin"] = serve(PAYLOAD[:-1] + b"X")
    dest = tmp_path / "dl" / "file.bin"
    checksum = {"md5": PAYLOAD_MD5, "sha256": PAYLOAD_SHA256}[kind]
    with pytest.raises(DatasetUnavailableError, match=f"{kind} mismatch: expected {checksum}"):
        download([server.url("/bad.bin")], dest, timeout=TIMEOUT, **{kind: checksum})
    assert listing(dest.parent) == []  # no dest, no temp file


@pytest.mark.parametrize("route", [serve_truncated, serve_truncated_chunked])
def test_dropped_connection_raises_and_leaves_nothing(server, tmp_path, route):
    server.routes["/cut.bin"] = route(PAYLOAD, 1000)
    dest = tmp_path / "dl" / "file.bin"
    with pytest.raises(DatasetUnavailableError, match="incomplete download") as info:
        download(server.url("/cut.bin"), dest, timeout=TIMEOUT)  # no checksum: length check alone
    assert server.url("/cut.bin") in str(info.value)
    assert listing(dest.parent) == []


def test_dropped_connection_falls_through_to_next_mirror(server, tmp_path):
    server.routes["/a/file.bin"] = serve_truncated(PAYLOAD, len(PAYLOAD) // 2)
    server.routes["/b/file.bin"] = serve(PAYLOAD)
    dest = tmp_path / "file.bin"
    download([server.url("/a/file.bin"), server.url("/b/file.bin")], dest, md5=PAYLOAD_MD5, timeout=TIMEOUT)
    assert dest.read_bytes() == PAYLOAD
    assert server.hits == ["/a/file.bin", "/b/file.bin"]
    assert listing(tmp_path) == ["file.bin"]


def test_stalled_server_times_out_then_next_mirror(server, tmp_path):
    server.routes["/slow.bin"] = serve_stalled(PAYLOAD)
    server.routes["/good.bin"] = serve(PAYLOAD)
    dest = tmp_path / "file.bin"
    download([server.url("/slow.bin"), server.url("/good.bin")], dest, md5=PAYLOAD_MD5, timeout=0.3)
    assert dest.read_bytes() == PAYLOAD
    assert listing(tmp_path) == ["file.bin"]


def test_mirror_fallback_after_404(server, tmp_path):
    server.routes["/second/file.bin"] = serve(PAYLOAD)
    dest = tmp_path / "file.bin"
    urls = [server.url("/first/file.bin"), server.url("/second/file.bin")]
    assert download(urls, dest, md5=PAYLOAD_MD5, timeout=TIMEOUT) == dest
    assert dest.read_bytes() == PAYLOAD
    assert server.hits == ["/first/file.bin", "/second/file.bin"]


def test_all_mirrors_fail_message(server, tmp_path):
    server.routes["/bad/file.bin"] = serve(b"not it")
    dest = tmp_path / "data" / "mnist" / "file.bin"
    urls = [server.url("/missing/file.bin"), server.url("/bad/file.bin"), "http://127.0.0.1:1/file.bin"]
    with pytest.raises(DatasetUnavailableError, match="is not in .* and could not be obtained") as info:
        download(urls, dest, md5=PAYLOAD_MD5, timeout=TIMEOUT)
    message = str(info.value)
    assert str(dest.parent) in message and "'file.bin'" in message
    assert f"{urls[0]}: HTTP 404" in message
    assert f"{urls[1]}: md5 mismatch" in message
    assert f"{urls[2]}: URLError" in message
    assert "JNN_DATA_DIR" in message and "mnist/file.bin" in message and "network access" in message
    assert listing(dest.parent) == []


def test_existing_dest_is_not_clobbered_by_failed_download(server, tmp_path):
    server.routes["/bad.bin"] = serve(b"corrupted!")
    server.routes["/cut.bin"] = serve_truncated(PAYLOAD, 10)
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    with pytest.raises(DatasetUnavailableError, match=r"(?s)bad.bin: md5 mismatch.*cut.bin"):
        download([server.url("/bad.bin"), server.url("/cut.bin")], dest, md5=PAYLOAD_MD5, timeout=TIMEOUT)
    assert dest.read_bytes() == PAYLOAD
    assert listing(tmp_path) == ["file.bin"]


def test_file_url_and_empty_url_list(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    assert download(src.as_uri(), tmp_path / "out" / "copy.bin", sha256=PAYLOAD_SHA256).read_bytes() == PAYLOAD
    with pytest.raises(DatasetUnavailableError, match="no URLs were given"):
        download([], tmp_path / "out" / "none.bin")


# --- data_dir() -----------------------------------------------------------------------


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("JNN_DATA_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("JNN_DATA_DIR")
    assert data_dir() == tmp_path / "xdg" / "jnn"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".cache" / "jnn"


# --- the loaders' download paths ------------------------------------------------------


def _idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist_test_split(server):
    """Serves a 6-image 't10k' split under /mirror/; returns (images, labels, files)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    files = {
        "t10k-images-idx3-ubyte.gz": _idx_gz(images),
        "t10k-labels-idx1-ubyte.gz": _idx_gz(labels),
    }
    for name, content in files.items():
        server.routes[f"/mirror/{name}"] = serve(content)
    return images, labels, files


def test_load_mnist_downloads_with_fallback(server, tmp_path, monkeypatch, fake_mnist_test_split):
    images, labels, files = fake_mnist_test_split
    for name, content in files.items():
        monkeypatch.setitem(mnist_module.MNIST_MD5, name, hashlib.md5(content).hexdigest())
    root = tmp_path / "data"
    x, y = load_mnist("test", data_dir=root, mirrors=[server.url("/gone/"), server.url("/mirror")])
    assert x.shape == (6, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], images / np.float32(255.0), atol=1e-7)
    np.testing.assert_array_equal(y, labels)
    assert listing(root / "mnist") == sorted(files)
    for name, content in files.items():
        assert (root / "mnist" / name).read_bytes() == content
    # Present now: a second load reads the files and makes no request.
    hits = len(server.hits)
    load_mnist("test", data_dir=root, mirrors=[server.url("/mirror/")])
    assert len(server.hits) == hits


def test_load_mnist_rejects_downloads_failing_official_md5(server, tmp_path, fake_mnist_test_split):
    root = tmp_path / "data"
    with pytest.raises(DatasetUnavailableError, match="md5 mismatch: expected 9fb629c4189551a2d022fa330f9573f3"):
        load_mnist("test", data_dir=root, mirrors=[server.url("/mirror/")])
    assert listing(root / "mnist") == []


def test_load_tiny_shakespeare_downloads(server, tmp_path, monkeypatch):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    server.routes["/input.txt"] = serve(text.encode())
    monkeypatch.setattr(shakespeare_module, "SHAKESPEARE_SHA256", hashlib.sha256(text.encode()).hexdigest())
    assert load_tiny_shakespeare(data_dir=tmp_path, mirrors=[server.url("/input.txt")]) == text
    assert (tmp_path / "tinyshakespeare" / "input.txt").read_text() == text


def test_load_tiny_shakespeare_rejects_wrong_sha256(server, tmp_path):
    server.routes["/input.txt"] = serve(b"not shakespeare")
    with pytest.raises(DatasetUnavailableError, match="sha256 mismatch"):
        load_tiny_shakespeare(data_dir=tmp_path, mirrors=[server.url("/input.txt")])
    assert listing(tmp_path / "tinyshakespeare") == []
