"""pytest plugin for `bake.py verify`: testinfra's podman:// and ssh:// hosts run their commands over one session each.

testinfra starts a new `podman exec` (a host shell, podman, conmon, runc: about 0.2 s) or a new `ssh ... sudo
/bin/sh -c` (a channel, a login shell and sudo in an emulated VM: about 0.2 s) for every command; the webapp
image's suites run well over a thousand commands. These backends keep one small Python server running inside the
instance per host, started once the way testinfra would start a command there, and send it each command: the
same shell command line, no stdin, stdout, stderr and exit status returned apart. Test ids keep the podman:// or
ssh:// host, so reports name tests as before. If the server cannot start (no python3, sudo wants a password),
commands go through testinfra's own per-command path, with a warning.

Loaded by the verify runner with `-p bakery_exec_session`; it imports nothing of bakery, so the runner puts
only this directory on the test run's PYTHONPATH.
"""

from __future__ import annotations

import logging
import shlex
import struct
import subprocess
import tempfile
from typing import IO, Any

import testinfra.backend
from testinfra.backend.base import CommandResult
from testinfra.backend.podman import PodmanBackend
from testinfra.backend.ssh import SshBackend

log = logging.getLogger("bakery.verify.exec_session")

# Runs inside the instance under python3 -S -c [MODE]: read a length-prefixed command, run it, answer rc + both outputs.
# MODE says whose shell it stands in for: none, podman exec's `/bin/sh -c`; "sudo", `sudo /bin/sh -c` (so
# SUDO_COMMAND names each command as sudo would); "login", the login shell sshd runs a command with (argv[0] its
# base name). PYTHONCOERCECLOCALE=0 keeps Python from adding LC_CTYPE=C.UTF-8 to the environment the commands
# inherit.
SERVER = r"""
import os, pwd, struct, subprocess, sys, tempfile
os.environ.pop("PYTHONCOERCECLOCALE", None)
try:  # a process name of its own (comm, what `pgrep python3` and `ps -C` match; `pgrep -f` still sees its args)
    import ctypes
    ctypes.CDLL(None).prctl(15, b"bakery-exec", 0, 0, 0)  # PR_SET_NAME
except Exception:
    pass
mode = sys.argv[1] if len(sys.argv) > 1 else ""
shell = (pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh") if mode == "login" else "/bin/sh"
argv0 = os.path.basename(shell) if mode == "login" else shell
env = dict(os.environb)
i, o = sys.stdin.buffer, sys.stdout.buffer
def read(n):
    data = b""
    while len(data) < n:
        chunk = i.read(n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data
def capture():
    # podman exec: not a pipe, to answer when the command exits, even if something it started in the background
    # still holds its output open (as podman exec does). Known difference: a command that reopens /dev/stdout
    # with `>` truncates what it wrote before; through podman exec's pipe it would not.
    if hasattr(os, "memfd_create"):
        return open(os.memfd_create("bakery-exec"), "w+b")
    return tempfile.TemporaryFile()
def output(f):
    f.seek(0)
    data = f.read()
    f.close()
    return data
o.write(b"ready\n"); o.flush()
while True:
    n, = struct.unpack(">I", read(4))
    command = read(n)
    if mode == "sudo":
        env[b"SUDO_COMMAND"] = b"/bin/sh " + (b"-c " + command)[:4096]  # sudo keeps 4096 bytes of the arguments
    args = dict(args=[argv0.encode(), b"-c", command], executable=shell, env=env, stdin=subprocess.DEVNULL)
    if mode:  # ssh: pipes, answered once the command and whatever holds its output are done, as sshd answers
        proc = subprocess.Popen(**args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        rc = proc.returncode
    else:
        out, err = capture(), capture()
        rc = subprocess.Popen(**args, stdout=out, stderr=err).wait()
        out, err = output(out), output(err)
    rc = rc if rc >= 0 else 255 if mode else 128 - rc  # killed by a signal: what ssh (exit-signal), podman exec say
    o.write(struct.pack(">iII", rc, len(out), len(err)) + out + err); o.flush()
"""
HEADER = struct.Struct(">iII")


class SessionBroken(Exception):
    """The server inside the instance went away."""


def server_command(name: str, user: str | None) -> list[str]:
    """The server, started inside the instance as testinfra's own `podman exec` would start a command there."""
    return ["podman", "exec", "-i", "-e", "PYTHONCOERCECLOCALE=0", *(["-u", user] if user else []), name,
            "python3", "-S", "-c", SERVER]


