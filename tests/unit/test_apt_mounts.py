"""The per-bake apt directories: lists fetched once, put back after a role deletes them, refusals named."""

from __future__ import annotations

import subprocess

import pytest

from bakery.builders import apt_mounts
from bakery.builders.apt_mounts import AptMounts
from bakery.errors import OperationError

pytestmark = pytest.mark.unit

PACKAGES = "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
RELEASE = "deb.debian.org_debian_dists_bookworm_InRelease"


def fake_update(mounts: AptMounts, returncode: int = 0, stderr: str = ""):
    def run(*args, **_kwargs):
        if args[-1] == apt_mounts.SOURCES_DIGEST:  # read after each update, to see a layer change them
            return subprocess.CompletedProcess(args, 0, "digest -\n", "")
        assert args[-3:] == ("apt-get", "update", "-q")
        # What apt-get update leaves in the mounted lists directory: the reachable source's lists, also when
        # another source failed (exit code 100).
        (mounts.lists / "partial").mkdir(exist_ok=True)
        (mounts.lists / "lock").write_text("")
        (mounts.lists / PACKAGES).write_text("Package: tree\n")
        (mounts.lists / RELEASE).write_text("signed\n")
        return subprocess.CompletedProcess(args, returncode, "", stderr)
    return run


def test_volumes_mount_the_lists_and_the_package_cache(tmp_path):
    mounts = AptMounts(tmp_path / "apt")
    assert mounts.volumes() == ["--volume", f"{tmp_path}/apt/lists:/var/lib/apt/lists",
                                "--volume", f"{tmp_path}/apt/archives:/var/cache/apt/archives"]
    assert mounts.lists.is_dir() and mounts.archives.is_dir()


def test_lists_emptied_by_a_role_are_restored_and_present_ones_left_alone(tmp_path, monkeypatch):
    mounts = AptMounts(tmp_path / "apt")
    mounts.volumes()
    monkeypatch.setattr(apt_mounts.podman, "run", fake_update(mounts))
    mounts.refresh("bakery-build-x")
    assert sorted(p.name for p in mounts.copy.iterdir()) == [RELEASE, PACKAGES]
    assert mounts.restore_if_emptied() is False  # a fresh list is there

    for path in mounts.lists.iterdir():  # what the roles' handlers do: find ... -type f ! -name lock -delete
        if path.is_file() and path.name != "lock":
            path.unlink()
    assert mounts.restore_if_emptied() is True
    assert (mounts.lists / PACKAGES).read_text() == "Package: tree\n"

    mounts.remove()
    assert not (tmp_path / "apt").exists()


def test_an_unreadable_local_source_is_named_and_the_lists_of_the_others_kept(tmp_path, monkeypatch):
    mounts = AptMounts(tmp_path / "apt")
    mounts.volumes()
    monkeypatch.setattr(apt_mounts.podman, "run", fake_update(
        mounts, 100, "Err:1 copy:/srv/repo ./ Release\nE: Failed to fetch copy:/srv/repo/./Release  File not found\n"
                     "E: Some index files failed to download.\n"))
    _seconds, problem = mounts.refresh("bakery-build-x")
    assert problem == ("apt-get update in build container bakery-build-x could not read the base's local source "
                       "copy:/srv/repo (a host directory); a role that installs from it will fail")
    assert sorted(p.name for p in mounts.copy.iterdir()) == [RELEASE, PACKAGES]  # what apt did fetch is kept


def test_the_apt_directories_of_a_killed_bake_are_found_and_a_running_bakes_are_not(tmp_path):
    runs = tmp_path / "runs"
    mine = AptMounts(runs / "run-alive" / "apt")
    mine.volumes()  # owned by this (running) process
    dead = AptMounts(runs / "run-killed" / "apt")
    dead.volumes()
    child = subprocess.Popen(["true"])
    child.wait()  # a pid that existed and has exited: what a SIGKILLed bake leaves
    (dead.root / apt_mounts.OWNER_FILE).write_text(f"{child.pid}\n")
    assert apt_mounts.stale_mounts(runs) == [dead.root]


@pytest.mark.parametrize("stderr", [
    "Err:2 http://security.debian.org/debian-security bookworm-security InRelease\n"
    "  Could not resolve 'security.debian.org'\n"
    "E: Failed to fetch http://security.debian.org/debian-security/dists/bookworm-security/InRelease\n"
    "E: Some index files failed to download. They have been ignored, or old ones used instead.\n",
    "Err:1 copy:/srv/repo ./ Release\nErr:2 http://deb.debian.org/debian bookworm InRelease\n"
    "E: Some index files failed to download. They have been ignored, or old ones used instead.\n",
    "W: GPG error: http://deb.debian.org/debian bookworm InRelease: NO_PUBKEY 0E98404D386FA1D9\n"
    "E: The repository 'http://deb.debian.org/debian bookworm InRelease' is not signed.\n",
    "Error: no container with name or ID \"bakery-build-x\" found: no such container\n",
])
def test_a_mirror_the_security_archive_a_signature_or_podman_failing_stops_the_bake(tmp_path, monkeypatch, stderr):
    mounts = AptMounts(tmp_path / "apt")
    mounts.volumes()
    monkeypatch.setattr(apt_mounts.podman, "run", fake_update(mounts, 100, stderr))
    with pytest.raises(OperationError, match=r"^apt-get update in build container bakery-build-x failed: "):
        mounts.refresh("bakery-build-x")
