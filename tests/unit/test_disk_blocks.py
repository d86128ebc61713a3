"""The local side of publishing a disk: which 512 KiB blocks of a sparse raw disk hold data, and which changed."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from bakery.aws.disk_blocks import BLOCK_SIZE, BlockMap, block_map, changed_blocks
from bakery.errors import OperationError

pytestmark = pytest.mark.unit

MIB = 1024 * 1024


def sparse(path: Path, size: int, writes: dict[int, bytes]) -> Path:
    """A sparse file of `size` bytes with `writes` (offset -> bytes) written into it; the rest is holes."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in writes.items():
            f.seek(offset)
            f.write(data)
    return path


def digest(data: bytes) -> str:
    return hashlib.sha256(data.ljust(BLOCK_SIZE, b"\0")).hexdigest()


def test_only_allocated_non_zero_blocks_are_mapped(tmp_path):
    size = 20 * BLOCK_SIZE + 100 * 1024  # the last block is short: its digest is of the zero-padded block
    first, third = os.urandom(BLOCK_SIZE), b"x" * 1000
    disk = sparse(tmp_path / "disk.raw", size, {
        0: first,
        3 * BLOCK_SIZE + 4096: third,                   # data in the middle of block 3
        5 * BLOCK_SIZE: b"\0" * BLOCK_SIZE,             # allocated, but all zeros: left out
        9 * BLOCK_SIZE - 10: b"y" * 20,                 # straddles blocks 8 and 9
        20 * BLOCK_SIZE + 10: b"tail",                  # in the short last block
    })
    found = block_map(disk)
    assert found.size == size
    assert sorted(found.digests) == [0, 3, 8, 9, 20]
    assert found.digests[0] == digest(first)
    assert found.digests[3] == digest(b"\0" * 4096 + third)
    assert found.digests[8] == digest(b"\0" * (BLOCK_SIZE - 10) + b"y" * 10)
    assert found.digests[9] == digest(b"y" * 10)
    assert found.digests[20] == digest(b"\0" * 10 + b"tail")


def test_an_empty_or_all_hole_disk_has_no_blocks(tmp_path):
    assert block_map(sparse(tmp_path / "holes.raw", 64 * MIB, {})).digests == {}
    assert block_map(sparse(tmp_path / "empty.raw", 0, {})) == BlockMap(size=0, digests={})


def test_holes_are_skipped_not_read(tmp_path):
    """A 64 GiB sparse disk with 4 MiB of data is mapped in well under a second: holes are never read."""
    writes = {n * 1024 * MIB: os.urandom(MIB) for n in range(4)}
    disk = sparse(tmp_path / "big.raw", 64 * 1024 * MIB, writes)
    started = time.monotonic()
    found = block_map(disk)
    elapsed = time.monotonic() - started
    assert len(found.digests) == 8
    assert elapsed < 2.0, f"{elapsed:.2f} s for 4 MiB of data: holes were read"


def test_a_missing_disk_is_one_clear_line(tmp_path):
    with pytest.raises(OperationError, match=r"cannot read disk .*nothing\.raw"):
        block_map(tmp_path / "nothing.raw")


def test_block_map_round_trips_through_json(tmp_path):
    original = BlockMap(size=3 * BLOCK_SIZE, digests={0: "a" * 64, 2: "b" * 64})
    text = original.to_json()
    assert json.loads(text)["block_size"] == BLOCK_SIZE
    assert BlockMap.from_json(text) == original


@pytest.mark.parametrize("text", ["not json", "[]", '{"size": 1}', '{"size": 1, "block_size": 4096, "digests": {}}',
                                  '{"size": 1, "block_size": 524288, "digests": {"x": "ab"}}',
                                  '{"size": 1, "block_size": 524288, "digests": {"1": 5}}'])
def test_a_damaged_block_map_is_refused(text):
    with pytest.raises(OperationError, match="block map"):
        BlockMap.from_json(text)


def test_without_a_parent_every_block_is_written():
    new = BlockMap(size=4 * BLOCK_SIZE, digests={3: "c" * 64, 0: "a" * 64})
    assert changed_blocks(new, None) == ([0, 3], [])


def test_only_changed_blocks_are_written_and_vanished_ones_become_zeros():
    parent = BlockMap(size=8 * BLOCK_SIZE, digests={0: "a" * 64, 1: "b" * 64, 2: "c" * 64, 7: "d" * 64})
    new = BlockMap(size=8 * BLOCK_SIZE, digests={0: "a" * 64, 1: "B" * 64, 5: "e" * 64, 7: "d" * 64})
    assert changed_blocks(new, parent) == ([1, 5], [2])


def test_blocks_beyond_a_shrunken_disk_become_zeros():
    parent = BlockMap(size=8 * BLOCK_SIZE, digests={0: "a" * 64, 7: "d" * 64})
    new = BlockMap(size=4 * BLOCK_SIZE, digests={0: "a" * 64})
    assert changed_blocks(new, parent) == ([], [7])
