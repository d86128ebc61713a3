"""Which 512 KiB blocks of a sparse raw disk hold data, and which of them changed since an earlier disk.

The EBS direct APIs address a snapshot in 512 KiB blocks and a block never
written reads as zeros, so publishing a disk means sending its non-zero blocks
only, and publishing it on top of an earlier snapshot means sending the blocks
whose content differs (and zeros where the earlier disk had data that is gone).
The map is made from the file's data extents (SEEK_DATA/SEEK_HOLE): a 3 GiB
disk with 480 MiB of data reads 480 MiB, never its holes. No boto3 here: the
map is kept in the catalog and compared offline.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bakery.errors import OperationError

BLOCK_SIZE = 512 * 1024  # the EBS direct APIs' only block size (PutSnapshotBlock's DataLength must be 524288)
ZERO_BLOCK = bytes(BLOCK_SIZE)


@dataclass(frozen=True)
class BlockMap:
    """A local raw disk's allocated, non-zero blocks: index -> sha256 hex of the block (zero-padded at the end)."""

    size: int
    digests: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"size": self.size, "block_size": BLOCK_SIZE,
                           "digests": {str(i): d for i, d in sorted(self.digests.items())}},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BlockMap:
        """Read a map kept in the catalog; anything damaged is refused rather than half-trusted."""
        try:
            data = json.loads(text)
            if data["block_size"] != BLOCK_SIZE:
                raise ValueError(f"block size {data['block_size']}, not {BLOCK_SIZE}")
            digests = {int(i): d for i, d in data["digests"].items()}
            if not all(isinstance(d, str) and len(d) == 64 for d in digests.values()):
                raise ValueError("a digest is not 64 hex characters")
            return cls(size=int(data["size"]), digests=digests)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise OperationError(f"the disk's block map is damaged ({exc}); make the disk again") from exc


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each data region; the whole file when the filesystem cannot tell holes apart."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset: the rest is a hole
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield offset, size
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        offset = end


def allocated_blocks(fd: int, size: int) -> Iterator[int]:
    """Indexes of the blocks that overlap a data extent, ascending, each once."""
    last = -1
    for start, end in _data_extents(fd, size):
        for index in range(max(start // BLOCK_SIZE, last + 1), -(-end // BLOCK_SIZE)):
            last = index
            yield index


def read_block(fd: int, index: int) -> bytes:
    """Block `index`, zero-padded to BLOCK_SIZE (the disk's last block may be short)."""
    data = os.pread(fd, BLOCK_SIZE, index * BLOCK_SIZE)
    return data if len(data) == BLOCK_SIZE else data.ljust(BLOCK_SIZE, b"\0")


def block_map(path: Path) -> BlockMap:
    """Map a raw disk's non-zero blocks to their sha256 (all-zero blocks, allocated or not, are left out)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise OperationError(f"cannot read disk {path}: {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
        digests = {}
        for index in allocated_blocks(fd, size):
            data = read_block(fd, index)
            if data != ZERO_BLOCK:
                digests[index] = hashlib.sha256(data).hexdigest()
        return BlockMap(size=size, digests=digests)
    finally:
        os.close(fd)


def changed_blocks(new: BlockMap, parent: BlockMap | None) -> tuple[list[int], list[int]]:
    """(blocks to write with data, blocks to write as zeros): zeros where the parent had data that is gone now,
    or the parent snapshot's block would show through. Without a parent every block is written."""
    if parent is None:
        return sorted(new.digests), []
    data = sorted(i for i, d in new.digests.items() if parent.digests.get(i) != d)
    zeros = sorted(i for i in parent.digests if i not in new.digests)
    return data, zeros
