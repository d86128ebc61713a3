"""pytest plugin for `bake.py verify`: testinfra's podman:// hosts run their commands over one `podman exec` each.

testinfra's podman backend starts a new `podman exec` (a host shell, podman, conmon, runc) for every command,
about 0.2 s each; the webapp image's suites run well over a thousand commands. This backend keeps one small
Python server running inside the instance per host and sends it each command: the same `/bin/sh -c` command
line, no stdin, stdout, stderr and exit status returned apart, as `podman exec` would. Test ids keep the
podman:// host, so reports name tests as before. If the server cannot start (an image without python3), or
dies, commands go through `podman exec` again.

Loaded by the verify runner with `-p bakery_exec_session`; it imports nothing of bakery, so the runner puts
only this directory on the test run's PYTHONPATH.
"""

from __future__ import annotations

import logging
import struct
import subprocess
from typing import IO, Any

import testinfra.backend
from testinfra.backend.podman import PodmanBackend

log = logging.getLogger("bakery.verify.exec_session")

# Runs inside the instance under python3 -c: read a length-prefixed command, run it, answer rc + both outputs.
# PYTHONCOERCECLOCALE=0 keeps Python from adding LC_CTYPE=C.UTF-8 to the environment the commands inherit.
SERVER = r"""
import os, struct, subprocess, sys, tempfile
os.environ.pop("PYTHONCOERCECLOCALE", None)
try:  # a name of its own, so a test looking for the image's python3 processes never finds this one
    import ctypes
    ctypes.CDLL(None).prctl(15, b"bakery-exec", 0, 0, 0)  # PR_SET_NAME
except Exception:
    pass
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
    # not a pipe: like podman exec, answer when the command exits, even if something it started in the
    # background still holds its output open
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
    out, err = capture(), capture()
    rc = subprocess.Popen([b"/bin/sh", b"-c", read(n)], stdin=subprocess.DEVNULL, stdout=out, stderr=err).wait()
    rc = rc if rc >= 0 else 128 - rc
    out, err = output(out), output(err)
    o.write(struct.pack(">iII", rc, len(out), len(err)) + out + err); o.flush()
"""
HEADER = struct.Struct(">iII")


class SessionBroken(Exception):
    """The server inside the instance went away."""


def server_command(name: str, user: str | None) -> list[str]:
    """The server, started inside the instance as testinfra's own `podman exec` would start a command there."""
    return ["podman", "exec", "-i", "-e", "PYTHONCOERCECLOCALE=0", *(["-u", user] if user else []), name,
            "python3", "-c", SERVER]


class ExecSession:
    """One server in one instance, answering commands one at a time."""

    def __init__(self, name: str, user: str | None = None):
        self.proc = subprocess.Popen(server_command(name, user), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        if self._stdout.readline() != b"ready\n":
            self.close()
            raise SessionBroken(f"no exec session in {name}")

    @property
    def _stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def run(self, command: bytes) -> tuple[int, bytes, bytes]:
        """rc, stdout, stderr of `/bin/sh -c command` inside the instance."""
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
            raise SessionBroken("the exec session ended")
        return data

    def close(self) -> None:
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


class SessionPodmanBackend(PodmanBackend):
    """testinfra's podman backend, with its commands sent through one ExecSession per host."""

    NAME = "podman"
    sessions: list[ExecSession] = []

    def __init__(self, name: str, *args: Any, **kwargs: Any):
        super().__init__(name, *args, **kwargs)
        self._session: ExecSession | None = None
        self._fallback = False

    def run(self, command: str, *args: str, **kwargs: Any) -> Any:
        session = self._connect()
        if session is None:
            return super().run(command, *args, **kwargs)
        cmd = self.encode(self.get_command(command, *args))
        try:
            rc, out, err = session.run(cmd)
        except SessionBroken as error:
            # The command may have run (or killed the server): say so rather than run it a second time.
            self._session = None
            raise RuntimeError(f"podman exec session in {self.name} ended while running {cmd!r}: {error}") from error
        return self.result(rc, cmd, out, err)

    def _connect(self) -> ExecSession | None:
        if self._session is None and not self._fallback:
            try:
                self._session = ExecSession(self.name, self.user)
                SessionPodmanBackend.sessions.append(self._session)
            except (OSError, SessionBroken) as error:
                log.warning("commands in %s go through podman exec one by one: %s", self.name, error)
                self._fallback = True
        return self._session


def pytest_configure(config: Any) -> None:
    testinfra.backend.BACKENDS["podman"] = f"{__name__}.SessionPodmanBackend"


def pytest_unconfigure(config: Any) -> None:
    while SessionPodmanBackend.sessions:
        SessionPodmanBackend.sessions.pop().close()
