"""Verified, atomic downloads with mirror fallback (temporary file, checked, then renamed)."""
from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence

from jnn import _checks as checks
from jnn.data.errors import DatasetUnavailableError

__all__ = ["download"]

_CHUNK = 1 << 16
_USER_AGENT = "jnn-data/0.1 (+python urllib)"
# Errors that mean "this mirror did not work, try the next one".
_MIRROR_ERRORS = (OSError, ValueError, http.client.HTTPException)


_mirrors = checks.optional(checks.satisfies(lambda m: isinstance(m, Sequence) and not isinstance(m, (str, bytes))
                                            and all(isinstance(u, str) for u in m), "a list of URL strings (or None)"))


def check_source_args(where: str, download, mirrors) -> None:
    """A loader's ``download`` must be a bool and ``mirrors`` None or a list of URL strings."""
    checks.flag(where, "download", download)
    _mirrors(where, "mirrors", mirrors)


class _VerificationError(ValueError):
    """The downloaded bytes are incomplete or fail their checksum."""


def download(urls: str | Sequence[str], dest: str | os.PathLike[str], *, md5: str | None = None,
             sha256: str | None = None, timeout: float = 30) -> pathlib.Path:
    """Downloads ``dest`` from the first of ``urls`` that works, verifying its size and any ``md5``/``sha256``;
    ``dest`` is replaced only by a verified file, else a ``DatasetUnavailableError`` lists each URL's error.

    Example:
        >>> import pathlib, tempfile
        >>> src = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
        >>> _ = src.write_bytes(b"hello")
        >>> download(src.as_uri(), src.with_name("copy.txt"), md5="5d41402abc4b2a76b9719d911017c592").read_bytes()
        b'hello'
    """
    dest, attempts = pathlib.Path(dest), []
    _make_parent(dest)
    for url in [urls] if isinstance(urls, str) else urls:
        try:
            _fetch(url, dest, md5=md5, sha256=sha256, timeout=timeout)
        except _MIRROR_ERRORS as e:
            attempts.append((url, _describe(e)))
        else:
            return dest
    raise DatasetUnavailableError.for_file(dest, attempts, note=None if attempts else "no URLs were given")


def _make_parent(dest: pathlib.Path) -> None:
    """Creates ``dest``'s folder, or raises DatasetUnavailableError naming the file and the fix."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in [dest.parent, *dest.parent.parents] if p.exists()), dest.parent)
        why = f"{str(blocker)!r} is a file, not a folder" if blocker.is_file() else _describe(e)
        raise DatasetUnavailableError.for_file(dest, note=f"cannot create the folder: {why}") from e
    if not os.access(dest.parent, os.W_OK):
        raise DatasetUnavailableError.for_file(dest, note=f"the folder {str(dest.parent)!r} is not writable; fix "
                                                          f"its permissions")


def _fetch(url: str, dest: pathlib.Path, *, md5: str | None, sha256: str | None, timeout: float) -> None:
    """Downloads one URL into a temp file, verifies it and moves it to ``dest``."""
    tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False)
    try:
        with tmp:
            _stream(url, tmp, timeout=timeout, md5=md5, sha256=sha256)
        os.chmod(tmp.name, 0o644)  # NamedTemporaryFile creates files as 0o600
        os.replace(tmp.name, dest)
    except BaseException:
        pathlib.Path(tmp.name).unlink(missing_ok=True)
        raise


def _stream(url: str, out, *, timeout: float, md5: str | None, sha256: str | None) -> None:
    """Copies the body at ``url`` into ``out``; ``_VerificationError`` if it is shorter than its
    Content-Length or fails a given checksum."""
    hashes, received = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}, 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.strip().isdigit() else None
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            for h in hashes.values():
                h.update(chunk)
            received += len(chunk)
    if expected is not None and received != expected:
        raise _VerificationError(f"incomplete download: Content-Length is {expected} bytes, received {received}")
    for name, want in (("md5", md5), ("sha256", sha256)):
        if want is not None and hashes[name].hexdigest() != want.lower():
            raise _VerificationError(f"{name} mismatch: expected {want.lower()}, got {hashes[name].hexdigest()} "
                                     f"({received} bytes)")


def _describe(error: BaseException) -> str:
    """One-line description of why a mirror failed."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"URLError: {error.reason}"
    if isinstance(error, http.client.IncompleteRead):
        return f"incomplete download: connection closed after {len(error.partial)} bytes"
    return str(error) if isinstance(error, _VerificationError) else f"{type(error).__name__}: {error}"
