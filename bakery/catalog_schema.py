"""The catalog's schema (catalog_schema.sql) and the check that a catalog file has it.

A catalog another tool made, or one from a newer bakery, is refused with one line before anything reads or
writes it: its tables would be misread (or changed) by statements written for this schema.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bakery.errors import ConfigError

SCHEMA = (Path(__file__).parent / "catalog_schema.sql").read_text(encoding="utf-8")
# Bump when catalog_schema.sql changes in a way older code cannot read; PRAGMA user_version carries it.
SCHEMA_VERSION = 4


def statements(script: str = SCHEMA) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _table(name: str) -> str:
    """This schema's CREATE TABLE statement of one table."""
    return next(s for s in statements() if s.startswith(f"CREATE TABLE IF NOT EXISTS {name} ("))


# What turns a catalog of version N into N+1: only additions, so older rows keep their meaning. SQLite cannot widen
# a CHECK in place: the verifications table is rebuilt with its rows and ids (new tables come from SCHEMA itself).
UPGRADES = {
    1: ["ALTER TABLE verifications ADD COLUMN kind TEXT NOT NULL DEFAULT 'container' "
        "CHECK (kind IN ('container', 'vm'))"],
    2: ["ALTER TABLE verifications RENAME TO verifications_v2",
        _table("verifications"),
        "INSERT INTO verifications (id, image, version, env, started, seconds, passed, run_id, summary, reports, kind)"
        " SELECT id, image, version, env, started, seconds, passed, run_id, summary, reports, kind"
        " FROM verifications_v2",
        "DROP TABLE verifications_v2"],  # its index goes with it; the caller creates SCHEMA's again
    # a base's updates (what `base --if-updates` found: security ones marked); version_packages is a new table
    3: ["ALTER TABLE bases ADD COLUMN updates TEXT"],
}


def _columns(conn: sqlite3.Connection) -> dict[str, set[str]]:
    tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: {row[1] for row in conn.execute(f'PRAGMA table_info("{t}")')} for t in tables}


def _expected() -> dict[str, set[str]]:
    blank = sqlite3.connect(":memory:")
    try:
        for statement in statements():
            blank.execute(statement)
        return _columns(blank)
    finally:
        blank.close()


def check(conn: sqlite3.Connection, path: Path) -> bool:
    """Before anything is created in it: refuse a catalog from a newer bakery or one with other tables' shapes.
    True when the file is blank (new): only then is it stamped, so that reading an older catalog changes nothing."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ConfigError(f"{path}: catalog schema version {version} is newer than this bakery's "
                          f"({SCHEMA_VERSION}); use the bakery that wrote it, or move the file aside")
    actual, expected = _columns(conn), _expected()
    if actual and not actual.keys() & expected.keys():
        raise ConfigError(f"{path}: not a bakery catalog (tables {', '.join(sorted(actual)[:5])}); "
                          "move the file aside and re-run")
    for table in sorted(actual.keys() & expected.keys()):
        missing = sorted(expected[table] - actual[table])
        if missing:
            raise ConfigError(f"{path}: not a bakery catalog of this version (table '{table}' lacks "
                              f"{', '.join(missing)}); move the file aside and re-run")
    return not actual


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring a catalog an older bakery stamped up to this schema (tables it lacks are created by the caller)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 and "kind" not in _columns(conn).get("verifications", {"kind"}):
        version = 1  # made before catalogs were stamped, and never stamped since (bakery only stamps new ones)
    while 0 < version < SCHEMA_VERSION:
        for statement in UPGRADES[version]:
            conn.execute(statement)
        version += 1
        conn.execute(f"PRAGMA user_version = {version}")


def mark(conn: sqlite3.Connection) -> None:
    """Stamp the schema version on a catalog that has the schema now."""
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
