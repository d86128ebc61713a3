"""The verify check that no layer committed apt lists or downloaded packages: what counts, what is named."""

from __future__ import annotations

import io
import tarfile

import pytest

from bakery.verify import apt_leftovers, image_layers, secrets
from bakery.verify.image_layers import Layer

pytestmark = pytest.mark.unit


def layer_tar(*names: str, dirs: tuple[str, ...] = ()) -> io.BytesIO:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    data.seek(0)
    return data


def test_lists_packages_and_binary_caches_are_leftovers_locks_dirs_and_deletions_are_not():
    stream = layer_tar(
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages",
        "./var/cache/apt/archives/tree_2.1.0-1_amd64.deb",
        "var/cache/apt/archives/partial/jq_1.6_amd64.deb",
        "var/cache/apt/pkgcache.bin",
        "var/lib/apt/lists/lock", "var/cache/apt/archives/lock",
        "var/lib/apt/lists/.wh.deb.debian.org_debian_dists_bookworm_InRelease",
        "var/lib/apt/extended_states", "usr/bin/tree", "etc/apt/sources.list.d/extra.list",
        dirs=("var/lib/apt/lists", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial"))
    assert apt_leftovers.scan_layer(stream) == [
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages",
        "./var/cache/apt/archives/tree_2.1.0-1_amd64.deb",
        "var/cache/apt/archives/partial/jq_1.6_amd64.deb",
        "var/cache/apt/pkgcache.bin",
    ]


def fake_layers(monkeypatch, contents: dict[str, io.BytesIO]) -> None:
    layers = [Layer(f"sha256:{n}", label) for n, label in enumerate(contents)]
    monkeypatch.setattr(image_layers, "layers_above", lambda _catalog, _record, _base: layers)
    monkeypatch.setattr(image_layers, "each_layer",
                        lambda _ref, wanted: iter([(layer, contents[layer.label]) for layer in wanted]))


def test_the_check_passes_on_clean_layers_and_names_the_layer_and_file_otherwise(monkeypatch):
    record = {"image_ref": "localhost/bakery/x:1"}
    fake_layers(monkeypatch, {"01-base": layer_tar("usr/bin/tree"), "02-webapp": layer_tar("etc/webapp.conf")})
    result = apt_leftovers.check(None, record, "localhost/bakery/base:bookworm")  # type: ignore[arg-type]
    assert result.passed and result.output == "no apt lists or packages in the 2 layers above the base"

    fake_layers(monkeypatch, {"01-base": layer_tar("usr/bin/tree"),
                              "02-webapp": layer_tar("var/cache/apt/archives/tree_2.1.0-1_amd64.deb")})
    result = apt_leftovers.check(None, record, "localhost/bakery/base:bookworm")  # type: ignore[arg-type]
    assert not result.passed
    assert result.message == ("apt lists or packages committed in layer "
                              "02-webapp: var/cache/apt/archives/tree_2.1.0-1_amd64.deb")


def test_an_unreadable_layer_or_a_missing_base_fails_the_check(monkeypatch):
    record = {"image_ref": "localhost/bakery/x:1"}
    fake_layers(monkeypatch, {"01-base": io.BytesIO(b"not a tar at all" * 100)})
    result = apt_leftovers.check(None, record, "base")  # type: ignore[arg-type]
    assert not result.passed and result.message.startswith("could not read the layers: layer 01-base: ")
    assert not apt_leftovers.check(None, record, None).passed  # type: ignore[arg-type]


def test_the_secret_scan_hands_every_member_name_to_the_check_on_its_one_read():
    """verify finds leftovers on the secret scan's own pass over each layer: no second `podman save`."""
    stream = layer_tar("usr/bin/tree", "var/cache/apt/archives/tree_2.1.0-1_amd64.deb",
                       dirs=("var/lib/apt/lists",))
    seen: list[tuple[str, bool]] = []
    secrets.scan_layer(stream, "01-x", [], names=lambda name, is_dir: seen.append((name, is_dir)))
    assert seen == [("var/lib/apt/lists", True), ("usr/bin/tree", False),
                    ("var/cache/apt/archives/tree_2.1.0-1_amd64.deb", False)]
    found = [name for name, is_dir in seen if apt_leftovers.leftover(name, is_dir)]
    check = apt_leftovers.outcome({"01-x": found}, 1, 0)
    assert not check.passed and check.message.endswith("01-x: var/cache/apt/archives/tree_2.1.0-1_amd64.deb")
