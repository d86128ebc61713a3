"""Over real SSH (sshd and sudo in an instance, the same client config as `verify --vm`), a command sent through the
exec session answers exactly as testinfra's own per-command ssh does: exit status, both outputs byte for byte,
environment, user, working directory; under --sudo the commands run as root, inside `host.sudo(user)` as that
user; where the session cannot start (no python3, sudo wants a password) every command goes through ssh as
before; and a whole test run opens one ssh connection for its commands, not one per command."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import pytest
import testinfra
import testinfra.backend
from testinfra.backend.ssh import SshBackend

from bakery import podman
from bakery.base_image import build_base
from bakery.base_settings import BaseSettings
from bakery.verify import testinfra_run
from bakery.verify.testinfra_plugin import bakery_exec_session as plugin
from bakery.verify.vm_ssh import USER, GuestShell, make_key
from tests.conftest import REPO
from tests.integration.test_verify_exec_session import COMMANDS as PODMAN_COMMANDS

pytestmark = pytest.mark.integration

# As the hardening role bakes sudo (use_pty, its own log file), with the break-glass grant verify --vm asks for, and
# a second account whose sudo wants a password.
SETUP = f"""set -e
sed -i 's/^session\\s*required\\s*pam_loginuid.so/session optional pam_loginuid.so/' /etc/pam.d/sshd
for user in {USER} asker; do
  useradd -m -s /bin/bash "$user"
  install -d -m 0700 -o "$user" -g "$user" "/home/$user/.ssh"
  printf '%s\\n' "$KEY" > "/home/$user/.ssh/authorized_keys"
  chown "$user:$user" "/home/$user/.ssh/authorized_keys"
done
printf 'Defaults use_pty\\nDefaults logfile=/var/log/sudo.log\\n' > /etc/sudoers.d/test
printf '{USER} ALL=(ALL) NOPASSWD: ALL\\nasker ALL=(ALL) ALL\\n' >> /etc/sudoers.d/test
chmod 0440 /etc/sudoers.d/test
systemctl restart ssh
"""

# the podman session's commands (its background one: plain ssh waits for the child; the answer is the same), and
# what only a login shell, a large answer or sudo's cut of SUDO_COMMAND show
COMMANDS = [
    *PODMAN_COMMANDS,
    "echo $0 $$ | sed 's/[0-9]*$/pid/'",
    "head -c 3000000 /dev/zero | tr '\\000' x",
    "echo ${#SUDO_COMMAND} # " + "x" * 5000,
]
AS = {"ssh user": {}, "sudo": {"sudo": True}, "sudo -u nobody": {"sudo": True, "sudo_user": "nobody"}}


@pytest.fixture(scope="module")
def ssh_base():
    """The bookworm base with openssh-server and sudo (a base flavour: made once per machine, reused after)."""
    return build_base("bookworm", REPO / ".bakery" / "tmp", settings=BaseSettings(extra_packages=("openssh-server",
                                                                                                  "sudo")))


@pytest.fixture(scope="module")
def guest(ssh_base, tmp_path_factory):
    """A GuestShell (verify --vm's SSH client config) onto sshd in an instance, published on loopback only."""
    name = f"bakery-test-ssh-session-{os.getpid()}"
    directory = tmp_path_factory.mktemp("ssh")
    key, public = make_key(directory / "key")
    try:
        podman.run("run", "-d", "--name", name, "--systemd=always", "-p", "127.0.0.1::22", ssh_base.ref, "/sbin/init")
        assert podman.systemd_state(name, 120) in ("running", "degraded")
        podman.run("exec", "-e", f"KEY={public}", name, "sh", "-c", SETUP)
        port = int(podman.run("port", name, "22/tcp").stdout.strip().rsplit(":", 1)[1])
        shell = GuestShell(directory, key, port)
        try:
            assert shell.wait_reachable(60) == ""
            yield name, shell
        finally:
            shell.close()
    finally:
        podman.remove_container(name)


@pytest.fixture
def ssh_calls(tmp_path, monkeypatch):
    """Every ssh client started from here on, one line each (a wrapper on PATH that runs the real ssh)."""
    log, wrapper = tmp_path / "ssh-calls.log", tmp_path / "bin" / "ssh"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *PYTHONCOERCECLOCALE=0*) echo session;; *) echo command;; esac'
                       f' >> {log}\nexec {shutil.which("ssh")} "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")

    def calls() -> tuple[int, int]:
        """(exec sessions started, other ssh commands)"""
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        return lines.count("session"), lines.count("command")

    return calls


@pytest.fixture
def registered():
    """The plugin's backends in testinfra's registry, as `-p bakery_exec_session` puts them."""
    saved = dict(testinfra.backend.BACKENDS)
    plugin.pytest_configure(None)
    yield
    testinfra.backend.BACKENDS.update(saved)


def answer(backend: SshBackend, command: str) -> tuple:
    """rc, stdout, stderr and command line; or the exit status testinfra refused (ssh's 255)."""
    try:
        out = backend.run(command)
    except RuntimeError as error:
        return ("refused", error.args[0].rc, error.args[0].command)
    return out.rc, out.stdout_bytes, out.stderr_bytes, out.command


