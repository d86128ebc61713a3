import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from bakery.catalog import SqliteCatalog
from bakery.errors import ConfigError

pytestmark = pytest.mark.unit


def complete(cat, image, version, digest="sha256:in"):
    cat.complete_version(image, version, image_ref=f"r/{image}:{version}", image_id="sha256:id", input_digest=digest,
                         provenance={"git_commit": "abc"},
                         layers=[{"role": "base", "role_digest": "sha256:r", "key": "sha256:k", "cached": False}])


def test_versions_are_unique_sortable_and_pending_until_completed(tmp_path):
    cat = SqliteCatalog(tmp_path / "c.db")
    v1 = cat.reserve_version("web", "run1", os.getpid())
    v2 = cat.reserve_version("web", "run2", os.getpid())
    assert v1 != v2 and sorted([v2, v1]) == [v1, v2]
    assert v1.endswith(".001") and v2.endswith(".002")
    assert cat.versions("web") == []
    assert [r["version"] for r in cat.versions("web", status="pending")] == [v2, v1]
    complete(cat, "web", v1)
    record = cat.version("web", v1)
    assert record["status"] == "ready" and record["layers"][0]["role"] == "base"
    assert [r["version"] for r in cat.find_by_input("web", "sha256:in")] == [v1]
    cat.discard_version("web", v2)
    assert cat.version("web", v2) is None


def test_concurrent_reservations_never_collide(tmp_path):
    path = tmp_path / "c.db"
    SqliteCatalog(path).close()
    results, errors = [], []

    def worker():
        try:
            cat = SqliteCatalog(path)
            for _ in range(10):
                results.append(cat.reserve_version("web", "r", 1))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 40 and len(set(results)) == 40


WRITER = """
import sys
from bakery.catalog import SqliteCatalog
cat = SqliteCatalog(__import__("pathlib").Path(sys.argv[1]))
print("ready", flush=True)
while True:
    v = cat.reserve_version("web", "run", 1)
    cat.complete_version("web", v, image_ref="r", image_id="i", input_digest="d", provenance={"git_commit": "c"},
                         layers=[{"role": f"r{i}", "role_digest": "x", "key": "k", "cached": False} for i in range(20)])
"""


def test_kill_9_mid_write_leaves_the_catalog_consistent(tmp_path):
    path = tmp_path / "c.db"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": repo})
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ready = db.execute("SELECT version FROM versions WHERE status = 'ready'").fetchall()
    assert len(ready) > 5
    # every ready version has all of its layers; no layer belongs to a version that is not ready
    incomplete = db.execute(
        "SELECT v.version FROM versions v LEFT JOIN version_layers l USING (image, version)"
        " WHERE v.status = 'ready' GROUP BY v.version HAVING COUNT(l.position) != 20").fetchall()
    assert incomplete == []
    orphans = db.execute(
        "SELECT COUNT(*) FROM version_layers l JOIN versions v USING (image, version)"
        " WHERE v.status != 'ready'").fetchone()[0]
    assert orphans == 0
    assert SqliteCatalog(path).versions("web")  # still opens and reads


def test_layers_round_trip(tmp_path):
    cat = SqliteCatalog(tmp_path / "c.db")
    assert cat.layer("sha256:k") is None
    cat.put_layer("sha256:k", image="web", role="base", ref="r:1", image_id="sha256:i", parent="sha256:p")
    assert cat.layer("sha256:k")["ref"] == "r:1"
    cat.forget_layer("sha256:k")
    assert cat.layer("sha256:k") is None


def test_gc_forgets_a_layer_only_if_its_row_still_names_the_image_it_removed(tmp_path):
    cat = SqliteCatalog(tmp_path / "c.db")
    for key in ("sha256:a", "sha256:b"):
        cat.put_layer(key, image="web", role="base", ref="r:1", image_id=f"{key}-old", parent="sha256:p")
    # a bake rebaked key b after gc planned (put_layer replaces the row): the new row stays
    cat.put_layer("sha256:b", image="web", role="base", ref="r:1", image_id="sha256:b-new", parent="sha256:p")
    cat.forget_layers([("sha256:a", "sha256:a-old"), ("sha256:b", "sha256:b-old")])
    assert cat.layer("sha256:a") is None and cat.layer("sha256:b")["image_id"] == "sha256:b-new"


def test_gc_versions_name_the_layers_each_version_is_built_on(tmp_path):
    cat = SqliteCatalog(tmp_path / "c.db")
    version = cat.reserve_version("web", "run", 1)
    cat.complete_version("web", version, image_ref="r", image_id="i", input_digest="d", provenance={}, layers=[
        {"role": "base", "role_digest": "x", "key": "sha256:a", "cached": True},
        {"role": "app", "role_digest": "y", "key": "sha256:b", "cached": False}])
    cat.reserve_version("web", "run2", 2)  # pending: not gc's to plan over
    (row,) = cat.gc_versions()
    assert sorted(row["layer_keys"]) == ["sha256:a", "sha256:b"] and row["created"]


