"""gc --keep on real podman: old version tags and their catalog rows go together; what a container or an environment
uses stays."""

from __future__ import annotations

import fcntl
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from bakery import podman
from bakery.artifacts import LocalArtifactStore
from bakery.builders.layer_lock import layers_in_use
from bakery.catalog import open_catalog
from bakery.config import Project
from bakery.gc import local as gc_local
from bakery.gc import orphans
from bakery.gc.orphans import CHECKOUT_LABEL
from tests.conftest import bake
from tests.integration.conftest import remove_images_of

pytestmark = pytest.mark.integration


def test_gc_keep_removes_old_versions_from_podman_and_the_catalog_and_stale_artifacts(proj, base_image):
    # tags of the shared base under a unique name: removing a tag never removes the base
    image = f"h3gc{secrets.token_hex(3)}"
    catalog = open_catalog(proj / ".bakery")
    store = LocalArtifactStore(proj / ".bakery" / "artifacts")
    baked = [store.put("webapp", f"1.0+{n}", f"bytes {n}".encode(), []) for n in ("kept", "used", "stale", "kept")]
    store.put("webapp", "1.0+newest", b"newest bytes", [])
    versions, container, late = [], f"{image}-user", f"{image}-late"
    try:
        for _ in range(4):
            version = catalog.reserve_version(image, "run", 1)
            ref = podman.image_ref(image, version)
            podman.run("tag", base_image.ref, ref)
            # Tags of one image share its id; real versions never do (each writes its own /etc/image-release), so give
            # each its own.
            catalog.complete_version(image, version, image_ref=ref, image_id=f"sha256:{secrets.token_hex(32)}",
                                     input_digest="sha256:x",
                                     provenance={"artifacts": {"webapp": baked[len(versions)].version}},
                                     layers=[])
            versions.append(version)
        podman.run("create", "--name", container, podman.image_ref(image, versions[0]), "/sbin/init")
        release = catalog.start_release("qa", image, versions[1], previous_version=None, kind="deploy", user="t",
                                        forced=False, run_id="run", pid=1, config_digest=None)
        catalog.finish_release(release, "succeeded")

        # The CLI's dry run (it removes nothing, so it cannot touch other engineers' leftovers either) plans exactly
        # that.
        dry = bake(proj, "gc", "--keep", "1", "--dry-run", "--json")
        assert dry.rc == 0, dry.stderr
        assert [d["version"] for d in dry.json["versions"] if d["image"] == image] == [versions[2]]
        kept = {k["version"]: k["reasons"] for k in dry.json["kept"] if k["image"] == image}
        assert kept == {versions[3]: ["one of the newest 1"], versions[1]: [f"qa runs it (release #{release})"],
                        versions[0]: [f"container {container} uses it"]}
        assert podman.image_exists(podman.image_ref(image, versions[2]))

        # A container that starts to use a planned version before `podman rmi` keeps it: apply looks at the containers
        # again.
        planned = gc_local.plan(Project(proj), catalog, keep=1)
        podman.run("create", "--name", late, podman.image_ref(image, versions[2]), "/sbin/init")
        early = gc_local.apply(Project(proj), catalog, planned)
        assert ([d["version"] for d in early.skipped] == [versions[2]]
                and f"container {late} started to use it" in early.skipped[0]["reason"])
        assert (not early.removed and podman.image_exists(podman.image_ref(image, versions[2]))
                and catalog.version(image, versions[2]))
        podman.remove_container(late)

        result = gc_local.apply(Project(proj), catalog, gc_local.plan(Project(proj), catalog, keep=1))

        assert [d["version"] for d in result.removed] == [versions[2]] and not result.failed
        assert (not podman.image_exists(podman.image_ref(image, versions[2]))
                and catalog.version(image, versions[2]) is None)
        for kept in (versions[0], versions[1], versions[3]):
            assert podman.image_exists(podman.image_ref(image, kept)) and catalog.version(image, kept) is not None
        assert podman.image_exists(base_image.ref)
        # stale: only the deleted version had it
        assert {a.version for a in store.list("webapp")} == {"1.0+kept", "1.0+used", "1.0+newest"}
        assert not baked[2].path.exists() and not baked[2].path.with_name(baked[2].path.name + ".sha256").exists()
    finally:
        podman.remove_container(container)
        podman.remove_container(late)
        for version in versions:
            podman.remove_image(podman.image_ref(image, version))


def commit_on(parent: str, image: str, tag: str | None = None, checkout: str | None = None) -> str:
    """A real image on `parent` (a cached layer or a version as a bake commits them, of `checkout`); its id."""
    labels = ["--label", f"io.bakery.image={image}"]
    if checkout:
        labels += ["--label", f"{CHECKOUT_LABEL}={checkout}"]
    container = podman.run("create", *labels, parent, "/bin/true").stdout.strip()
    try:
        image_id = podman.run("commit", "-q", container, *([tag] if tag else [])).stdout.strip()
    finally:
        podman.remove_container(container)
    return image_id.removeprefix("sha256:")