def backends(shell: GuestShell, hostspec: str = "guest", **kwargs) -> tuple[SshBackend, plugin.SessionSshBackend]:
    return (SshBackend(hostspec, ssh_config=str(shell.config), **kwargs),
            plugin.SessionSshBackend(hostspec, ssh_config=str(shell.config), **kwargs))


@pytest.mark.parametrize("identity", AS)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_answers_as_testinfras_ssh_does(guest, command, identity):
    plain, session = backends(guest[1], **AS[identity])
    try:
        assert answer(session, command) == answer(plain, command)
        assert session._session is not None  # it did go through the session
    finally:
        plugin.pytest_unconfigure(None)


@pytest.mark.parametrize("identity", AS)
def test_exit_status_255_and_a_shell_killed_by_a_signal_are_refused_as_testinfras_ssh_refuses_them(guest, identity):
    plain, session = backends(guest[1], **AS[identity])
    try:
        for command in ("exit 255", "kill -TERM $$"):
            assert answer(session, command) == answer(plain, command) == ("refused", 255, plain.get_command(command)
                                                                          .encode())
        assert session._session is not None
    finally:
        plugin.pytest_unconfigure(None)


def test_commands_run_as_root_under_sudo_and_as_the_user_inside_host_sudo(guest, ssh_calls, registered):
    host = testinfra.get_host("ssh://guest", ssh_config=str(guest[1].config), sudo=True)
    try:
        assert host.check_output("id -u; cat /proc/$PPID/comm") == "0\nbakery-exec"
        nobody = host.user("nobody").uid
        with host.sudo("nobody"):  # testinfra's `sudo /bin/sh -c 'sudo -u nobody /bin/sh -c ...'`
            assert host.check_output("id -u; cat /proc/$PPID/comm") == f"{nobody}\nsudo"
        assert host.check_output("id -u") == "0"
        assert ssh_calls() == (1, 0)  # all of them in the one session
        host.backend.sudo_user = "nobody"  # changed under the session: per command, as that user
        assert host.check_output("id -u") == str(nobody)
        assert ssh_calls() == (1, 1)
    finally:
        plugin.pytest_unconfigure(None)


def test_without_python3_every_command_goes_through_ssh(guest, ssh_calls, caplog):
    name, shell = guest
    podman.run("exec", name, "mv", "/usr/bin/python3", "/usr/bin/python3.away")
    try:
        plain, session = backends(shell, sudo=True)
        with caplog.at_level(logging.WARNING, logger="bakery.verify.exec_session"):
            got, again = session.run("echo %s; id -u", "a b"), session.run("true")
        want = plain.run("echo %s; id -u", "a b")
        assert (got.rc, got.stdout, got.stderr, got.command) == (want.rc, want.stdout, want.stderr, want.command)
        assert again.rc == 0 and session._session is None
        assert "go through ssh one by one" in caplog.text
        assert ssh_calls() == (1, 3)  # one attempt at a session, never retried
    finally:
        plugin.pytest_unconfigure(None)
        podman.run("exec", name, "mv", "/usr/bin/python3.away", "/usr/bin/python3")


def test_where_sudo_wants_a_password_every_command_goes_through_ssh_and_fails_as_before(guest, caplog):
    plain, session = backends(guest[1], "asker@guest", sudo=True)
    try:
        with caplog.at_level(logging.WARNING, logger="bakery.verify.exec_session"):
            got = session.run("id -u")
        want = plain.run("id -u")
        assert got.rc == want.rc != 0 and (got.stdout, got.stderr) == (want.stdout, want.stderr)
        assert session._session is None and "password is required" in caplog.text
    finally:
        plugin.pytest_unconfigure(None)


def test_a_session_killed_from_inside_fails_the_command_and_the_next_one_reconnects(guest):
    _, session = backends(guest[1], sudo=True)
    try:
        with pytest.raises(RuntimeError, match="ended while running"):
            session.run("kill -KILL $PPID; sleep 5")
        assert session.run("echo again").stdout == "again\n"
    finally:
        plugin.pytest_unconfigure(None)


SUITE = """
def test_many_commands(host):
    for n in range(40):
        assert host.run("echo %s", str(n)).stdout == f"{n}\\n"
    assert host.user().name == "root" and host.file("/etc/os-release").contains("bookworm")

def test_as_another_user(host):
    with host.sudo("nobody"):
        assert host.user().name == "nobody"
"""


def test_a_verify_run_opens_one_ssh_session_and_names_its_tests_as_before(guest, ssh_calls, tmp_path):
    suite = tmp_path / "test_suite.py"
    suite.write_text(SUITE, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    cmd = testinfra_run.command(tmp_path / "pytest.ini", tmp_path, ("--hosts=ssh://guest",
                                f"--ssh-config={guest[1].config}", "--sudo"), tmp_path / "report.xml", "s", [suite])
    out = subprocess.run([*cmd, "-rA", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'bt'}"], cwd=tmp_path,
                         env=testinfra_run.environment({}), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASSED test_suite.py::test_many_commands[ssh://guest]" in out.stdout
    assert ssh_calls() == (1, 0)
