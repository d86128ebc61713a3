"""The ssh exec session starts its server over testinfra's own ssh command line, as the user testinfra would run
commands as (sudo -n [-u USER] under --sudo, else the ssh user), and its server runs each command in the shell that
would have run it: `/bin/sh -c` with sudo's SUDO_COMMAND under sudo, else the login shell exactly as sshd starts it.
A host where no session starts goes through ssh per command; hosts keep their ssh:// ids."""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import subprocess
import sys

import pytest
import testinfra.backend

from bakery.verify.testinfra_plugin import bakery_exec_session as plugin

pytestmark = pytest.mark.unit


def remote_of(backend: plugin.SessionSshBackend) -> tuple[list[str], list[str]]:
    """(the local ssh command line up to the host, the remote command) of the backend's server command."""
    assert backend.server_command()[:2] == ["/bin/sh", "-c"]
    words = shlex.split(backend.server_command()[2])
    return words[:-1], shlex.split(words[-1])


@pytest.mark.parametrize(("kwargs", "prefix", "mode"), [
    ({"sudo": True}, ["sudo", "-n"], "sudo"),
    ({"sudo": True, "sudo_user": "app user"}, ["sudo", "-n", "-u", "app user"], "sudo"),
    ({}, [], "login"),
])
def test_the_server_starts_over_testinfras_ssh_command_line_as_testinfras_user(kwargs, prefix, mode):
    backend = plugin.SessionSshBackend("deploy@guest:2222", ssh_config="/run/x config", **kwargs)
    local, remote = remote_of(backend)
    cmd, cmd_args = backend._build_ssh_command("true")
    assert local == shlex.split(backend.quote(" ".join(cmd), *cmd_args))[:-1]  # the same ssh, options and host
    assert local[-1] == "guest" and "/run/x config" in local and "User=deploy" in local
    assert remote == [*prefix, "env", "PYTHONCOERCECLOCALE=0", "python3", "-S", "-c", plugin.SERVER, mode]


def test_under_sudo_each_command_sees_the_sudo_command_sudo_would_have_set():
    session = plugin.ExecSession(["env", "SUDO_COMMAND=/usr/bin/env x", sys.executable, "-c", plugin.SERVER, "sudo"],
                                 "local")
    try:
        assert session.run(b'echo "$SUDO_COMMAND"; echo $0') == (0, b'/bin/sh -c echo "$SUDO_COMMAND"; echo $0\n'
                                                                 b"/bin/sh\n", b"")
    finally:
        session.close()


def test_without_sudo_a_command_runs_as_the_login_shell_sshd_starts_would_run_it():
    """sshd runs `SHELL -c COMMAND` (argv[0] the shell's base name); the server is started that way and must then
    run each command as that shell would have: same $0, same environment (SHLVL included), same directory."""
    shell = pwd.getpwuid(os.getuid()).pw_shell
    clean = {"PATH": os.environ["PATH"], "HOME": "/", "SSH_CLIENT": "127.0.0.1 1 22", "LANG": "C"}
    command = "echo $0; pwd; env | sort"
    want = subprocess.run([os.path.basename(shell), "-c", command], executable=shell, env=clean,
                          capture_output=True, check=True).stdout
    remote = shlex.join(["env", "PYTHONCOERCECLOCALE=0", sys.executable, "-c", plugin.SERVER, "login"])
    session = plugin.ExecSession(["env", "-i", *(f"{k}={v}" for k, v in clean.items()), shell, "-c", remote], "local")
    try:
        assert session.run(command.encode()) == (0, want, b"")
    finally:
        session.close()


def test_a_host_where_no_session_starts_goes_through_ssh_per_command(caplog):
    backend = plugin.SessionSshBackend("guest", ssh_config="/dev/null", ssh_extra_args="-o ProxyCommand=false")
    with caplog.at_level(logging.WARNING, logger="bakery.verify.exec_session"):
        with pytest.raises(RuntimeError) as failed:  # testinfra's own answer to ssh's exit status 255
            backend.run("true")
    assert "commands in guest go through ssh one by one: no exec session in guest" in caplog.text
    assert backend._fallback and backend._session is None
    assert (failed.value.args[0].rc, failed.value.args[0].command) == (255, b"true")


def test_the_plugin_replaces_testinfras_ssh_backend_and_keeps_its_ids():
    saved = dict(testinfra.backend.BACKENDS)
    try:
        plugin.pytest_configure(None)
        assert testinfra.backend.get_backend_class("ssh") is plugin.SessionSshBackend
        assert testinfra.backend.get_backend("ssh://guest", ssh_config="/dev/null").get_pytest_id() == "ssh://guest"
    finally:
        testinfra.backend.BACKENDS.update(saved)
