"""Durable key/value items, one file each under <data dir>/items/.

A write is acknowledged only after the bytes and the directory entry are on
disk (temp file, fsync, rename, fsync of the directory), so an answered PUT
survives a crash, a power cut or the instance being replaced.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

MAX_ITEM_BYTES = 1024 * 1024
KEY_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# '#' is outside the key alphabet: a temp file can never be listed, served or overwritten as an item.
TMP_PREFIX = "#tmp-"
# Temp files older than this are leftovers of a crash; younger ones may belong to another
# instance sharing the volume during a rolling replacement.
STALE_TMP_SECONDS = 600


def valid_key(key: str) -> bool:
    return bool(KEY_PATTERN.fullmatch(key)) and key not in (".", "..")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ItemStore:
    """Items as files; every method raises OSError when the data directory fails."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.dir = data_dir / "items"

    def _ensure_dir(self) -> None:
        if not self.dir.is_dir():
            self.dir.mkdir(mode=0o750, exist_ok=True)
            _fsync_dir(self.data_dir)

    def put(self, key: str, data: bytes) -> bool:
        """Store durably; True when the item is new, False when it replaced one."""
        self._ensure_dir()
        target = self.dir / key
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            existed = target.exists()
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.dir)
        return not existed

    def get(self, key: str) -> bytes | None:
        try:
            return (self.dir / key).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> bool:
        """Remove durably; False when there was nothing to remove."""
        try:
            (self.dir / key).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.dir)
        return True

    def keys(self) -> list[str]:
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries if valid_key(e.name) and e.is_file(follow_symlinks=False))

    def remove_stale_temp_files(self, older_than: float = STALE_TMP_SECONDS) -> int:
        """Delete temp files a crashed process left behind; returns how many."""
        removed = 0
        cutoff = time.time() - older_than
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry.name.startswith(TMP_PREFIX) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
        return removed
