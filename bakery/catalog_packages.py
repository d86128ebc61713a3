"""The catalog's record of what each version has installed, and of the updates each base was made for.

A version's packages (name -> version, from the dpkg database of its final image) are kept per version, so `show`
can say what changed against the version it replaces. A base made by `base --if-updates` keeps the updates it was
made for; a package version that one of them named as a security update is marked as such in those changes.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any


class PackageRecords:
    """Mixed into SqliteCatalog: it provides the connection (_db) and the write transaction (_tx)."""

    @property
    def _db(self) -> sqlite3.Connection:  # pragma: no cover - provided by SqliteCatalog
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:  # pragma: no cover - provided by SqliteCatalog
        raise NotImplementedError

    def versions(self, image: str | None = None, status: str | None = "ready") -> list[dict[str, Any]]:
        raise NotImplementedError  # pragma: no cover - provided by SqliteCatalog

    def record_base(self, ref: str, release: str, digest: str, updates: list[dict[str, Any]] | None = None) -> None:
        """A base's row; a later call without updates (every bake records its base) keeps the ones recorded."""
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._tx() as db:
            db.execute("INSERT INTO bases (ref, release, digest, created, updates) VALUES (?, ?, ?, ?, ?)"
                       " ON CONFLICT (ref) DO UPDATE SET release = excluded.release, digest = excluded.digest,"
                       " updates = COALESCE(excluded.updates, bases.updates)",
                       (ref, release, digest, created, None if updates is None else json.dumps(updates)))

    def base_updates(self) -> list[dict[str, Any]]:
        """Every update a recorded base was made for (name, installed, candidate, security, origin)."""
        found = []
        for row in self._db.execute("SELECT updates FROM bases WHERE updates IS NOT NULL ORDER BY created"):
            found += json.loads(row["updates"])
        return found

    def record_packages(self, image: str, version: str, packages: dict[str, str]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM version_packages WHERE image = ? AND version = ?", (image, version))
            db.executemany("INSERT INTO version_packages (image, version, package, package_version)"
                           " VALUES (?, ?, ?, ?)", [(image, version, name, v) for name, v in packages.items()])

    def packages(self, image: str, version: str) -> dict[str, str] | None:
        """name -> version, or None when the version was baked before packages were recorded."""
        rows = self._db.execute("SELECT package, package_version FROM version_packages WHERE image = ? AND"
                                " version = ? ORDER BY package", (image, version)).fetchall()
        return {r["package"]: r["package_version"] for r in rows} or None

    def previous_version(self, image: str, version: str) -> str | None:
        """The ready version this one replaced: the next older one of the same image."""
        ordered = [r["version"] for r in self.versions(image)]
        if version not in ordered:
            return None
        index = ordered.index(version)
        return ordered[index + 1] if index + 1 < len(ordered) else None

    def package_changes(self, image: str, version: str) -> dict[str, Any]:
        """What changed against the version it replaces; `note` says why there is nothing to compare."""
        previous = self.previous_version(image, version)
        new = self.packages(image, version)
        result: dict[str, Any] = {"previous": previous, "added": {}, "removed": {}, "changed": {}, "note": ""}
        if new is None:
            result["note"] = "no package list recorded for this version"
            return result
        if previous is None:
            result["note"] = "first version of the image: nothing to compare"
            return result
        old = self.packages(image, previous)
        if old is None:
            result["note"] = f"no package list recorded for {previous}"
            return result
        security = {(u["name"], u["candidate"]) for u in self.base_updates() if u.get("security")}
        result.update(diff_packages(old, new, security))
        return result


def diff_packages(old: dict[str, str], new: dict[str, str], security: set[tuple[str, str]]) -> dict[str, Any]:
    """Added, removed and changed (old -> new) packages; a new version a base's update named security is marked."""
    return {
        "added": {n: {"version": new[n], "security": (n, new[n]) in security} for n in sorted(set(new) - set(old))},
        "removed": {n: old[n] for n in sorted(set(old) - set(new))},
        "changed": {n: {"old": old[n], "new": new[n], "security": (n, new[n]) in security}
                    for n in sorted(set(old) & set(new)) if old[n] != new[n]},
    }
