"""A catalog an older bakery wrote is upgraded in place (its rows kept), one a newer bakery wrote is refused, a
disk is recorded together with its digest in the version's provenance, and a disk's block map is kept by its sha256."""

import json
import sqlite3

import pytest

from bakery import catalog_schema
from bakery.catalog import SqliteCatalog
from bakery.errors import ConfigError
from tests.conftest import REPO

pytestmark = pytest.mark.unit

VERSION = "20240501.001"


def old_schema():
    """catalog_schema.sql of schema version 1 (before disks and verification kinds), as bakery 27cdca7 had it."""
    return (REPO / "tests" / "fixtures" / "catalog_schema_v1.sql").read_text(encoding="utf-8")


def v3_schema():
    """catalog_schema.sql of schema version 3 (aws verifications, block maps), as bakery 1af1ee8 had it."""
    return (REPO / "tests" / "fixtures" / "catalog_schema_v3.sql").read_text(encoding="utf-8")


def v2_schema():
    """catalog_schema.sql of schema version 2 (disks, verification kinds container and vm), as bakery 55bf389 had it."""
    return (REPO / "tests" / "fixtures" / "catalog_schema_v2.sql").read_text(encoding="utf-8")


def old_catalog(path, user_version=1, schema=None):
    """A catalog as bakery with schema version 1 (or `schema`) left it: a ready version, a passed verification, WAL
    mode."""
    if schema is None:
        schema = old_schema()
        assert "kind TEXT NOT NULL DEFAULT 'container'" not in schema
        assert "CREATE TABLE IF NOT EXISTS disks" not in schema
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for statement in catalog_schema.statements(schema):
        db.execute(statement)
    db.execute(f"PRAGMA user_version = {user_version}")
    db.execute("INSERT INTO versions (image, version, seq, status, created, run_id, pid, image_ref, input_digest,"
               " provenance) VALUES ('webapp', ?, 1, 'ready', '2024-05-01T12:00:00Z', 'r1', 1, 'ref', 'sha256:in',"
               " ?)", (VERSION, json.dumps({"git_commit": "abc", "build_time": "2024-05-01T12:00:00Z"})))
    db.execute("INSERT INTO verifications (image, version, env, started, seconds, passed, run_id, summary, reports)"
               " VALUES ('webapp', ?, NULL, '2024-05-01T12:05:00Z', 12.5, 1, 'r2', '9 passed', '{}')", (VERSION,))
    db.close()
    return path


def user_version(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


@pytest.mark.parametrize("stamp", [1, 0])
def test_an_older_catalog_is_upgraded_in_place_and_keeps_its_rows(tmp_path, stamp):
    """1: written by the previous bakery. 0: written before catalogs carried a schema version at all."""
    path = old_catalog(tmp_path / "catalog.db", stamp)
    catalog = SqliteCatalog(path)
    try:
        record = catalog.version("webapp", VERSION)
        assert record["status"] == "ready" and record["provenance"]["git_commit"] == "abc"
        [verification] = catalog.verifications("webapp", VERSION)
        assert verification["kind"] == "container" and verification["summary"] == "9 passed"
        assert catalog.disks() == []
        catalog.record_verification("webapp", VERSION, env="qa", started="2024-05-01T13:00:00Z", seconds=90.0,
                                    passed=True, run_id="r3", summary="vm", reports={}, kind="vm")
        assert [v["kind"] for v in catalog.verifications("webapp", VERSION)] == ["vm", "container"]
    finally:
        catalog.close()
    assert user_version(path) == catalog_schema.SCHEMA_VERSION == 4
    reopened = SqliteCatalog(path)
    try:
        assert len(reopened.verifications("webapp", VERSION)) == 2
    finally:
        reopened.close()


@pytest.mark.parametrize("stamp", [1, 2])
def test_an_upgraded_catalog_takes_aws_verifications_and_block_maps_and_keeps_its_ids(tmp_path, stamp):
    """Schema 3: the read-back verification of an AMI (kind aws) and the disks' block maps; ids keep counting."""
    path = old_catalog(tmp_path / "catalog.db", stamp, v2_schema() if stamp == 2 else None)
    catalog = SqliteCatalog(path)
    try:
        [old] = catalog.verifications("webapp", VERSION)
        new = catalog.record_verification("webapp", VERSION, env=None, started="2024-05-01T14:00:00Z", seconds=3.0,
                                          passed=True, run_id="r4", summary="read back", reports={}, kind="aws")
        assert new > old["id"]
        assert [v["kind"] for v in catalog.verifications("webapp", VERSION)] == ["aws", "container"]
        assert catalog.disk_blocks("ab" * 32) is None
        catalog.record_disk_blocks("ab" * 32, size=3 << 20, digests={0: "00" * 32, 5: "05" * 32})
        assert catalog.disk_blocks("ab" * 32) == {"sha256": "ab" * 32, "size": 3 << 20,
                                                  "digests": {0: "00" * 32, 5: "05" * 32}}
    finally:
        catalog.close()
    assert user_version(path) == 4
    db = sqlite3.connect(path)
    try:
        [index] = db.execute("SELECT sql FROM sqlite_master WHERE name = 'verifications_by_version'").fetchall()
        assert "verifications (image, version)" in index[0]
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def test_a_verification_kind_other_than_container_vm_or_aws_is_refused_by_the_upgraded_catalog(tmp_path):
    catalog = SqliteCatalog(old_catalog(tmp_path / "catalog.db"))
    try:
        with pytest.raises(sqlite3.IntegrityError):
            catalog.record_verification("webapp", VERSION, env=None, started="s", seconds=1.0, passed=True,
                                        run_id="r", summary="", reports={}, kind="ami")
        assert [v["kind"] for v in catalog.verifications("webapp", VERSION)] == ["container"]
    finally:
        catalog.close()


def test_a_catalog_from_a_newer_bakery_is_refused_untouched(tmp_path):
    path = old_catalog(tmp_path / "catalog.db", user_version=5)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"catalog schema version 5 is newer than this bakery's \(4\)"):
        SqliteCatalog(path)
    assert path.read_bytes() == before and user_version(path) == 5