def test_gc_keep_removes_the_cached_layers_no_remaining_version_is_built_on(proj, base_image):
    image = f"h3gl{secrets.token_hex(3)}"
    catalog = open_catalog(proj / ".bakery")
    try:
        ids = {}
        for key, parent in (("base", base_image.ref), ("app1", "base"), ("app2", "base"), ("failed", "base")):
            ids[key] = commit_on(ids.get(parent, parent), image, podman.cache_ref(image, key, f"sha256:{key}"))
            catalog.put_layer(key, image=image, role=key, ref=podman.cache_ref(image, key, f"sha256:{key}"),
                              image_id=ids[key], parent=parent)
        foreign = commit_on(ids["failed"], image)  # another checkout's image on the failed bake's layer
        time.sleep(1.1)  # the catalog's times are to the second: the versions come after the layers
        versions = []
        for app in ("app1", "app2"):
            version = catalog.reserve_version(image, "run", 1)
            ref = podman.image_ref(image, version)
            version_id = commit_on(ids[app], image, ref)
            catalog.complete_version(image, version, image_ref=ref, image_id=version_id, input_digest="sha256:x",
                                     provenance={}, layers=[
                                         {"role": "base", "role_digest": "d", "key": "base", "cached": True},
                                         {"role": app, "role_digest": "d", "key": app, "cached": False}])
            versions.append(version)

        dry = bake(proj, "gc", "--keep", "1", "--dry-run", "--json")
        assert dry.rc == 0, dry.stderr
        assert sorted(e["key"] for e in dry.json["layers"] if e["image"] == image) == ["app1", "failed"]
        assert podman.image_exists(ids["app1"])

        # A bake of the image running in this checkout may have chosen these layers already: they wait for a later gc.
        with layers_in_use(proj / ".bakery", image):
            busy = bake(proj, "gc", "--keep", "1", "--json")
        assert busy.rc == 0, busy.stderr
        assert [e["version"] for e in busy.json["versions"] if e["image"] == image] == [versions[0]]
        assert not [e for e in busy.json["layers"] if e["image"] == image]
        assert {e["key"]: e["reason"] for e in busy.json["layers_kept"] if e["image"] == image} == {
            "app1": f"a bake of {image} is running in this checkout",
            "failed": f"a bake of {image} is running in this checkout"}
        assert podman.image_exists(ids["app1"]) and catalog.layer("app1") is not None

        # A container started from a planned layer after the plan: podman refuses it, and its row stays.
        planned = gc_local.plan(Project(proj), catalog, keep=1)
        user = podman.run("create", "--label", f"io.bakery.image={image}", ids["failed"], "/bin/true").stdout.strip()
        try:
            early = gc_local.apply(Project(proj), catalog, planned)
        finally:
            podman.remove_container(user)
        assert [e["key"] for e in early.layers] == ["app1"]
        assert [(e["key"], e["reason"]) for e in early.layers_kept] == [
            ("failed", "podman kept it: a container started to use it")]
        assert not podman.image_exists(ids["app1"]) and catalog.layer("app1") is None
        assert podman.image_exists(ids["failed"]) and catalog.layer("failed") is not None

        done = bake(proj, "gc", "--keep", "1", "--json")

        assert done.rc == 0, done.stderr
        assert [e["key"] for e in done.json["layers"] if e["image"] == image] == ["failed"]
        assert not done.json["layers_kept"] and not done.json["versions"]
        assert not podman.image_exists(ids["failed"]) and catalog.layer("failed") is None
        # an image built on a removed layer (another checkout's) keeps the storage it shares with it
        assert podman.run("run", "--rm", foreign, "cat", "/etc/os-release").stdout.startswith("PRETTY_NAME")
        # the layers the remaining version is built on stay, and so does the version
        for key in ("base", "app2"):
            assert podman.image_exists(ids[key]) and catalog.layer(key) is not None
        assert podman.image_exists(podman.image_ref(image, versions[1])) and podman.image_exists(base_image.ref)
    finally:
        remove_images_of(image)


