"""Integration tests bake real images with podman; they share one base image per machine."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from bakery import podman
from bakery.base_image import build_base
from tests.conftest import REPO


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
    state = podman.run("exec", name, "systemctl", "is-system-running", "--wait", check=False, timeout=120).stdout.strip()
    return state


def image_labels(ref: str) -> dict:
    return json.loads(podman.run("image", "inspect", ref, "--format", "{{json .Labels}}").stdout)


TEST_IMAGES = ("sample", "failing")


@pytest.fixture(scope="session", autouse=True)
def remove_test_images():
    """Remove every image the tests baked (final images and cached layers carry io.bakery.image)."""
    yield
    for image in TEST_IMAGES:
        ids = podman.run("images", "-a", "--filter", f"label=io.bakery.image={image}", "--format", "{{.ID}}").stdout.split()
        if ids:
            podman.run("rmi", "-f", *sorted(set(ids)), check=False)
