"""gc --keep on real podman: old version tags and their catalog rows go together; what a container or an environment
uses stays."""

from __future__ import annotations

import fcntl
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from bakery import podman
from bakery.artifacts import LocalArtifactStore
from bakery.catalog import open_catalog
from bakery.config import Project
from bakery.gc import local as gc_local
from tests.conftest import bake

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
