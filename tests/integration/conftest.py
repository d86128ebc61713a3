"""Integration tests bake real images with podman; they share one base image per machine.

`make test` runs them in two pytest-xdist workers (`-n 2`, see pytest_xdist_make_scheduler): the VM modules,
which mostly wait on qemu, in one and every other module in the other. What both workers touch goes through
this file: the example image is baked once per session in a project both copy (see baked_example), the base is
built under a machine-wide lock, and the images the tests baked are removed once, by the controller, after both
workers are done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bakery import podman
from bakery.base_image import build_base
from tests.conftest import REPO, bake, init_repo, machine_lock

VM_MODULES = ("test_vm_verify.py", "test_vm_verify_aws.py", "test_molecule_roles.py")  # the lane, in its order
SHARED_DIR = "BAKERY_TEST_SHARED_DIR"  # where workers leave the run ids the controller cleans up after


def pytest_xdist_make_scheduler(config, log):
    """Two lanes, each run in its file order by one worker: the VM modules and all the others. (xdist's own
    --dist loadgroup cannot do this here: it renames node ids, which pytest 9.2 ignores; pytest-xdist issue 1386.)"""
    from xdist.scheduler import LoadScopeScheduling

    class TwoLanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "vm" if nodeid.split("::", 1)[0].rsplit("/", 1)[-1] in VM_MODULES else "main"

    return TwoLanes(config, log)


def pytest_collection_modifyitems(items):
    """Each lane runs in this order: the modules that need the example image after those that do not (one lane
    bakes it cold, and the other must not sit waiting for that), Molecule last (after the VM modules in its lane)."""
    needs_example = {item.path for item in items if "webapp_image" in item.fixturenames}
    items.sort(key=lambda item: (item.path.name == VM_MODULES[-1], item.path in needs_example))


_OWN_SHARED_DIR: list[str] = []  # set in the process that made the shared directory: it cleans up at the end


def pytest_configure(config):
    """The controller (or a run without xdist) makes the directory before it starts the workers, which inherit it."""
    if SHARED_DIR not in os.environ:
        os.environ[SHARED_DIR] = tempfile.mkdtemp(prefix="bakery-tests-")
        _OWN_SHARED_DIR.append(os.environ[SHARED_DIR])


def pytest_sessionfinish(session):
    """Remove every image the tests baked, once every worker is done (in the controller)."""
    if not _OWN_SHARED_DIR:
        return
    shared = Path(_OWN_SHARED_DIR.pop())
    os.environ.pop(SHARED_DIR, None)
    run_ids = sorted(set(shared.joinpath("runs").read_text().split())) if shared.joinpath("runs").exists() else []
    problem = remove_images([i for run_id in run_ids for i in image_ids(f"io.bakery.run={run_id}")])
    if problem:
        print(f"warning: could not remove the example images: {problem}")
    for image in TEST_IMAGES:
        remove_images_of(image)
    shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def base_image():
    """The bookworm base (made once per machine, reused after; one worker builds it while the other waits)."""
    with machine_lock("base"):
        return build_base("bookworm", REPO / ".bakery" / "tmp")


def containers(*labels: str) -> list[str]:
    """Names of the containers (running or not) carrying every one of the labels."""
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    out = subprocess.run(["podman", "ps", "-a", *filters, "--format", "{{.Names}}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def wait_for(predicate, timeout: float = 120, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def run_instance(ref: str, name: str) -> str:
    """Boot an image the way the issue's acceptance test does, and wait for systemd."""
    podman.run("run", "-d", "--name", name, "--systemd=always", ref, "/sbin/init")
    return podman.systemd_state(name, 120)


def image_labels(ref: str) -> dict:
    return json.loads(podman.run("image", "inspect", ref, "--format", "{{json .Labels}}").stdout)


TEST_IMAGES = ("sample", "failing", "hanging", "planted", "badunit", "bootinstall", "leaky")


def image_ids(label: str) -> list[str]:
    """Every image (intermediate ones too) carrying `label` (key=value)."""
    return podman.run("images", "-a", "--filter", f"label={label}", "--format", "{{.ID}}").stdout.split()


def remove_images(ids: list[str]) -> str:
    """Remove these images, whatever uses them; podman's complaint, if any ('' when all went)."""
    if not ids:
        return ""
    proc = podman.run("rmi", "-f", *sorted(set(ids)), check=False)
    return proc.stderr.strip() if proc.returncode else ""


def remove_images_of(image: str) -> None:
    """Remove every image baked for `image` (final images and cached layers carry io.bakery.image)."""
    remove_images(image_ids(f"io.bakery.image={image}"))


PROJECT_FILES = ("bakery.yml", "verify-allowlist.yml", "ansible.cfg", "app", "roles", "playbooks", "inventories",
                 "tests/images")


def record_bake_run(run_id: str) -> None:
    """Have the controller remove this run's images (final and cached layers) at the end of the session."""
    with open(Path(os.environ[SHARED_DIR]) / "runs", "a") as runs:
        runs.write(run_id + "\n")


def baked_example() -> Path:
    """This repository's example project in a git repository of its own, with the example image baked: once per
    session, in the directory the workers share. The first worker to ask bakes it; the other waits, then copies."""
    shared = Path(os.environ[SHARED_DIR])
    root = shared / "example"
    with machine_lock(f"example-{shared.name}"):
        if not (root / ".bakery" / "tests-baked").exists():
            shutil.rmtree(root, ignore_errors=True)  # a bake that failed before
            root.mkdir()
            for name in PROJECT_FILES:
                source = REPO / name
                if source.is_dir():
                    shutil.copytree(source, root / name,
                                    ignore=shutil.ignore_patterns("__pycache__", ".bakery-*", ".pytest_cache"))
                else:
                    shutil.copy(source, root / name)
            init_repo(root, "Example project under test")
            assert bake(root, "build-app").rc == 0
            out = bake(root, "build", "webapp", "--json", timeout=1200)
            assert out.rc == 0, out.stderr
            record_bake_run(out.json["run_id"])
            (root / ".bakery" / "tests-baked").write_text(out.json["version"])
    return root


@pytest.fixture(scope="session")
def example_project(tmp_path_factory) -> Path:
    """This worker's copy of the example project, with the example image baked. Its catalog comes along, so
    building webapp in it reuses that version: the layers are baked once per session, not once per worker."""
    root = tmp_path_factory.mktemp("example") / "project"
    shutil.copytree(baked_example(), root, symlinks=True, ignore=shutil.ignore_patterns("runs"))
    return root


@pytest.fixture(scope="session")
def webapp_image(example_project):
    """The example image: the version baked in the shared project, which this copy's catalog lists."""
    out = bake(example_project, "build", "webapp", "--json")
    assert out.rc == 0, out.stderr
    assert out.json["reused"], "the copy of the baked example project baked webapp again"
    return out.json
