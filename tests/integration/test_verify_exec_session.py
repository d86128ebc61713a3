"""In a real instance, a command sent over the exec session answers exactly as testinfra's own `podman exec` does:
exit status, stdout, stderr, environment, user and working directory; a session killed from inside is said, and the
next command starts a new one."""

from __future__ import annotations

import os

import pytest
from testinfra.backend.podman import PodmanBackend

from bakery import podman
from bakery.verify.testinfra_plugin.bakery_exec_session import SessionPodmanBackend, pytest_unconfigure
from tests.integration.conftest import run_instance

pytestmark = pytest.mark.integration

COMMANDS = [
    "echo out; echo err >&2; exit 7",
    "cat",
    "printf '\\377\\000x'",
    "env | sort",
    "id; pwd; umask; ulimit -n",
    "sh -c 'kill -TERM $$'",
    "ls /nonexistent",
    "test -t 0 || echo no-tty",
    "sleep 3 & echo started",  # podman exec answers when the command exits, not when its background child does
]


@pytest.fixture(scope="module")
def instance(base_image):
    name = f"bakery-test-exec-session-{os.getpid()}"
    try:
        assert run_instance(base_image.ref, name) in ("running", "degraded")
        yield name
    finally:
        podman.remove_container(name)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_answers_as_podman_exec_does(instance, command):
    plain, session = PodmanBackend(instance), SessionPodmanBackend(instance)
    try:
        want, got = plain.run(command), session.run(command)
        assert (got.rc, got.stdout_bytes, got.stderr_bytes) == (want.rc, want.stdout_bytes, want.stderr_bytes)
        assert session._session is not None  # it did go through the session
    finally:
        pytest_unconfigure(None)


def test_a_session_killed_from_inside_fails_the_command_and_the_next_one_reconnects(instance):
    backend = SessionPodmanBackend(instance)
    try:
        with pytest.raises(RuntimeError, match="ended while running"):
            backend.run("kill -KILL $PPID; sleep 5")
        assert backend.run("echo again").stdout == "again\n"
    finally:
        pytest_unconfigure(None)
