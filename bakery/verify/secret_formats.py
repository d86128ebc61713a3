"""Archive formats simple enough to read by hand: ar (and so .deb), cpio, and the texts in a gzip header.

Each reader walks a seekable file (the walk's spool) and yields where each member's bytes are, so the
walk can hand them on as a stream; a header that does not parse raises ValueError (the archive is then
reported as unreadable). Nothing is decoded here: the members go through the same walk as any file.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from bakery.verify.secret_paths import DIR, FILE, OTHER, SYMLINK

MAX_NAME = 64 << 10  # a member name or a gzip header text longer than this is not one


@dataclass(frozen=True)
class Member:
    name: str
    kind: str
    start: int  # where its bytes begin in the archive
    size: int


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return FILE
    return DIR if stat.S_ISDIR(mode) else SYMLINK if stat.S_ISLNK(mode) else OTHER


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def ar_members(archive: IO[bytes]) -> Iterator[Member]:
    """Unix ar (GNU and BSD): 60-byte headers, members padded to an even size; a .deb is one."""
    at = 8
    while True:
        archive.seek(at)
        header = archive.read(60)
        if not header.strip():
            return
        if len(header) < 60 or header[58:60] != b"`\n":
            raise ValueError("not an ar member header")
        name, size = header[:16].rstrip(b" "), int(header[48:58])
        start = at + 60
        if name.startswith(b"#1/"):  # BSD: the name is the first bytes of the data
            length = int(name[3:])
            archive.seek(start)
            name, start, size = archive.read(length).rstrip(b"\0"), start + length, size - length
        yield Member(_name(name.rstrip(b"/")) or "(ar symbol table)", FILE, start, size)
        at = start + size + (start + size) % 2


def cpio_members(archive: IO[bytes]) -> Iterator[Member]:
    """cpio "newc"/"crc" (hex headers, 4-byte alignment) and "odc" (octal headers, no alignment)."""
    at = 0
    while True:
        archive.seek(at)
        magic = archive.read(6)
        if magic in (b"070701", b"070702"):
            fields = [int(archive.read(8), 16) for _ in range(13)]
            mode, size, name_size, header = fields[1], fields[6], fields[11], 110
            align = 4
        elif magic == b"070707":
            raw = archive.read(70)
            mode, name_size, size = int(raw[12:18], 8), int(raw[53:59], 8), int(raw[59:70], 8)
            header, align = 76, 1
        else:
            raise ValueError("not a cpio header")
        if not 0 < name_size <= MAX_NAME:
            raise ValueError("a cpio name of impossible size")
        name = archive.read(name_size).rstrip(b"\0")
        start = at + header + name_size
        start += -start % align
        if name == b"TRAILER!!!":
            return
        yield Member(_name(name), _kind(mode), start, size)
        at = start + size
        at += -at % align


def gzip_texts(stream: IO[bytes]) -> list[str]:
    """The file name and comment a gzip header may carry (RFC 1952): text no decoder hands on."""
    stream.seek(0)
    header = stream.read(10)
    if len(header) < 10:
        return []
    flags, texts = header[3], []
    if flags & 4:  # FEXTRA
        length = stream.read(2)
        stream.seek(int.from_bytes(length, "little") if len(length) == 2 else 0, 1)
    for flag in (8, 16):  # FNAME, FCOMMENT: NUL-terminated
        if flags & flag:
            text = b""
            while len(text) <= MAX_NAME and (byte := stream.read(1)) not in (b"", b"\0"):
                text += byte
            texts.append(text.decode("latin-1"))
    return texts