def test_a_new_catalog_is_stamped_with_the_current_schema_version(tmp_path):
    catalog = SqliteCatalog(tmp_path / "catalog.db")
    catalog.reserve_version("webapp", "r", 1)
    catalog.close()
    assert user_version(tmp_path / "catalog.db") == 4


def ready_catalog(tmp_path):
    catalog = SqliteCatalog(tmp_path / "catalog.db")
    version = catalog.reserve_version("webapp", "r", 1)
    catalog.complete_version("webapp", version, image_ref="ref", image_id="sha256:i", input_digest="sha256:in",
                             provenance={"git_commit": "abc"}, layers=[])
    return catalog, version


def disk(catalog, version, disk_format="raw", sha256="ab" * 32):
    catalog.record_disk("webapp", version, disk_format=disk_format, path=f"disks/webapp/{version}.{disk_format}",
                        sha256=sha256, size=3 << 30, allocated=474 << 20, run_id="disk-run",
                        details={"kernel_cmdline": "root=PARTUUID=x ro"})


def test_record_disk_writes_the_row_and_the_digest_into_the_version_s_provenance(tmp_path):
    catalog, version = ready_catalog(tmp_path)
    try:
        disk(catalog, version)
        disk(catalog, version, "qcow2", "cd" * 32)
        disk(catalog, version, "raw", "ef" * 32)  # rebuilt (e.g. another --size): replaced, not added
        [raw] = [d for d in catalog.disks("webapp", version) if d["format"] == "raw"]
        assert raw["sha256"] == "ef" * 32 and raw["bytes"] == 3 << 30 and raw["allocated"] == 474 << 20
        assert raw["details"] == {"kernel_cmdline": "root=PARTUUID=x ro"}
        assert catalog.disk("webapp", version, "qcow2")["sha256"] == "cd" * 32
        assert catalog.version("webapp", version)["provenance"] == {
            "git_commit": "abc", "disks": {"raw": "sha256:" + "ef" * 32, "qcow2": "sha256:" + "cd" * 32}}
        assert catalog.disks("other") == [] and len(catalog.disks()) == 2
        catalog.forget_disk("webapp", version, "qcow2")
        assert [d["format"] for d in catalog.disks("webapp")] == ["raw"]
    finally:
        catalog.close()


def test_a_disk_whose_provenance_cannot_be_updated_is_not_recorded_either(tmp_path):
    """One transaction: a disk row whose digest the provenance lacks would be a disk nobody can trace."""
    catalog, version = ready_catalog(tmp_path)
    try:
        with catalog._tx() as db:
            db.execute("UPDATE versions SET provenance = '{not json' WHERE version = ?", (version,))
        with pytest.raises(ValueError):
            disk(catalog, version)
        assert catalog.disks() == []
    finally:
        catalog.close()


def test_a_discarded_version_takes_its_disk_rows_with_it(tmp_path):
    catalog, version = ready_catalog(tmp_path)
    try:
        disk(catalog, version)
        catalog.discard_version("webapp", version)
        assert catalog.disks() == []
    finally:
        catalog.close()


def test_a_schema_3_catalog_keeps_its_bases_and_takes_package_lists_and_base_updates(tmp_path):
    """Schema 4: the updates a base was made for (bases.updates) and each version's packages (version_packages)."""
    path = old_catalog(tmp_path / "catalog.db", 3, v3_schema())
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO bases (ref, release, digest, created) VALUES ('b1', 'bookworm', 'sha256:b', 'then')")
    db.close()
    catalog = SqliteCatalog(path)
    try:
        catalog.record_packages("webapp", VERSION, {"probe": "1.0"})
        assert catalog.packages("webapp", VERSION) == {"probe": "1.0"}
        assert catalog.base_updates() == []
        catalog.record_base("b1", "bookworm", "sha256:b", updates=[{"name": "probe", "candidate": "1.1",
                                                                     "security": True}])
        assert catalog.base_updates() == [{"name": "probe", "candidate": "1.1", "security": True}]
    finally:
        catalog.close()
    assert user_version(path) == 4
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT created FROM bases WHERE ref = 'b1'").fetchone()[0] == "then"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
