"""Readers for the scan's walk: bytes already peeked put back in front, and decoders kept within bounds.

The walk reads every file once, in order, from a pipe: it peeks at a file's first bytes to know what it
is, then hands the whole stream on. Decoded archive data is counted against a budget, so that a zip or
gzip bomb stops at the bound; a decoder error ends the stream instead of escaping into a content rule.
"""

from __future__ import annotations

import io
import lzma
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO

DECODE_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, tarfile.TarError, zipfile.BadZipFile,
                 RuntimeError, NotImplementedError)


@dataclass
class Budget:
    """What a top-level file may still yield, shared by every archive nested under it."""

    remaining: int  # decoded bytes
    members: int  # archive members
    exceeded: bool = False  # over the bytes
    too_many: bool = False  # over the members

    def take_member(self) -> bool:
        """Count one member; False once the bound is reached."""
        self.members -= 1
        self.too_many = self.too_many or self.members < 0
        return not self.too_many


class Prefixed(io.RawIOBase):
    """`head` (already read), then the rest of `stream`."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class Guarded(io.RawIOBase):
    """Reads a decoder within a budget: past the bound, or on a decoding error (`broken`), the stream just ends."""

    def __init__(self, stream: IO[bytes], budget: Budget) -> None:
        # read1: one decoder step at a time, so the data before a truncation is not lost with the error
        self._read = getattr(stream, "read1", stream.read)
        self.budget = budget
        self.broken = ""  # the decoder's error class when the data could not be read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        budget = self.budget
        if budget.exceeded or self.broken:
            return 0
        try:
            data = self._read(min(len(buffer), budget.remaining + 1))
        except DECODE_ERRORS as exc:
            self.broken = type(exc).__name__
            return 0
        if len(data) > budget.remaining:
            budget.exceeded = True
            data = data[: budget.remaining]
        budget.remaining -= len(data)
        buffer[: len(data)] = data
        return len(data)


class Window(io.RawIOBase):
    """`size` bytes of a seekable file from `start`: one member of an ar or cpio archive."""

    def __init__(self, stream: IO[bytes], start: int, size: int) -> None:
        self._stream, self._at, self._left = stream, start, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._stream.seek(self._at)
        data = self._stream.read(min(len(buffer), self._left))
        self._at += len(data)
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def buffered(raw: io.RawIOBase) -> IO[bytes]:
    return io.BufferedReader(raw, 1 << 16)


def read_head(stream: IO[bytes], size: int) -> bytes:
    """Up to `size` bytes (fewer only at the end): a pipe may return less per read."""
    chunks, got = [], 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# formats the scan knows but cannot open with the standard library: reported, never passed as content
# (old binary cpio has a two-byte magic: too weak to fail an image on, so such files are scanned as content)
NOT_OPENED = {b"\x28\xb5\x2f\xfd": "zstd", b"7z\xbc\xaf\x27\x1c": "7z", b"\xed\xab\xee\xdb": "rpm",
              b"\x04\x22\x4d\x18": "lz4",
              b"Rar!\x1a\x07": "rar", b"\x89LZO\x00": "lzop"}


def kind_of(head: bytes) -> str | None:
    """What a file is by its first bytes: a compression, a container, a format not opened, or None for content."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"\x5d\x00\x00" and len(head) >= 13:  # .lzma (LZMA_Alone): the usual properties byte
        return "lzma"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    if head[:8] == b"!<arch>\n":
        return "ar"
    if head[:6] in (b"070701", b"070702", b"070707"):
        return "cpio"
    return next((name for magic, name in NOT_OPENED.items() if head.startswith(magic)), None)


COMPRESSIONS = frozenset({"gzip", "bzip2", "xz", "lzma"})
CONTAINERS = frozenset({"tar", "zip", "ar", "cpio"})


def decoder(kind: str, stream: IO[bytes]) -> IO[bytes]:
    import bz2
    import gzip

    if kind == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2File(stream)
    if kind == "lzma":
        return lzma.LZMAFile(stream, format=lzma.FORMAT_ALONE)
    return lzma.LZMAFile(stream)
