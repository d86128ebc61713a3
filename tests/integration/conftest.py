"""Integration tests bake real images with podman; they share one base image per machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bakery import podman
from bakery.base_image import build_base
from tests.conftest import REPO, bake, init_repo


@pytest.fixture(scope="session", autouse=True)
def base_image():
    """The bookworm base (made once per machine, reused after)."""
    return build_base("bookworm", REPO / ".bakery" / "tmp")


def containers(label: str) -> list[str]:
    out = subprocess.run(["podman", "ps", "-a", "--filter", f"label={label}", "--format", "{{.Names}}"],
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


TEST_IMAGES = ("sample", "failing", "planted", "badunit", "bootinstall", "leaky")


def remove_images_of(image: str) -> None:
    """Remove every image baked for `image` (final images and cached layers carry io.bakery.image)."""
    ids = podman.run("images", "-a", "--filter", f"label=io.bakery.image={image}", "--format", "{{.ID}}").stdout.split()
    if ids:
        podman.run("rmi", "-f", *sorted(set(ids)), check=False)


@pytest.fixture(scope="session", autouse=True)
def remove_test_images():
    """Remove every image the tests baked."""
    yield
    for image in TEST_IMAGES:
        remove_images_of(image)


PROJECT_FILES = ("bakery.yml", "verify-allowlist.yml", "ansible.cfg", "app", "roles", "playbooks", "inventories",
                 "tests/images")


@pytest.fixture(scope="session")
def example_project(tmp_path_factory) -> Path:
    """A copy of this repository's example project (roles, playbooks, app), in its own git repository."""
    root = tmp_path_factory.mktemp("example") / "project"
    root.mkdir()
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name,
                            ignore=shutil.ignore_patterns("__pycache__", ".bakery-*", ".pytest_cache"))
        else:
            shutil.copy(source, root / name)
    init_repo(root, "Example project under test")
    return root


# Run ids of every bake of the example project in this session: their images (final and cached layers) are removed
# at the end.
BAKE_RUNS: list[str] = []


@pytest.fixture(scope="session")
def webapp_image(example_project):
    assert bake(example_project, "build-app").rc == 0
    out = bake(example_project, "build", "webapp", "--json", timeout=1200)
    assert out.rc == 0, out.stderr
    BAKE_RUNS.append(out.json["run_id"])
    yield out.json
    ids = []
    for run_id in BAKE_RUNS:
        ids += podman.run("images", "-a", "--filter", f"label=io.bakery.run={run_id}",
                          "--format", "{{.ID}}").stdout.split()
    if ids:
        proc = podman.run("rmi", "-f", *sorted(set(ids)), check=False)
        if proc.returncode:
            print(f"warning: could not remove the example images: {proc.stderr.strip()}")
