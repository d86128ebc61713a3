"""A bake reuses a version baked from the same inputs only while its tag still names the image recorded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bakery.builders import podman as local_builder
from bakery.catalog import SqliteCatalog

pytestmark = pytest.mark.unit


@pytest.fixture
def catalog(tmp_path) -> SqliteCatalog:
    catalog = SqliteCatalog(tmp_path / "catalog.db")
    version = catalog.reserve_version("web", "run", 1)
    catalog.complete_version("web", version, image_ref=f"localhost/bakery/web:{version}", image_id="sha256:" + "a" * 64,
                             input_digest="sha256:in", provenance={}, layers=[])
    return catalog


def existing(catalog: SqliteCatalog, monkeypatch, tagged: str | None):
    monkeypatch.setattr(local_builder.podman, "image_id", lambda ref: tagged)
    return local_builder.PodmanBuilder._existing_version(SimpleNamespace(catalog=catalog), "web", "sha256:in")


def test_the_version_is_reused_while_its_tag_names_the_recorded_image(catalog, monkeypatch):
    assert existing(catalog, monkeypatch, "sha256:" + "a" * 64)["image_id"] == "sha256:" + "a" * 64
    assert catalog.versions("web")


def test_a_tag_that_names_another_checkouts_image_is_not_this_version(catalog, monkeypatch):
    assert existing(catalog, monkeypatch, "sha256:" + "b" * 64) is None
    assert catalog.versions("web") == []  # forgotten, as when the image is gone: the bake bakes it again


def test_a_version_whose_image_is_gone_is_forgotten(catalog, monkeypatch):
    assert existing(catalog, monkeypatch, None) is None and catalog.versions("web") == []
