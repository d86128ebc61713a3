"""Two checkouts finishing a bake at once get different versions under the host's image-tag lock.

Each checkout has its own catalog; the tag is one name in the host's container storage (here a directory of
files, one per tag, in the storage's place). Real processes, real SQLite catalogs, a real flock.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from bakery.builders.tag_lock import image_tags_locked, lock_dir
from bakery.catalog import SqliteCatalog
from bakery.errors import OperationError

pytestmark = pytest.mark.unit


def finish_bake(checkout: Path, storage: Path, lock_dir: Path | None, both_reserved, out) -> None:
    """What the end of a bake does: reserve a version no tag has, make the final layer, tag it. Without the lock,
    each waits after its reservation until both have one (two bakes finishing at once); with it, both ask for
    the lock at the same moment (a lock that let both in would give both the same version)."""
    catalog = SqliteCatalog(checkout / "catalog.db")

    def reserve_and_tag() -> str:
        version = catalog.reserve_version("webapp", "run", 1, taken=lambda v: (storage / v).exists())
        if lock_dir is None:
            both_reserved.wait(timeout=20)
        time.sleep(0.2)  # the final layer's commit
        (storage / version).touch()
        return version

    if lock_dir is None:
        out.put(reserve_and_tag())
        return
    both_reserved.wait(timeout=20)  # here: both ready, so both ask for the lock at once
    with image_tags_locked(lock_dir):
        out.put(reserve_and_tag())


def two_checkouts(tmp_path: Path, lock_dir: Path | None) -> list[str]:
    storage = tmp_path / "storage"
    storage.mkdir()
    out: multiprocessing.Queue = multiprocessing.Queue()
    both_reserved = multiprocessing.Barrier(2)
    procs = [multiprocessing.Process(target=finish_bake, args=(tmp_path / name, storage, lock_dir, both_reserved, out))
             for name in ("checkout-a", "checkout-b")]
    for name in ("checkout-a", "checkout-b"):
        (tmp_path / name).mkdir()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=30)
    return sorted(out.get(timeout=5) for _ in procs)


def test_without_the_lock_two_checkouts_take_the_same_version(tmp_path):
    """The race the lock closes (why a bake in the second checkout failed after all its work)."""
    first, second = two_checkouts(tmp_path, lock_dir=None)
    assert first == second


def test_under_the_lock_each_checkout_gets_its_own_version(tmp_path):
    first, second = two_checkouts(tmp_path, lock_dir=tmp_path / "locks")
    assert first != second and first.rsplit(".", 1)[0] == second.rsplit(".", 1)[0]


def test_a_second_bake_waits_says_so_and_enters_only_after_the_first_leaves(tmp_path):
    entered, release, events = threading.Event(), threading.Event(), []

    def first():
        with image_tags_locked(tmp_path / "locks"):
            entered.set()
            release.wait(timeout=20)
            events.append("first leaves")

    holder = threading.Thread(target=first)
    holder.start()
    assert entered.wait(timeout=20)
    threading.Timer(0.5, release.set).start()
    with image_tags_locked(tmp_path / "locks", on_wait=lambda: events.append("waiting")):
        events.append("second enters")
    holder.join(timeout=20)
    assert events == ["waiting", "first leaves", "second enters"]


def test_a_lock_directory_others_can_write_is_refused(tmp_path):
    """Anyone able to create the lock file could hold it forever and stop every bake at its last step."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(OperationError, match="that no one else can write"), image_tags_locked(shared):
        pass


def test_the_lock_is_one_place_per_container_storage(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert lock_dir() == Path("/run/bakery")  # root's storage is the host's; not the world-writable /run/lock
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", "/home/ops/.local/share")
    assert lock_dir() == Path("/home/ops/.local/share/bakery")  # where podman keeps that user's storage