def test_gc_orphans_removes_the_images_no_catalog_lists_and_nothing_else(proj, base_image, tmp_path):
    image = f"h3or{secrets.token_hex(3)}"
    catalog = open_catalog(proj / ".bakery")
    gone = tmp_path / "ci-clone"
    clone = open_catalog(gone / ".bakery")
    user = f"{image}-user"
    try:
        layer = commit_on(base_image.ref, image, podman.cache_ref(image, "app", "sha256:gone"), str(gone))
        clone.put_layer("gone", image=image, role="app", ref="r", image_id=layer, parent="p")
        version = commit_on(layer, image, podman.image_ref(image, "20260101.001"), str(gone))
        reserved = clone.reserve_version(image, "run", 1)
        clone.complete_version(image, reserved, image_ref=podman.image_ref(image, "20260101.001"),
                               image_id=f"sha256:{version}", input_digest="d", provenance={}, layers=[])
        used = commit_on(base_image.ref, image, None, str(gone))
        podman.run("create", "--name", user, used, "/bin/true")
        # this checkout: one layer its catalog lists, one it forgot (a layer rebaked under the same key)
        listed = commit_on(base_image.ref, image, podman.cache_ref(image, "app", "sha256:here"), str(proj))
        catalog.put_layer("here", image=image, role="app", ref="r", image_id=f"sha256:{listed}", parent="p")
        forgotten = commit_on(base_image.ref, image, None, str(proj))
        # someone's own image built from a baked version: it carries the version's labels, but is not bakery's
        derived = commit_on(version, image, f"localhost/{image}-derived:1")
        # an image of the clone that this checkout's catalog lists (a checkout moved here from there)
        moved = commit_on(base_image.ref, image, podman.cache_ref(image, "app", "sha256:moved"), str(gone))
        catalog.put_layer("moved", image=image, role="app", ref="r", image_id=moved, parent="p")
        # the clone still exists with its catalog: its images are its own
        alive = bake(proj, "gc", "--orphans", "--dry-run", "--json")
        assert alive.rc == 0, alive.stderr
        assert {e["id"] for e in alive.json["orphans"]["images"]} & {layer, version, listed} == set()
        assert [e["why"] for e in alive.json["orphans"]["images"] if e["id"] == forgotten] == [
            f"the catalog of {proj} does not list it"]
        # ... and while a bake of the image runs here, what it committed may not be in the catalog yet
        with layers_in_use(proj / ".bakery", image):
            busy = bake(proj, "gc", "--orphans", "--dry-run", "--json")
        assert forgotten not in {e["id"] for e in busy.json["orphans"]["images"]}

        shutil.rmtree(gone)  # the CI job is over
        dry = bake(proj, "gc", "--orphans", "--dry-run")
        assert dry.rc == 0, dry.stderr
        assert (f"would remove orphaned image {version[:12]} {podman.image_ref(image, '20260101.001')} "
                f"(checkout {gone} is gone)") in dry.stdout.splitlines()
        assert podman.image_exists(version)
        orphaned = {e["id"] for e in bake(proj, "gc", "--orphans", "--dry-run", "--json").json["orphans"]["images"]}
        assert {version, layer, forgotten} <= orphaned and orphaned.isdisjoint({derived, moved, used, listed})

        # The real run as the CLI's (orphans.remove(orphans.find())), on this test's images only: other orphans on
        # this host are not this test's to remove.
        found = orphans.find()
        found.images = [e for e in found.images if e["id"] in {layer, version, forgotten}]
        done = orphans.remove(found)

        assert {e["id"] for e in done.images} == {version, layer, forgotten}
        assert [(e["id"], e["reason"]) for e in done.kept if e["checkout"] == str(gone)] == [
            (used, "1 container(s) use it")]
        assert not any(podman.image_exists(i) for i in (version, layer, forgotten))
        assert all(podman.image_exists(i) for i in (used, listed, derived, moved, base_image.ref))
    finally:
        podman.remove_container(user)
        remove_images_of(image)


def test_gc_orphans_is_a_local_option(proj):
    out = bake(proj, "gc", "--target", "aws", "--keep", "1", "--orphans")
    assert out.rc == 2 and out.stderr.count("\n") == 1 and "use it with --target local" in out.stderr


@contextmanager
def environment_held(project: Path, env: str, settings: dict, pid: int = 4242) -> Iterator[None]:
    """An environment whose fleet lock another process holds, as a deploy in progress would (the lock file names its
    pid)."""
    folder = project / "inventories" / env / "group_vars" / "all"
    folder.mkdir(parents=True)
    (folder / "deploy.yml").write_text(yaml.safe_dump({"bakery_deploy": settings}))
    lock = project / ".bakery" / "envs" / env / "lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"{pid}\n")
        held.flush()
        yield


def test_gc_keep_waits_for_no_local_environment_a_deploy_holds(proj):
    with environment_held(proj, "qa", {"image": "sample", "instances": 1, "lb_port": 18080}):
        busy = bake(proj, "gc", "--keep", "1")
    assert (busy.rc == 1 and busy.stderr.count("\n") == 1
            and "environment 'qa' is busy: another bake.py (pid 4242)" in busy.stderr)
