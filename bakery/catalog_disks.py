"""The catalog's record of bootable disks: one row per version and format, written only once the file is complete.

A disk row and the disk's sha256 in the version's provenance are written in one transaction, so the catalog
never lists a disk whose digest the provenance lacks (or the other way round). A disk's block map (the sha256 of
each allocated 512 KiB block, by block index) is kept by the disk's own sha256: publishing a later disk to EBS
compares against it to send only the blocks that changed.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any


class DiskRecords:
    """Mixed into SqliteCatalog: it provides the connection (_db) and the write transaction (_tx)."""

    @property
    def _db(self) -> sqlite3.Connection:  # pragma: no cover - provided by SqliteCatalog
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:  # pragma: no cover - provided by SqliteCatalog
        raise NotImplementedError

    def record_disk(self, image: str, version: str, *, disk_format: str, path: str, sha256: str, size: int,
                    allocated: int, run_id: str, details: dict[str, Any]) -> None:
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO disks (image, version, format, path, sha256, bytes, allocated, created,"
                       " run_id, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (image, version, disk_format, path, sha256, size, allocated, created, run_id,
                        json.dumps(details, sort_keys=True)))
            row = db.execute("SELECT provenance FROM versions WHERE image = ? AND version = ?",
                             (image, version)).fetchone()
            if row is not None and row["provenance"]:
                provenance = json.loads(row["provenance"])
                provenance.setdefault("disks", {})[disk_format] = f"sha256:{sha256}"
                db.execute("UPDATE versions SET provenance = ? WHERE image = ? AND version = ?",
                           (json.dumps(provenance), image, version))

    def disks(self, image: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
        """Recorded disks, newest version first."""
        query, args = "SELECT * FROM disks", []
        if image is not None:
            query, args = query + " WHERE image = ?", [image]
            if version is not None:
                query, args = query + " AND version = ?", [image, version]
        return [_row(r) for r in self._db.execute(query + " ORDER BY image, version DESC, format", args)]

    def disk(self, image: str, version: str, disk_format: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM disks WHERE image = ? AND version = ? AND format = ?",
                               (image, version, disk_format)).fetchone()
        return _row(row) if row is not None else None

    def forget_disk(self, image: str, version: str, disk_format: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM disks WHERE image = ? AND version = ? AND format = ?",
                       (image, version, disk_format))

    def record_disk_blocks(self, sha256: str, *, size: int, digests: dict[int, str]) -> None:
        """The block map of the disk with this sha256 (the same bytes always have the same map: replaced as is)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO disk_blocks (sha256, size, digests) VALUES (?, ?, ?)",
                       (sha256, size, json.dumps({str(k): v for k, v in sorted(digests.items())})))

    def disk_blocks(self, sha256: str) -> dict[str, Any] | None:
        """{sha256, size, digests: {block index: sha256 hex}} of a disk, or None when its map was never recorded."""
        row = self._db.execute("SELECT * FROM disk_blocks WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            return None
        return {"sha256": row["sha256"], "size": row["size"],
                "digests": {int(k): v for k, v in json.loads(row["digests"]).items()}}


def _row(row: sqlite3.Row) -> dict[str, Any]:
    result = dict(row)
    result["details"] = json.loads(result["details"]) if result.get("details") else {}
    return result