class ExecSession:
    """One server, started by `command` (podman exec, ssh), answering commands one at a time."""

    def __init__(self, command: list[str], where: str):
        self.errors = tempfile.TemporaryFile()  # why it did not start (sudo, ssh), if it does not
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors)
        if self._stdout.readline() != b"ready\n":
            raise SessionBroken(f"no exec session in {where}{self.close()}")

    @property
    def _stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def _why(self) -> str:
        """': ' and the last line the server (or sudo, ssh) wrote to stderr, if any."""
        if self.errors.closed:
            return ""
        self.errors.seek(0)
        lines = self.errors.read().decode(errors="replace").strip().splitlines()
        return f": {lines[-1]}" if lines else ""

    def run(self, command: bytes) -> tuple[int, bytes, bytes]:
        """rc, stdout, stderr of the server's shell running `command` inside the instance."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(struct.pack(">I", len(command)) + command)
            self.proc.stdin.flush()
        except OSError as error:
            raise SessionBroken(str(error)) from error
        rc, out_len, err_len = HEADER.unpack(self._read(HEADER.size))
        out = self._read(out_len)
        return rc, out, self._read(err_len)

    def _read(self, n: int) -> bytes:
        data = self._stdout.read(n) if n else b""
        if len(data) != n:
            raise SessionBroken("the exec session ended" + self._why())
        return data

    def close(self) -> str:
        """End the server; answer _why() as it ended."""
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        why = self._why()
        self.errors.close()
        return why


class SessionBackend:
    """What the session backends share: a session started at the first command, or per-command runs for good."""

    TRANSPORT = ""  # how testinfra runs one command, for the messages
    sessions: list[ExecSession] = []  # every session started, closed at the end of the run
    _session: ExecSession | None = None
    _fallback = False

    def server_command(self) -> list[str]:
        raise NotImplementedError

    def where(self) -> str:
        raise NotImplementedError

    def _connect(self) -> ExecSession | None:
        if self._session is None and not self._fallback:
            try:
                self._session = ExecSession(self.server_command(), self.where())
                SessionBackend.sessions.append(self._session)
            except (OSError, SessionBroken) as error:
                log.warning("commands in %s go through %s one by one: %s", self.where(), self.TRANSPORT, error)
                self._fallback = True
        return self._session

    def _send(self, session: ExecSession, command: bytes, shown: bytes) -> tuple[int, bytes, bytes]:
        try:
            return session.run(command)
        except SessionBroken as error:
            # The command may have run (or killed the server): say so rather than run it a second time.
            self._session = None
            session.close()
            raise RuntimeError(f"{self.TRANSPORT} session in {self.where()} ended while running {shown!r}: "
                               f"{error}") from error
        except BaseException:
            # interrupted mid-answer (Ctrl-C, a test's own timeout): the rest of this answer must never be read
            # as the next command's
            self._session = None
            session.proc.kill()
            session.close()
            raise


class SessionPodmanBackend(SessionBackend, PodmanBackend):
    """testinfra's podman backend, with its commands sent through one ExecSession per host."""

    NAME = "podman"
    TRANSPORT = "podman exec"

    def server_command(self) -> list[str]:
        return server_command(self.name, self.user)

    def where(self) -> str:
        return self.name

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        session = self._connect()
        if session is None:
            return super().run(command, *args, **kwargs)
        cmd = self.encode(self.get_command(command, *args))
        rc, out, err = self._send(session, cmd, cmd)
        return self.result(rc, cmd, out, err)


class SessionSshBackend(SessionBackend, SshBackend):
    """testinfra's ssh backend, with its commands sent through one ExecSession per host.

    The server runs as the user testinfra runs commands as (`sudo -n [-u USER]` under --sudo, else the ssh user)
    and stands in for the outer `sudo [-u USER] /bin/sh -c` of testinfra's command line: it runs what is inside
    it, including the `sudo -u OTHER /bin/sh -c` that `host.sudo(OTHER)` wraps around a command. A backend whose
    sudo settings were changed after it started goes through ssh per command."""

    NAME = "ssh"
    TRANSPORT = "ssh"
    sudo: bool  # set by testinfra's BaseBackend
    sudo_user: str | None

    def __init__(self, hostspec: str, *args: Any, **kwargs: Any):
        super().__init__(hostspec, *args, **kwargs)
        self._as = (self.sudo, self.sudo_user)

    def server_command(self) -> list[str]:
        sudo = ["sudo", "-n", *(["-u", self.sudo_user] if self.sudo_user else [])] if self.sudo else []
        remote = shlex.join([*sudo, "env", "PYTHONCOERCECLOCALE=0", "python3", "-S", "-c", SERVER,
                             "sudo" if self.sudo else "login"])
        cmd, cmd_args = self._build_ssh_command(remote)
        return ["/bin/sh", "-c", self.quote(" ".join(cmd), *cmd_args)]  # as testinfra's run_local runs it

    def where(self) -> str:
        return self.host.name

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        session = self._connect() if (self.sudo, self.sudo_user) == self._as else None
        if session is None:
            return super().run(command, *args, **kwargs)
        shown = self.encode(self.get_command(command, *args))  # what testinfra would have run, for the result
        rc, out, err = self._send(session, self.encode(self._inside_sudo(command, *args)), shown)
        result = self.result(rc, shown, out, err)
        if rc == 255:  # as testinfra's ssh: to it, a command's 255 and ssh's own failure look alike
            raise RuntimeError(result)
        return result

    def _inside_sudo(self, command: str, *args: str) -> str:
        """testinfra's command line without the backend's own sudo (the server's): host.sudo() wraps commands
        by replacing get_command on the backend, inside that sudo."""
        sudo, self.sudo = self.sudo, False
        try:
            return self.get_command(command, *args)
        finally:
            self.sudo = sudo


def pytest_configure(config: Any) -> None:
    testinfra.backend.BACKENDS["podman"] = f"{__name__}.SessionPodmanBackend"
    testinfra.backend.BACKENDS["ssh"] = f"{__name__}.SessionSshBackend"


def pytest_unconfigure(config: Any) -> None:
    while SessionBackend.sessions:
        SessionBackend.sessions.pop().close()
