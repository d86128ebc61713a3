"""What `bake.py gc` reads from the catalog and forgets in it: one query per kind of row, one transaction per
removal, whatever the catalog's size."""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from typing import Any


class GcRecords:
    """Mixed into SqliteCatalog: it provides the connection (_db) and the write transaction (_tx)."""

    @property
    def _db(self) -> sqlite3.Connection:  # pragma: no cover - provided by SqliteCatalog
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:  # pragma: no cover - provided by SqliteCatalog
        raise NotImplementedError

    def discard_versions(self, pairs: list[tuple[str, str]]) -> None:
        """Forget many versions in one transaction (gc removing what it deleted from podman)."""
        with self._tx() as db:
            db.executemany("DELETE FROM versions WHERE image = ? AND version = ?", pairs)

    def gc_versions(self) -> list[dict[str, Any]]:
        """Ready versions with the artifacts baked into each ({name: version}) and the keys of the layers each is
        built on: what gc plans over, in one query."""
        rows = self._db.execute("SELECT image, version, seq, image_ref, image_id, created,"
                                " json_extract(provenance, '$.artifacts') AS artifacts,"
                                " (SELECT json_group_array(layer_key) FROM version_layers l"
                                "  WHERE l.image = v.image AND l.version = v.version) AS layer_keys"
                                " FROM versions v WHERE status = 'ready'")
        return [{**dict(r), "artifacts": json.loads(r["artifacts"]) if r["artifacts"] else {},
                 "layer_keys": json.loads(r["layer_keys"] or "[]")} for r in rows]

    def release_refs(self) -> list[dict[str, Any]]:
        """Every release's env, image, versions, kind and status (no details): what gc protects, in one query."""
        rows = self._db.execute("SELECT id, env, image, version, previous_version, kind, status FROM releases")
        return [dict(r) for r in rows]

    def forget_layers(self, layers: list[tuple[str, str]]) -> None:
        """Forget many cached layers, each (key, image id), in one transaction (gc removing what it deleted from
        podman): a row a bake has since replaced with a new image of the same key stays."""
        with self._tx() as db:
            db.executemany("DELETE FROM layers WHERE layer_key = ? AND image_id = ?", layers)
