"""The sample application, run as the image runs it: `python3 -m webapp` on Debian's python3,
with only app/ on PYTHONPATH (so it cannot lean on bakery or the venv). Loopback only."""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

APP = REPO / "app"
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
MIB = 1024 * 1024
RELEASE = ('IMAGE_NAME="webapp"\nIMAGE_VERSION="20261128.001"\n'
           'GIT_COMMIT="0123456789abcdef0123456789abcdef01234567"\nGIT_DIRTY="false"\n')


class Instance:
    """One app process: its log lines (collected as they come), port and HTTP helpers."""

    def __init__(self, proc: subprocess.Popen, data_dir: Path):
        self.proc = proc
        self.data_dir = data_dir
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._collect, daemon=True).start()
        self.port = int(self.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))

    def _collect(self):
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 10) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    match = re.search(pattern, line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._changed.wait(0.2)):
                    raise AssertionError(f"no log line matching {pattern!r}; log so far:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 0.2))

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        except ConnectionRefusedError as exc:  # seen once in CI: say whether the app was still there, and its log
            raise AssertionError(f"{method} {path} refused on port {self.port}; app exit code {self.proc.poll()}; "
                                 "its log:\n" + self.log) from exc
        finally:
            conn.close()

    def json(self, method: str, path: str, body: bytes | None = None):
        status, headers, data = self.request(method, path, body)
        assert headers.get("Content-Type") == "application/json", (status, headers, data)
        return status, json.loads(data)


def raw(app: Instance, request: bytes) -> bytes:
    """Send bytes as they are (http.client would add what these cases must lack); return the whole answer."""
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.fixture
def release_file(tmp_path):
    path = tmp_path / "image-release"
    path.write_text(RELEASE)
    return path


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def start(tmp_path, data_dir, release_file):
    """Start the app; keyword arguments override its environment (None removes a variable)."""
    procs = []

    def _start(wait_ready: bool = True, **overrides) -> Instance:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(APP),
            "PYTHONDONTWRITEBYTECODE": "1",
            "WEBAPP_PORT": "0",
            "WEBAPP_BIND": "127.0.0.1",
            "WEBAPP_DATA_DIR": str(data_dir),
            "WEBAPP_RELEASE_FILE": str(release_file),
            "ENVIRONMENT": "qa",
        }
        env.update(overrides)
        env = {k: v for k, v in env.items() if v is not None}
        proc = subprocess.Popen([PYTHON, "-m", "webapp"], env=env, cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        instance = Instance(proc, Path(env.get("WEBAPP_DATA_DIR", "/var/lib/webapp")))
        if wait_ready:
            instance.wait_for(r"ready: serving")
        return instance

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.fixture
def notify_socket():
    """A systemd-style notify socket (AF_UNIX datagram) in a short temp dir."""
    directory = tempfile.mkdtemp(prefix="bk-notify-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield path, sock
    sock.close()
    shutil.rmtree(directory)


def receive(sock: socket.socket, timeout: float = 10) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


def receive_until(sock: socket.socket, word: str, timeout: float = 10) -> list[str]:
    """Datagrams up to and including the first one containing `word`."""
    got, deadline = [], time.monotonic() + timeout
    while not got or word not in got[-1]:
        got.append(receive(sock, max(deadline - time.monotonic(), 0.01)))
    return got


# ---- health, version, logs


def test_health_and_version_report_the_image_the_environment_and_flags(start):
    app = start(ENVIRONMENT="qa", FEATURE_NEW_CHECKOUT="true", FEATURE_DARK_MODE="false")
    status, health = app.json("GET", "/health")
    assert (status == 200 and health["status"] == "ok" and health["environment"] == "qa"
            and health["image_version"] == "20261128.001")
    status, version = app.json("GET", "/version")
    assert status == 200
    assert version == {
        "image": "webapp",
        "image_version": "20261128.001",
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "environment": "qa",
        "app_version": "1.0.0",
        "features": {"dark_mode": False, "new_checkout": True},
    }
    startup = app.wait_for(r"webapp .* starting: .*").group(0)
    assert "1.0.0" in startup and "environment=qa" in startup and f"port={app.port}" in startup
    assert app.request("HEAD", "/health")[0] == 200


def test_one_log_line_per_request_with_method_path_status_and_duration(start):
    app = start()
    app.request("PUT", "/items/logged", b"x")
    app.request("GET", "/nope?token=secret")
    app.wait_for(r"^INFO PUT /items/logged 201 \d+\.\dms client=127\.0\.0\.1$")
    app.wait_for(r"^INFO GET /nope 404 \d+\.\dms")
    assert "secret" not in app.log


def test_a_malformed_setting_exits_2_with_one_line_naming_it(tmp_path):
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(APP), "PYTHONDONTWRITEBYTECODE": "1", "WEBAPP_PORT": "eighty"}
    proc = subprocess.run([PYTHON, "-m", "webapp"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=20,
                          check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "WEBAPP_PORT='eighty'" in proc.stderr and "Traceback" not in proc.stderr


# ---- items


def test_items_round_trip_and_are_on_disk(start, data_dir):
    app = start()
    status, headers, body = app.request("PUT", "/items/greeting.v1", b"hello")
    assert status == 201 and headers["Location"] == "/items/greeting.v1"
    assert json.loads(body)["size"] == 5
    assert (data_dir / "items" / "greeting.v1").read_bytes() == b"hello"
    assert app.request("PUT", "/items/greeting.v1", b"hello again")[0] == 200  # replaced, not created
    assert app.request("PUT", "/items/other_key-2", b"")[0] == 201
    assert app.request("GET", "/items/greeting.v1")[::2] == (200, b"hello again")
    assert app.json("GET", "/items") == (200, {"items": ["greeting.v1", "other_key-2"]})
    assert app.request("DELETE", "/items/greeting.v1")[0] == 204
    assert not (data_dir / "items" / "greeting.v1").exists()
    assert app.json("GET", "/items/greeting.v1")[0] == 404
    assert app.json("DELETE", "/items/greeting.v1")[0] == 404
    assert app.json("GET", "/items") == (200, {"items": ["other_key-2"]})
    assert sorted(os.listdir(data_dir / "items")) == ["other_key-2"]  # no temp files left behind


def test_items_survive_a_restart(start, data_dir):
    first = start()
    assert first.request("PUT", "/items/kept", b"durable")[0] == 201
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(10) == 0
    second = start()
    assert second.request("GET", "/items/kept")[::2] == (200, b"durable")


@pytest.mark.parametrize("path", ["/items/", "/items/has%20space", "/items/..", "/items/%2e%2e", "/items/a%2Fb",
                                  "/items/" + "k" * 129])
def test_bad_keys_are_400(start, path):
    app = start()
    for method in ("GET", "PUT", "DELETE"):
        status, body = app.json(method, path, b"x" if method == "PUT" else None)
        assert status == 400 and "invalid item key" in body["error"], (method, path)
    assert not os.listdir(app.data_dir)


def test_unknown_paths_are_404_and_wrong_methods_405(start):
    app = start()
    assert app.json("GET", "/nope")[0] == 404
    assert app.json("PUT", "/health/x", b"x")[0] == 404
    for method, path, allowed in [("POST", "/items/a", "DELETE, GET, HEAD, PUT"), ("DELETE", "/health", "GET, HEAD"),
                                  ("PUT", "/items", "GET, HEAD"), ("PATCH", "/version", "GET, HEAD")]:
        status, headers, body = app.request(method, path, b"x")
        assert status == 405 and headers["Allow"] == allowed, (method, path)
        assert "not allowed" in json.loads(body)["error"]


def test_item_size_limit_is_1_mib(start, data_dir):
    app = start()
    assert app.request("PUT", "/items/exact", b"a" * MIB)[0] == 201
    status, body = app.json("PUT", "/items/big", b"b" * (MIB + 1))
    assert status == 413 and str(MIB) in body["error"]
    assert not (data_dir / "items" / "big").exists()
    assert raw(app, b"PUT /items/nolength HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 411 ")
    assert raw(app, b"PUT /items/chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n").startswith(
        b"HTTP/1.0 411 ")


# ---- readiness and health


@pytest.mark.parametrize("make_bad, reason", [
    (lambda data, rel: shutil.rmtree(data), r"data directory .*/data does not exist"),
    (lambda data, rel: (shutil.rmtree(data), data.write_text("a file")), r"data directory .*/data is not a directory"),
    (lambda data, rel: (rel.unlink(), rel.mkdir()), r"release file .*/image-release is unreadable: Is a directory"),
])
def test_health_is_503_with_a_reason_while_a_dependency_is_missing(start, data_dir, release_file, make_bad, reason):
    make_bad(data_dir, release_file)
    app = start(wait_ready=False)
    status, body = app.json("GET", "/health")
    assert status == 503 and body["status"] == "unhealthy" and re.fullmatch(reason, body["reason"])
    app.wait_for(r"WARNING not ready: " + reason)


def test_a_missing_release_file_does_not_block_readiness_and_version_shows_nulls(start, release_file):
    """Mid-bake and in a role's Molecule test the file does not exist yet; the service must still start."""
    release_file.unlink()
    app = start()
    assert app.json("GET", "/health")[0] == 200
    status, version = app.json("GET", "/version")
    assert status == 200 and (version["image"], version["image_version"], version["git_commit"]) == (None, None, None)
    assert version["app_version"] == "1.0.0" and version["environment"] == "qa"
    app.wait_for(r"WARNING release file .*/image-release does not exist")


def test_health_turns_503_when_the_data_dir_breaks_and_recovers_when_it_is_back(start, data_dir, tmp_path):
    app = start()
    assert app.json("GET", "/health")[0] == 200
    data_dir.rename(tmp_path / "moved")
    data_dir.write_text("not a directory any more")
    status, body = app.json("GET", "/health")
    assert status == 503 and "is not a directory" in body["reason"]
    status, body = app.json("PUT", "/items/x", b"x")
    assert status == 503 and "cannot store item x" in body["error"]
    data_dir.unlink()
    (tmp_path / "moved").rename(data_dir)
    assert app.json("GET", "/health")[0] == 200


def test_ready_is_sent_only_once_health_would_answer_200(start, data_dir, notify_socket):
    path, sock = notify_socket
    data_dir.rmdir()
    app = start(wait_ready=False, NOTIFY_SOCKET=path)
    early = receive(sock)
    assert "READY=1" not in early and "STATUS=not ready: data directory" in early
    with pytest.raises(TimeoutError):
        receive(sock, timeout=1.0)
    assert app.json("GET", "/health")[0] == 503
    data_dir.mkdir()
    assert "READY=1" in receive(sock, timeout=5)
    assert app.json("GET", "/health")[0] == 200


def test_ready_reaches_an_abstract_notify_socket(start):
    name = f"bakery-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        app = start(NOTIFY_SOCKET="@" + name)
        message = receive(sock)
        assert message.splitlines()[0] == "READY=1"
        assert f"127.0.0.1:{app.port}" in message


# ---- shutdown


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(start, notify_socket, data_dir,
                                                                                 signum):
    path, sock = notify_socket
    app = start(NOTIFY_SOCKET=path)
    receive_until(sock, "READY=1")
    body = os.urandom(256 * 1024)
    client = socket.create_connection(("127.0.0.1", app.port), timeout=10)
    client.sendall(f"PUT /items/slow HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:1000])
    # The request is in flight once a request thread exists (main + accept loop + it).
    deadline = time.monotonic() + 10
    while len(os.listdir(f"/proc/{app.proc.pid}/task")) < 3:
        assert time.monotonic() < deadline, "the server never picked the request up"
        time.sleep(0.01)

    app.proc.send_signal(signum)
    receive_until(sock, "STOPPING=1")
    deadline = time.monotonic() + 10
    while True:  # the listener closes while the slow request is still open
        try:
            socket.create_connection(("127.0.0.1", app.port), timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError):  # refused, or reset from the closing backlog
            break
        assert time.monotonic() < deadline, "still accepting connections after the stop signal"
        time.sleep(0.02)
    assert app.proc.poll() is None, "exited with a request in flight"

    for offset in range(1000, len(body), 32 * 1024):
        client.sendall(body[offset:offset + 32 * 1024])
        time.sleep(0.02)
    response = b""
    while chunk := client.recv(65536):
        response += chunk
    client.close()
    assert response.startswith(b"HTTP/1.0 201 "), response[:200]
    assert app.proc.wait(10) == 0
    assert (data_dir / "items" / "slow").read_bytes() == body
    app.wait_for(r"stopping \(SIG(TERM|INT)\)")
    app.wait_for(r"^INFO stopped$")


# ---- live config: SIGHUP re-reads FEATURE_* and LOG_LEVEL from the runtime file (issue 17)


class Hammer:
    """Requests to /version in a loop from another thread while the config changes under them."""

    def __init__(self, app: Instance):
        self.app, self.failures, self.total, self.seen = app, [], 0, set()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                status, body = self.app.json("GET", "/version")
                self.seen.add(json.dumps(body["features"], sort_keys=True))
                if status != 200:
                    self.failures.append(status)
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
            self.total += 1

    def stop(self):
        self.running = False
        self.thread.join(10)


def wait_features(app: Instance, expected: dict, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while app.json("GET", "/version")[1]["features"] != expected:
        assert time.monotonic() < deadline, app.log
        time.sleep(0.05)


def test_sighup_reloads_feature_flags_and_log_level_without_dropping_a_request(start, tmp_path):
    runtime = tmp_path / "runtime.env"
    runtime.write_text('ENVIRONMENT="qa"\nFEATURE_NEW_CHECKOUT="true"\nFEATURE_DARK_MODE="false"\n')
    app = start(WEBAPP_RUNTIME_FILE=str(runtime), FEATURE_NEW_CHECKOUT="true", FEATURE_DARK_MODE="false")
    pid = app.proc.pid
    hammer = Hammer(app)
    try:
        time.sleep(0.3)
        runtime.write_text('ENVIRONMENT="qa"\nFEATURE_NEW_CHECKOUT="false"\nFEATURE_BETA="yes"\nLOG_LEVEL="debug"\n'
                           'DATABASE_PASSWORD="not-logged-4711"\n')
        app.proc.send_signal(signal.SIGHUP)
        wait_features(app, {"beta": True, "new_checkout": False})
        time.sleep(0.3)
    finally:
        hammer.stop()
    assert hammer.failures == [] and hammer.total > 20, (hammer.failures[:5], hammer.total)
    assert app.proc.poll() is None and app.proc.pid == pid
    line = app.wait_for(r"reloaded runtime config from .*: changed .*").group(0)
    assert line.endswith("changed FEATURE_BETA, FEATURE_DARK_MODE, FEATURE_NEW_CHECKOUT, LOG_LEVEL"), line
    assert "not-logged-4711" not in app.log and "true" not in line
    app.request("GET", "/health")
    app.wait_for(r"^DEBUG GET /health 200 ")  # the new log level is in force
    assert app.json("GET", "/health")[1]["environment"] == "qa"


def test_sighup_keeps_the_config_when_the_file_is_absent_or_malformed(start, tmp_path):
    runtime = tmp_path / "runtime.env"
    app = start(WEBAPP_RUNTIME_FILE=str(runtime), FEATURE_NEW_CHECKOUT="true")
    app.proc.send_signal(signal.SIGHUP)
    app.wait_for(rf"reload: no runtime file at {re.escape(str(runtime))}; keeping the current config")
    runtime.write_text('FEATURE_NEW_CHECKOUT="maybe"\n')
    app.proc.send_signal(signal.SIGHUP)
    app.wait_for(r"reload refused: FEATURE_NEW_CHECKOUT=.* is not a feature switch.*; keeping the current config")
    runtime.write_text('FEATURE_NEW_CHECKOUT="true"\n')
    app.proc.send_signal(signal.SIGHUP)
    app.wait_for(r"reloaded runtime config from .*: nothing changed")
    assert app.proc.poll() is None and app.json("GET", "/version")[1]["features"] == {"new_checkout": True}


# ---- pieces in-process


@pytest.fixture
def webapp(monkeypatch):
    monkeypatch.syspath_prepend(str(APP))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # leave no __pycache__ in app/
    import webapp.app
    import webapp.config
    import webapp.notify
    import webapp.release

    return webapp


def test_config_defaults_and_validation(webapp):
    config = webapp.config.Config.from_env({"WEBAPP_PORT": "", "FEATURE_BETA": "Yes"})
    assert (config.port, config.bind, str(config.data_dir), str(config.release_file)) == (
        8080, "0.0.0.0", "/var/lib/webapp", "/etc/image-release")
    assert (config.environment, config.log_level, config.features) == ("unknown", "info", {"beta": True})
    for env, word in [({"WEBAPP_PORT": "70000"}, "WEBAPP_PORT"), ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
                      ({"FEATURE_X": "maybe"}, "FEATURE_X")]:
        with pytest.raises(webapp.config.ConfigError, match=word):
            webapp.config.Config.from_env(env)


def test_release_file_parsing(webapp):
    text = '# comment\nIMAGE_VERSION="20261128.001"\n\nGIT_COMMIT=abc\nROLES="base=sha256:1 app=sha256:2"\nnot a line\n'
    assert webapp.release.parse_release(text) == {"IMAGE_VERSION": "20261128.001", "GIT_COMMIT": "abc",
                                                  "ROLES": "base=sha256:1 app=sha256:2"}


def test_health_says_starting_before_ready_and_stopping_after(webapp, data_dir, release_file):
    app = webapp.app.App(webapp.config.Config(data_dir=data_dir, release_file=release_file))
    assert app.health() == (503, {"status": "starting"})
    app.mark_ready()
    assert app.health()[0] == 200
    app.mark_stopping()
    assert app.health() == (503, {"status": "stopping"})


def test_notify_without_a_socket_does_nothing(webapp):
    assert webapp.notify.notify("READY=1", {}) is False