def test_unreadable_catalog_is_a_clear_error(tmp_path):
    (tmp_path / "c.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ConfigError, match="catalog unreadable"):
        SqliteCatalog(tmp_path / "c.db")


OPENER = """
import sys, os, time
from pathlib import Path
from bakery.catalog import SqliteCatalog
start = float(sys.argv[2])
while time.time() < start:  # all processes open the new file at the same instant
    pass
print(SqliteCatalog(Path(sys.argv[1])).reserve_version("web", "r", os.getpid()))
"""


def test_many_processes_opening_a_new_catalog_at_once(tmp_path):
    path = tmp_path / "new.db"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    start = str(time.time() + 1.5)
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(path), start], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": repo})
             for _ in range(16)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 16


def test_verifications_are_all_kept_newest_first(tmp_path):
    cat = SqliteCatalog(tmp_path / "c.db")
    first = cat.record_verification("web", "v1", env=None, started="t1", seconds=1.5, passed=False, run_id="r1",
                                    summary="secret found", reports={"junit": "a.xml"})
    second = cat.record_verification("web", "v1", env="qa", started="t2", seconds=2.0, passed=True, run_id="r2",
                                     summary="ok", reports={"junit": "b.xml"})
    rows = cat.verifications("web", "v1")
    assert [r["id"] for r in rows] == [second, first]
    assert rows[0]["passed"] is True and rows[1]["passed"] is False and rows[0]["reports"] == {"junit": "b.xml"}
    assert cat.verifications("web", "v2") == []


def test_release_history(tmp_path):
    cat = SqliteCatalog(tmp_path / "c.db")
    rid = cat.start_release("qa", "web", "v2", previous_version="v1", kind="deploy", user="ops", forced=True,
                            run_id="r", pid=os.getpid(), config_digest="sha256:c", details={"instances": 4})
    assert cat.releases("qa")[0]["status"] == "in_progress"
    cat.finish_release(rid, "rolled_back", reason="health check failed", details={"replaced": 1})
    row = cat.releases("qa")[0]
    assert row["status"] == "rolled_back" and row["forced"] is True and row["reason"] == "health check failed"
    assert row["details"] == {"instances": 4, "replaced": 1} and row["seconds"] is not None
    assert cat.releases("prod") == []


def test_reservation_skips_versions_taken_outside_this_catalog(tmp_path):
    cat = SqliteCatalog(tmp_path / "c.db")
    elsewhere = set()
    first = cat.reserve_version("web", "r", os.getpid(), taken=elsewhere.__contains__)
    elsewhere.add(first.replace(".001", ".002"))
    second = cat.reserve_version("web", "r", os.getpid(), taken=elsewhere.__contains__)
    assert first.endswith(".001") and second.endswith(".003")


def test_an_older_version_adopted_later_does_not_become_the_newest(tmp_path):
    cat = SqliteCatalog(tmp_path / "c.db")
    baked = cat.reserve_version("web", "run1", os.getpid())
    complete(cat, "web", baked)
    for old in ("20200101.002", "20200101.010"):  # baked elsewhere long ago (an AMI), learnt of now
        cat.adopt_version("web", old, run_id="run2", pid=os.getpid(), image_ref="ami-1", image_id="ami-1",
                          input_digest="sha256:x", provenance={})
    # .010 after .002: numerically
    assert [r["version"] for r in cat.versions("web")] == [baked, "20200101.010", "20200101.002"]


def test_resolve_names_the_newest_ready_version_when_none_is_given(tmp_path):
    cat = SqliteCatalog(tmp_path / "c.db")
    older, newer = cat.reserve_version("web", "r1", os.getpid()), cat.reserve_version("web", "r2", os.getpid())
    for version in (older, newer):
        complete(cat, "web", version)
    cat.reserve_version("web", "r3", os.getpid())  # a bake in progress is newer still, but not ready
    assert cat.resolve("web", None)["version"] == newer
    assert cat.resolve("web", older)["version"] == older and cat.resolve("web", older)["status"] == "ready"


def test_resolve_refuses_a_pending_version_unless_ready_only_is_off(tmp_path):
    cat = SqliteCatalog(tmp_path / "c.db")
    complete(cat, "web", cat.reserve_version("web", "r1", os.getpid()))
    pending = cat.reserve_version("web", "r2", os.getpid())
    with pytest.raises(ConfigError, match=f"unknown version 'web:{pending}'; list versions with: ./bake.py images web"):
        cat.resolve("web", pending)
    assert cat.resolve("web", pending, ready_only=False)["status"] == "pending"  # what `show` looks at


def test_resolve_says_how_to_find_a_version_when_there_is_none(tmp_path):
    cat = SqliteCatalog(tmp_path / "c.db")
    with pytest.raises(ConfigError) as unknown:
        cat.resolve("web", "20990101.001")
    assert str(unknown.value) == "unknown version 'web:20990101.001'; list versions with: ./bake.py images web"
    with pytest.raises(ConfigError) as none:
        cat.resolve("web", None)
    assert str(none.value) == "image 'web' has no versions; bake one with: ./bake.py build web"
    cat.reserve_version("web", "r1", os.getpid())  # only a pending one: still nothing to name
    with pytest.raises(ConfigError, match="image 'web' has no versions"):
        cat.resolve("web", None)
