"""What `gc --orphans` reads of a checkout's catalog, and which names are bakery's."""

from __future__ import annotations

import sqlite3

import pytest

from bakery.catalog import open_catalog
from bakery.catalog_schema import SCHEMA_VERSION
from bakery.gc.orphans import Orphans, _bakerys, listed_ids

pytestmark = pytest.mark.unit


def test_the_ids_a_catalog_lists_are_its_versions_and_layers_in_either_form(tmp_path):
    catalog = open_catalog(tmp_path / ".bakery")
    catalog.put_layer("k", image="web", role="base", ref="r", image_id="sha256:aa", parent="p")
    version = catalog.reserve_version("web", "run", 1)
    catalog.complete_version("web", version, image_ref="r", image_id="bb", input_digest="d", provenance={}, layers=[])
    catalog.reserve_version("web", "run2", 2)  # pending: no image yet
    assert listed_ids(tmp_path / ".bakery") == {"aa", "bb"}


def test_no_catalog_or_one_of_a_newer_bakery_lists_nothing_to_go_by(tmp_path):
    assert listed_ids(tmp_path / ".bakery") is None
    open_catalog(tmp_path / ".bakery").record_base("b", "bookworm", "sha256:d")  # made by the first write
    with sqlite3.connect(tmp_path / ".bakery" / "catalog.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert listed_ids(tmp_path / ".bakery") is None  # its images are kept: its tables may say it elsewhere


def test_an_image_with_a_name_outside_bakerys_is_never_an_orphan():
    assert _bakerys([]) and _bakerys(["localhost/bakery/web:20260101.001", "localhost/bakery-cache/web:base-1"])
    assert not _bakerys(["localhost/bakery/web:20260101.001", "localhost/mine/web:1"])
    assert not _bakerys(["localhost/bakeryx/web:1"])


def test_the_lines_say_why_each_image_goes_or_stays():
    found = Orphans(images=[{"id": "a" * 64, "names": ["localhost/bakery/web:1"], "checkout": "/ci/1",
                             "why": "checkout /ci/1 is gone"}],
                    kept=[{"id": "b" * 64, "names": [], "checkout": "/ci/1", "why": "checkout /ci/1 is gone",
                           "reason": "1 container(s) use it"}])
    assert found.lines(dry_run=True) == [
        f"would remove orphaned image {'a' * 12} localhost/bakery/web:1 (checkout /ci/1 is gone)",
        f"kept orphaned image {'b' * 12} (checkout /ci/1 is gone; 1 container(s) use it)"]
