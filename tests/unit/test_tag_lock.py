"""Two checkouts finishing a bake at once get different versions under the host's image-tag lock.

Each checkout has its own catalog; the tag is one name in the host's container storage (here a directory of
files, one per tag, in the storage's place). Real processes, real SQLite catalogs, a real flock.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from bakery.builders.tag_lock import image_tags_locked, lock_path
from bakery.catalog import SqliteCatalog

pytestmark = pytest.mark.unit


def finish_bake(checkout: Path, storage: Path, lock: Path | None, both_reserved, out) -> None:
    """What the end of a bake does: reserve a version no tag has, make the final layer, tag it. Without the lock,
    each waits after its reservation until both have one (two bakes finishing at once); with it, both ask for
    the lock at the same moment (a lock that let both in would give both the same version)."""
    catalog = SqliteCatalog(checkout / "catalog.db")

    def reserve_and_tag() -> str:
        version = catalog.reserve_version("webapp", "run", 1, taken=lambda v: (storage / v).exists())
        if lock is None:
            both_reserved.wait(timeout=20)
        time.sleep(0.2)  # the final layer's commit
        (storage / version).touch()
        return version

    if lock is None:
        out.put(reserve_and_tag())
        return
    both_reserved.wait(timeout=20)  # here: both ready, so both ask for the lock at once
    with image_tags_locked(lock):
        out.put(reserve_and_tag())


def two_checkouts(tmp_path: Path, lock: Path | None) -> list[str]:
    storage = tmp_path / "storage"
    storage.mkdir()
    out: multiprocessing.Queue = multiprocessing.Queue()
    both_reserved = multiprocessing.Barrier(2)
    procs = [multiprocessing.Process(target=finish_bake, args=(tmp_path / name, storage, lock, both_reserved, out))
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
    first, second = two_checkouts(tmp_path, lock=None)
    assert first == second


def test_under_the_lock_each_checkout_gets_its_own_version(tmp_path):
    first, second = two_checkouts(tmp_path, lock=tmp_path / "tags.lock")
    assert first != second and first.rsplit(".", 1)[0] == second.rsplit(".", 1)[0]


def test_the_lock_is_one_place_per_container_storage(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert lock_path() == Path("/run/lock/bakery-image-tags.lock")  # root's storage is the host's
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert lock_path() == Path("/run/user/1000/bakery-image-tags.lock")
