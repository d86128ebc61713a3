"""A container's boot is waited for even while systemd has not yet come up as PID 1 (real podman)."""

from __future__ import annotations

import os

import pytest

from bakery import podman

pytestmark = pytest.mark.integration


def test_a_system_not_yet_booted_with_systemd_is_waited_for_not_taken_as_offline(base_image):
    """For its first seconds a container is "offline" to systemctl (PID 1 has not marked the boot); under load a
    test's container was taken as such and 44 tests errored."""
    name = f"bakery-test-late-init-{os.getpid()}"
    try:
        podman.run("run", "-d", "--name", name, "--systemd=always", base_image.ref, "sh", "-c",
                   "sleep 3; exec /sbin/init")
        assert podman.run("exec", name, "systemctl", "is-system-running", check=False).stdout.strip() == "offline"
        assert podman.systemd_state(name, 60) in ("running", "degraded")
    finally:
        podman.remove_container(name)


def test_a_container_that_never_boots_systemd_is_still_reported_after_the_timeout(base_image):
    name = f"bakery-test-no-init-{os.getpid()}"
    try:
        podman.run("run", "-d", "--name", name, "--systemd=always", base_image.ref, "sleep", "120")
        assert podman.systemd_state(name, 3) == "offline"
    finally:
        podman.remove_container(name)
