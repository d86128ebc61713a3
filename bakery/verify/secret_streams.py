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
    """Decoded bytes an archive may still yield; what stopped it early, if anything."""

    remaining: int
    exceeded: bool = False
    broken: str = ""  # the decoder's error class when the data could not be read


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
    """Reads a decoder within a budget: past the bound, or on a decoding error, the stream just ends."""

    def __init__(self, stream: IO[bytes], budget: Budget) -> None:
        # read1: one decoder step at a time, so the data before a truncation is not lost with the error
        self._read = getattr(stream, "read1", stream.read)
        self.budget = budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        budget = self.budget
        if budget.exceeded or budget.broken:
            return 0
        try:
            data = self._read(min(len(buffer), budget.remaining + 1))
        except DECODE_ERRORS as exc:
            budget.broken = type(exc).__name__
            return 0
        if len(data) > budget.remaining:
            budget.exceeded = True
            data = data[: budget.remaining]
        budget.remaining -= len(data)
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


def kind_of(head: bytes) -> str | None:
    """What a file is by its first bytes: a compression, a container, or None for plain content."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    return None


COMPRESSIONS = frozenset({"gzip", "bzip2", "xz"})
CONTAINERS = frozenset({"tar", "zip"})


def decoder(kind: str, stream: IO[bytes]) -> IO[bytes]:
    import bz2
    import gzip

    if kind == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2File(stream)
    return lzma.LZMAFile(stream)
