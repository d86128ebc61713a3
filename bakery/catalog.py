"""The record of image versions and cached layers.

`Catalog` is the interface; `SqliteCatalog` keeps it in `.bakery/catalog.db` (WAL mode, every change one
transaction, so kill -9 at any moment leaves it consistent). The AWS target keeps the same facts as AMI tags
and SSM parameters. A version is reserved as `pending` before the image is committed (its labels carry the
version) and becomes `ready` only once the image exists; a pending row whose process is gone is a leftover
that `gc` (and the next bake) removes. Disks: catalog_disks.DiskRecords; packages: catalog_packages; what gc
plans over and forgets: catalog_gc.
"""

from __future__ import annotations

import json
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bakery import catalog_schema
from bakery.catalog_disks import DiskRecords
from bakery.catalog_gc import GcRecords
from bakery.catalog_packages import PackageRecords
from bakery.errors import ConfigError

# The release kinds after which an environment runs the release's version (gc and the pipeline read them too).
ROLLOUT_KINDS = ("deploy", "promote", "config", "rollback")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Catalog(ABC):
    """What every target's catalog records: versions, their layers, cached layers, bases."""

    @abstractmethod
    def reserve_version(self, image: str, run_id: str, pid: int, taken: Callable[[str], bool] | None = None) -> str:
        """Allocate a unique, sortable version and record it as pending; skip versions `taken` says exist elsewhere."""

    @abstractmethod
    def complete_version(self, image: str, version: str, *, image_ref: str, image_id: str, input_digest: str,
                         provenance: dict[str, Any], layers: list[dict[str, Any]]) -> None:
        """Turn a pending version into a ready one, with its provenance and layers."""

    @abstractmethod
    def discard_version(self, image: str, version: str) -> None:
        """Forget a version (a failed bake's reservation, or a version gc removed)."""

    @abstractmethod
    def versions(self, image: str | None = None, status: str | None = "ready") -> list[dict[str, Any]]:
        """Versions, newest first."""

    @abstractmethod
    def version(self, image: str, version: str) -> dict[str, Any] | None:
        """One version with its provenance and layers."""

    def resolve(self, image: str, version: str | None, *, ready_only: bool = True) -> dict[str, Any]:
        """The version a command names (the newest ready one when none is named), or one line saying how to find one.
        `show` passes ready_only=False so a pending bake can be looked at."""
        if version is None:
            rows = self.versions(image)
            if not rows:
                raise ConfigError(f"image '{image}' has no versions; bake one with: ./bake.py build {image}")
            version = rows[0]["version"]
        record = self.version(image, version)
        if record is None or (ready_only and record["status"] != "ready"):
            raise ConfigError(f"unknown version '{image}:{version}'; list versions with: ./bake.py images {image}")
        return record

    @abstractmethod
    def adopt_version(self, image: str, version: str, *, run_id: str, pid: int, image_ref: str, image_id: str,
                      input_digest: str, provenance: dict[str, Any]) -> bool:
        """Record a ready version made elsewhere (an AMI another checkout baked); False when it is known already."""

    @abstractmethod
    def find_by_input(self, image: str, input_digest: str) -> list[dict[str, Any]]:
        """Ready versions baked from exactly these inputs, newest first."""

    @abstractmethod
    def layer(self, key: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def put_layer(self, key: str, *, image: str, role: str, ref: str, image_id: str, parent: str) -> None: ...

    @abstractmethod
    def forget_layer(self, key: str) -> None: ...

    @abstractmethod
    def record_base(self, ref: str, release: str, digest: str) -> None: ...

    @abstractmethod
    def record_packages(self, image: str, version: str, packages: dict[str, str]) -> None:
        """Keep a version's installed packages (name -> version): `show` lists the changes between versions."""

    @abstractmethod
    def record_verification(self, image: str, version: str, *, env: str | None, started: str, seconds: float,
                            passed: bool, run_id: str, summary: str, reports: dict[str, Any],
                            kind: str = "container") -> int:
        """Record one verification of one version (re-verification adds a row); kind: container or vm."""

    @abstractmethod
    def verifications(self, image: str, version: str) -> list[dict[str, Any]]:
        """Every verification of a version, newest first."""

    @abstractmethod
    def start_release(self, env: str, image: str, version: str, *, previous_version: str | None, kind: str, user: str,
                      forced: bool, run_id: str, pid: int, config_digest: str | None,
                      details: dict[str, Any] | None = None) -> int:
        """Record that a rollout of env to image:version began."""

    @abstractmethod
    def finish_release(self, release_id: int, status: str, *, reason: str | None = None,
                       details: dict[str, Any] | None = None) -> None:
        """Close a release with its outcome."""

    @abstractmethod
    def releases(self, env: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Release history, newest first."""


class SqliteCatalog(PackageRecords, DiskRecords, GcRecords, Catalog):
    """The local target's catalog: one SQLite file in WAL mode."""

    def __init__(self, path: Path):
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._blank: sqlite3.Connection | None = None
        if path.exists():
            self._writer()  # an unreadable catalog is named at once

    @property
    def _db(self) -> sqlite3.Connection:
        """The catalog to read. An absent catalog is an empty one: reading it creates nothing (a command refused
        on bad input leaves no .bakery/catalog.db behind); the first write creates the file."""
        if self._conn is None and not self.path.exists():
            if self._blank is None:
                self._blank = sqlite3.connect(":memory:", isolation_level=None)
                self._blank.row_factory = sqlite3.Row
                for statement in catalog_schema.statements():
                    self._blank.execute(statement)
            return self._blank
        return self._writer()

    def _writer(self) -> sqlite3.Connection:
        """The catalog file, created (with its schema) when it does not exist yet."""
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                self._conn.row_factory = sqlite3.Row
                self._conn.execute("PRAGMA busy_timeout=60000")
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._retry_while_locked(self._init_schema)
            except sqlite3.DatabaseError as exc:
                self._conn = None
                raise ConfigError(f"{self.path}: catalog unreadable ({exc}); move it aside and re-run") from exc
            except ConfigError:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                raise
        return self._conn

    def _init_schema(self) -> None:
        with self._tx() as db:
            catalog_schema.upgrade(db)
        blank = catalog_schema.check(self._writer(), self.path)  # before WAL mode changes a foreign file
        self._writer().execute("PRAGMA journal_mode=WAL")  # _conn is set: _writer() returns it
        self._writer().execute("PRAGMA synchronous=NORMAL")
        with self._tx() as db:
            for statement in catalog_schema.statements():
                db.execute(statement)
            if blank:
                catalog_schema.mark(db)

    @staticmethod
    def _retry_while_locked(action, seconds: float = 60) -> None:
        """Switching a new file to WAL can report 'locked' without waiting on the busy handler: wait here."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        for db in (self._conn, self._blank):
            if db is not None:
                db.close()
        self._conn = self._blank = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front so allocations never race."""
        db = self._writer()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def reserve_version(self, image: str, run_id: str, pid: int, taken: Callable[[str], bool] | None = None) -> str:
        day = datetime.now(UTC).strftime("%Y%m%d")
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM versions WHERE image = ?", (image,)).fetchone()[0]
            count = db.execute(
                "SELECT COUNT(*) FROM versions WHERE image = ? AND version LIKE ?", (image, f"{day}.%")
            ).fetchone()[0]
            number = count + 1
            # Image names are global to the host while a catalog belongs to one checkout: another checkout of the
            # same project may already own a version's tag, so `taken` checks the container storage too.
            while (db.execute("SELECT 1 FROM versions WHERE image = ? AND version = ?", (image, _version(day, number)))
                   .fetchone()
                   or (taken is not None and taken(_version(day, number)))):
                number += 1
            version = _version(day, number)
            db.execute(
                "INSERT INTO versions (image, version, seq, status, created, run_id, pid)"
                " VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                (image, version, seq, _now(), run_id, pid),
            )
        return version

    def complete_version(self, image, version, *, image_ref, image_id, input_digest, provenance, layers) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE versions SET status = 'ready', image_ref = ?, image_id = ?, input_digest = ?, git_commit = ?,"
                " provenance = ? WHERE image = ? AND version = ?",
                (image_ref, image_id, input_digest, provenance.get("git_commit"), json.dumps(provenance),
                 image, version),
            )
            for position, layer in enumerate(layers):
                db.execute(
                    "INSERT INTO version_layers (image, version, position, role, role_digest, layer_key, cached)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (image, version, position, layer["role"], layer["role_digest"], layer["key"], int(layer["cached"])),
                )

    def discard_version(self, image: str, version: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM versions WHERE image = ? AND version = ?", (image, version))

    def adopt_version(self, image: str, version: str, *, run_id: str, pid: int, image_ref: str, image_id: str,
                      input_digest: str, provenance: dict[str, Any]) -> bool:
        """Record a ready version made elsewhere (an AMI another checkout baked); False when it is known already."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM versions WHERE image = ? AND version = ?", (image, version)).fetchone():
                return False
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM versions WHERE image = ?", (image,)).fetchone()[0]
            db.execute(
                "INSERT INTO versions (image, version, seq, status, created, run_id, pid, image_ref, image_id, "
                "input_digest, git_commit, provenance) VALUES (?, ?, ?, 'ready', ?, ?, ?, ?, ?, ?, ?, ?)",
                (image, version, seq, _now(), run_id, pid, image_ref, image_id, input_digest,
                 provenance.get("git_commit"), json.dumps(provenance)))
        return True

    def versions(self, image=None, status="ready"):
        query = ("SELECT image, version, seq, status, created, run_id, pid, image_ref, image_id, input_digest,"
                 " git_commit FROM versions")
        clauses, args = [], []
        if image:
            clauses.append("image = ?")
            args.append(image)
        if status:
            clauses.append("status = ?")
            args.append(status)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        # Newest first by the version itself (YYYYMMDD.N, numerically), not by when this catalog learnt of it: a version
        # adopted from an AMI baked elsewhere may be older than the ones baked here.
        query += (" ORDER BY image, CAST(substr(version, 1, 8) AS INTEGER) DESC,"
                  " CAST(substr(version, 10) AS INTEGER) DESC, seq DESC")
        return [dict(row) for row in self._db.execute(query, args)]

    def version(self, image, version):
        row = self._db.execute("SELECT * FROM versions WHERE image = ? AND version = ?", (image, version)).fetchone()
        if row is None:
            return None
        result = dict(row)
        result["provenance"] = json.loads(result["provenance"]) if result["provenance"] else {}
        result["layers"] = [
            dict(r) for r in self._db.execute(
                "SELECT position, role, role_digest, layer_key, cached FROM version_layers"
                " WHERE image = ? AND version = ? ORDER BY position", (image, version))
        ]
        for layer in result["layers"]:
            layer["cached"] = bool(layer["cached"])
        return result

    def find_by_input(self, image, input_digest):
        rows = self._db.execute(
            "SELECT image, version, image_ref, image_id FROM versions WHERE image = ? AND input_digest = ?"
            " AND status = 'ready' ORDER BY seq DESC", (image, input_digest))
        return [dict(r) for r in rows]

    def layer(self, key):
        row = self._db.execute("SELECT * FROM layers WHERE layer_key = ?", (key,)).fetchone()
        return dict(row) if row else None

    def put_layer(self, key, *, image, role, ref, image_id, parent):
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO layers (layer_key, image, role, ref, image_id, parent, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", (key, image, role, ref, image_id, parent, _now()))

    def forget_layer(self, key):
        with self._tx() as db:
            db.execute("DELETE FROM layers WHERE layer_key = ?", (key,))

    def layers(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute("SELECT * FROM layers ORDER BY created")]

    def record_verification(self, image, version, *, env, started, seconds, passed, run_id, summary, reports,
                            kind="container"):
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO verifications (image, version, env, started, seconds, passed, run_id, summary, reports,"
                " kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (image, version, env, started, seconds, int(passed), run_id, summary, json.dumps(reports), kind))
            return cur.lastrowid

    def verifications(self, image, version):
        rows = self._db.execute("SELECT * FROM verifications WHERE image = ? AND version = ? ORDER BY id DESC",
                                (image, version))
        result = [row for r in rows if (row := _loads(r, "reports")) is not None]
        for r in result:
            r["passed"] = bool(r["passed"])
        return result

    def start_release(self, env, image, version, *, previous_version, kind, user, forced, run_id, pid, config_digest,
                      details=None):
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO releases (env, image, version, previous_version, kind, status, started, user, forced, "
                "run_id, pid, config_digest, details) VALUES (?, ?, ?, ?, ?, 'in_progress', ?, ?, ?, ?, ?, ?, ?)",
                (env, image, version, previous_version, kind, _now(), user, int(forced), run_id, pid, config_digest,
                 json.dumps(details or {})))
            return cur.lastrowid

    def finish_release(self, release_id, status, *, reason=None, details=None):
        with self._tx() as db:
            row = db.execute("SELECT started, details FROM releases WHERE id = ?", (release_id,)).fetchone()
            if row is None:
                return
            started = datetime.strptime(row["started"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            merged = {**(json.loads(row["details"]) if row["details"] else {}), **(details or {})}
            db.execute("UPDATE releases SET status = ?, finished = ?, seconds = ?, reason = ?, details = ?"
                       " WHERE id = ?",
                       (status, _now(), round((datetime.now(UTC) - started).total_seconds(), 1), reason,
                        json.dumps(merged), release_id))

    def releases(self, env=None, limit=20):
        if env:
            rows = self._db.execute("SELECT * FROM releases WHERE env = ? ORDER BY id DESC LIMIT ?", (env, limit))
        else:
            rows = self._db.execute("SELECT * FROM releases ORDER BY id DESC LIMIT ?", (limit,))
        result = [row for r in rows if (row := _loads(r, "details")) is not None]
        for r in result:
            r["forced"] = bool(r["forced"])
        return result


def _loads(row: sqlite3.Row | None, *fields: str) -> dict[str, Any] | None:
    if row is None:
        return None
    result = dict(row)
    result.update({name: json.loads(result[name]) if result.get(name) else None for name in fields})
    return result


def _version(day: str, number: int) -> str:
    """YYYYMMDD.NNN: sorts the same as text and as build order (up to 999 bakes an image a day)."""
    return f"{day}.{number:03d}"


def open_catalog(state_dir: Path) -> SqliteCatalog:
    return SqliteCatalog(state_dir / "catalog.db")
