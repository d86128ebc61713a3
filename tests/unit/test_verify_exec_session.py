"""The exec session plugin answers a command as `podman exec <instance> /bin/sh -c` would: same exit status, stdout
and stderr kept apart and byte for byte, no stdin; a broken session is said, never silently run twice; an instance
where the session cannot start falls back to one `podman exec` per command."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from bakery.verify.testinfra_plugin import bakery_exec_session as plugin

pytestmark = pytest.mark.unit


@pytest.fixture
def session():
    """The server run on this machine instead of inside an instance (the protocol is the same)."""
    opened = plugin.ExecSession([sys.executable, "-c", plugin.SERVER], "local")
    yield opened
    opened.close()


def test_exit_status_and_both_outputs_come_back_apart(session):
    assert session.run(b"echo out; echo err >&2; exit 3") == (3, b"out\n", b"err\n")
    assert session.run(b"true") == (0, b"", b"")


def test_the_server_has_a_process_name_a_check_for_the_images_python3_cannot_match(session):
    with open(f"/proc/{session.proc.pid}/comm", encoding="ascii") as comm:
        assert comm.read().strip() == "bakery-exec"
    assert session.run(b"cat /proc/$PPID/comm") == (0, b"bakery-exec\n", b"")


def test_output_is_binary_safe_and_large_output_round_trips(session):
    rc, out, err = session.run(b"printf '\\000\\377\\n'; head -c 3000000 /dev/zero | tr '\\000' x")
    assert rc == 0 and out[:3] == b"\x00\xff\n" and len(out) == 3 + 3000000 and err == b""


def test_commands_get_no_stdin_and_many_run_in_one_session(session):
    assert session.run(b"cat") == (0, b"", b"")  # would hang on the protocol stream if stdin were inherited
    pid = session.proc.pid
    for n in range(50):
        assert session.run(f"echo {n}".encode()) == (0, f"{n}\n".encode(), b"")
    assert session.proc.pid == pid and session.proc.poll() is None


def test_the_answer_comes_when_the_command_exits_not_what_it_left_in_the_background(session):
    started = time.monotonic()
    assert session.run(b"sleep 5 & echo started") == (0, b"started\n", b"")
    assert time.monotonic() - started < 2
    assert session.run(b"echo next") == (0, b"next\n", b"")


def test_a_command_killed_by_a_signal_reports_128_plus_the_signal(session):
    rc, _, _ = session.run(b"sh -c 'kill -KILL $$'")
    assert rc == 128 + signal.SIGKILL


def test_a_session_that_ends_mid_command_raises_instead_of_answering(session):
    with pytest.raises(plugin.SessionBroken):
        session.run(b"kill -KILL $PPID; sleep 5")


def test_a_session_that_cannot_start_is_refused_with_its_reason():
    command = [sys.executable, "-c", "import sys; print('no'); sys.exit('sudo: a password is required')"]
    with pytest.raises(plugin.SessionBroken, match="no exec session in gone: sudo: a password is required"):
        plugin.ExecSession(command, "gone")


def test_the_backend_falls_back_to_one_podman_exec_per_command(monkeypatch):
    monkeypatch.setattr(plugin, "server_command", lambda name, user: [sys.executable, "-c", "raise SystemExit(1)"])
    ran: list[str] = []

    def run_local(self, command, *args):
        ran.append(self.quote(command, *args))
        return self.result(0, b"", b"ok\n", b"")

    monkeypatch.setattr(plugin.PodmanBackend, "run_local", run_local)
    backend = plugin.SessionPodmanBackend("box")
    assert backend.run("echo %s", "a b").stdout == "ok\n"
    assert backend.run("true").rc == 0
    assert ran == ["podman exec box /bin/sh -c 'echo '\"'\"'a b'\"'\"''", "podman exec box /bin/sh -c true"]


def test_the_session_backend_runs_testinfra_command_lines(monkeypatch):
    monkeypatch.setattr(plugin, "server_command", lambda name, user: [sys.executable, "-c", plugin.SERVER])
    backend = plugin.SessionPodmanBackend("box")
    try:
        out = backend.run("printf %s", "it's; $HOME")
        assert (out.rc, out.stdout, out.stderr) == (0, "it's; $HOME", "")
        assert out.command == b"printf 'it'\"'\"'s; $HOME'"
    finally:
        plugin.pytest_unconfigure(None)
    assert all(s.proc.poll() is not None for s in [backend._session] if s)


def test_the_plugin_replaces_testinfras_podman_backend():
    import testinfra.backend

    saved = testinfra.backend.BACKENDS["podman"]
    try:
        plugin.pytest_configure(None)
        assert testinfra.backend.get_backend_class("podman") is plugin.SessionPodmanBackend
    finally:
        testinfra.backend.BACKENDS["podman"] = saved


def test_the_plugin_imports_nothing_of_bakery():
    """It is loaded by path into the test run's interpreter, where bakery is not importable."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import bakery_exec_session; "
            "print(sorted(m for m in sys.modules if m.startswith('bakery.') or m == 'bakery'))")
    out = subprocess.run([sys.executable, "-I", "-c", code, str(plugin.__file__).rsplit("/", 1)[0]],
                         capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_an_answer_interrupted_midway_is_never_read_as_the_next_commands(session):
    """A test's own timeout (or Ctrl-C) mid-answer ends the session: the next command must not get this answer."""
    backend = plugin.SessionBackend()
    backend._session = session
    backend.where = lambda: "local"  # type: ignore[method-assign]

    def timeout(signum, frame):
        raise TimeoutError("the test's own timeout")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(TimeoutError):
            backend._send(session, b"sleep 2; echo late", b"sleep 2; echo late")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert backend._session is None and session.proc.poll() is not None


def test_under_ssh_a_command_that_reopens_its_stdout_keeps_what_it_wrote_before():
    """As through sshd's pipes; /dev/stdout reopened with `>` would truncate a captured file."""
    opened = plugin.ExecSession([sys.executable, "-c", plugin.SERVER, "sudo"], "local")
    try:
        assert opened.run(b"echo FAILED; echo ok > /dev/stdout") == (0, b"FAILED\nok\n", b"")
    finally:
        opened.close()
