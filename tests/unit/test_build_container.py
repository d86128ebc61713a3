"""The build container's swap waits for mitogen's `podman exec` into the removed container to end."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import time

import pytest

from bakery.builders import build_container
from tests.shown_process import start_shown

pytestmark = pytest.mark.unit


def fake_exec_client(container: str) -> subprocess.Popen:
    """A process whose command line reads as `podman exec ... <container> ...`, as mitogen's connection does."""
    return start_shown(["/usr/bin/podman", "-c", "import time; time.sleep(60)", "exec", "--interactive",
                        container, "/usr/bin/python3"], executable=sys.executable)


@pytest.fixture
def name() -> str:
    """A container name of this test's own: the processes it finds are the whole host's (another test may run)."""
    return f"bakery-build-t{secrets.token_hex(4)}-1"


def test_exec_clients_into_a_container_are_found_and_no_others(name):
    ours, other = fake_exec_client(name), fake_exec_client(name.replace("-1", "-2"))
    try:
        assert build_container.exec_clients(name) == [ours.pid]
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()
    assert build_container.exec_clients(name) == []


def test_exec_clients_naming_the_container_by_id_are_found(name):
    """Ansible reaches a build container by its id: `podman exec --interactive -- <id> python3` under mitogen."""
    container_id = secrets.token_hex(32)
    by_id = fake_exec_client(container_id)
    try:
        assert build_container.exec_clients(name, container_id) == [by_id.pid]
        assert build_container.exec_clients(name) == []
    finally:
        by_id.kill()
        by_id.wait()


def test_the_swap_goes_on_only_once_the_old_connection_has_ended(name):
    client = fake_exec_client(name)
    killed = []

    def end_later():
        time.sleep(0.5)
        killed.append(time.monotonic())
        client.kill()
        client.wait()

    threading.Thread(target=end_later).start()
    build_container._wait_for_exec_clients(name, timeout=30)
    assert killed and client.poll() is not None
