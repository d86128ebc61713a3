"""Patching by rebake, end to end: `base --if-updates` against a local apt repository the test publishes to.

The base installs bakery-patch-probe 1.0 from a flat copy: repository (bakery.yml `base.extra_sources` and
`extra_packages`). With nothing newer, the check says "up to date" and writes nothing; once 1.1 is published (with
a Release label that marks it a security update), it makes a new base naming the update, the next build re-runs
every layer on it, and `show` lists bakery-patch-probe 1.0 -> 1.1 as a security update.
The repository's index is written here from `dpkg-deb -f` (dpkg only: no dpkg-dev or apt-utils needed).
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from bakery import podman
from bakery.base_image import FLAVOUR_LABEL
from bakery.base_settings import BaseSettings
from tests.conftest import bake, init_repo
from tests.integration.conftest import image_ids, remove_images

pytestmark = pytest.mark.integration

PROBE = "bakery-patch-probe"
IMAGE = "patched"


def build_deb(work: Path, version: str) -> Path:
    root = work / f"pkg-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr" / "share" / PROBE).mkdir(parents=True)
    (root / "usr" / "share" / PROBE / "version").write_text(f"{version}\n")
    (root / "DEBIAN" / "control").write_text(
        f"Package: {PROBE}\nVersion: {version}\nArchitecture: all\nMaintainer: bakery tests <tests@example.invalid>\n"
        "Description: a package whose version the base update test bumps\n")
    deb = work / f"{PROBE}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def publish(repo: Path, deb: Path, label: str) -> None:
    """A flat repository (`deb copy:REPO ./`) serving only this package version: Packages and Release."""
    for old in repo.glob("*.deb"):
        old.unlink()
    target = repo / deb.name
    target.write_bytes(deb.read_bytes())
    control = subprocess.run(["dpkg-deb", "-f", str(target)], check=True, capture_output=True, text=True).stdout
    data = target.read_bytes()
    packages = (control.rstrip("\n") + f"\nFilename: ./{target.name}\nSize: {len(data)}\n"
                f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n")
    (repo / "Packages").write_text(packages)
    index = (repo / "Packages").read_bytes()
    (repo / "Release").write_text(
        f"Origin: bakery-tests\nLabel: {label}\nSuite: stable\nCodename: bookworm\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\nArchitectures: all amd64\n"
        f"SHA256:\n {hashlib.sha256(index).hexdigest()} {len(index)} Packages\n")


@pytest.fixture
def patch_project(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    root = tmp_path / "project"
    (root / "playbooks").mkdir(parents=True)
    (root / "roles" / "stamp" / "tasks").mkdir(parents=True)
    (root / "bakery.yml").write_text(yaml.safe_dump({
        "default_base": "bookworm",
        "base": {"extra_sources": [f"deb [trusted=yes] copy:{repo} ./"], "extra_packages": [PROBE]}}))
    (root / "playbooks" / f"{IMAGE}.yml").write_text(yaml.safe_dump([{
        "name": "A one-role image on the patched base", "hosts": "all", "become": True, "gather_facts": False,
        "roles": ["stamp"]}], sort_keys=False))
    (root / "roles" / "stamp" / "tasks" / "main.yml").write_text(yaml.safe_dump([{
        "name": "Stamp the image", "ansible.builtin.copy": {"dest": "/etc/stamp", "content": "baked\n",
                                                            "mode": "0644"}}], sort_keys=False))
    init_repo(root, "Patching test project")
    source = f"deb [trusted=yes] copy:{repo} ./"
    flavour = BaseSettings((source,), (PROBE,)).flavour
    yield root, repo, flavour
    # the image's versions and layers, and every base of this test's flavour
    remove_images([*image_ids(f"io.bakery.image={IMAGE}"), *image_ids(f"{FLAVOUR_LABEL}={flavour}")])


def test_a_new_base_only_when_apt_has_updates_then_every_layer_rebakes_and_show_names_the_update(patch_project):
    root, repo, flavour = patch_project
    work = repo.parent
    publish(repo, build_deb(work, "1.0"), "bakery-tests")

    t = time.monotonic()
    made = bake(root, "base", "--if-updates", "--json", timeout=900)  # no base of this flavour yet: make one
    base_seconds = time.monotonic() - t
    assert made.rc == 0, made.stderr
    first = made.json
    assert first["made"] is True and first["updates"] == []
    print(f"\nbase build (mmdebstrap + import): {base_seconds:.1f} s")
    assert podman.run("run", "--rm", first["ref"], "cat", f"/usr/share/{PROBE}/version").stdout == "1.0\n"

    built = bake(root, "build", IMAGE, "--json", timeout=900)
    assert built.rc == 0, built.stderr
    v1 = built.json["version"]

    t = time.monotonic()
    same = bake(root, "base", "--if-updates")
    check_seconds = time.monotonic() - t
    assert same.rc == 0, same.stderr
    assert same.stdout.startswith(f"base {first['ref']}: up to date (") and "packages checked)" in same.stdout
    assert f"and so are the packages of {IMAGE}:{v1}" in same.stdout, "the newest image on the base is checked too"
    print(f"update check (nothing newer): {check_seconds:.1f} s")
    bases = podman.images_with_label(f"{FLAVOUR_LABEL}={flavour}")
    assert [n for b in bases for n in b.get("Names") or [] if n.startswith("localhost/bakery/base:")] == [
        first["ref"]], "up to date must write no new base"

    publish(repo, build_deb(work, "1.1"), "bakery-tests-Security")
    second = bake(root, "base", "--if-updates", timeout=900)
    assert second.rc == 0, second.stderr
    assert f"{PROBE} 1.0 -> 1.1 [security]" in second.stdout, second.stdout
    assert "1 updates (1 security)" in second.stdout
    new_ref = second.stdout.split()[1]
    assert new_ref != first["ref"]
    assert podman.run("run", "--rm", new_ref, "cat", f"/usr/share/{PROBE}/version").stdout == "1.1\n"

    rebuilt = bake(root, "build", IMAGE, "--json", timeout=900)
    assert rebuilt.rc == 0, rebuilt.stderr
    assert rebuilt.json["status"] == "built" and rebuilt.json["provenance"]["base_image"] == new_ref
    assert [layer["cached"] for layer in rebuilt.json["layers"]] == [False], "a new base must re-run every layer"

    shown = bake(root, "show", f"{IMAGE}:{rebuilt.json['version']}")
    assert shown.rc == 0, shown.stderr
    assert f"packages against {IMAGE}:{v1}: 1 changed (1 security), 0 added, 0 removed" in shown.stdout
    assert f"{PROBE} 1.0 -> 1.1 [security]" in shown.stdout
    as_json = bake(root, "show", f"{IMAGE}:{rebuilt.json['version']}", "--json").json
    assert as_json["package_changes"]["changed"] == {PROBE: {"old": "1.0", "new": "1.1", "security": True}}
    assert as_json["packages"][PROBE] == "1.1"
