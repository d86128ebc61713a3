"""Environments on the local target: real podman instances behind a real HAProxy, rolled by bake.py.

Every test gets its own environment (name and loopback port) in the example project
and takes it down at the end; containers, volumes and HAProxy processes are
removed by a finalizer even when a test fails half-way. Traffic is loopback only.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from bakery import podman
from bakery.catalog import open_catalog
from bakery.fleets.local_instances import ENV_LABEL, PROJECT_LABEL, project_id
from tests.conftest import BAKE, bake, free_port
from tests.integration.conftest import record_bake_run

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- helpers


def write_env(project: Path, name: str, *, instances: int = 4, require_verified: bool = False,
              promote_from: str | None = None, data_volume: dict | None = None, runtime: dict | None = None,
              **refresh) -> int:
    """inventories/<name>/ with fast health checks; returns its load-balancer port."""
    port = free_port()
    folder = project / "inventories" / name / "group_vars" / "all"
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "target": "local", "image": "webapp", "instances": instances, "lb_port": port,
        "require_verified": require_verified,
        "health_check": {"path": "/health", "port": 8080, "interval_ms": 200, "rise": 1, "fall": 2,
                         "timeout_ms": 1000},
        "refresh": {"min_healthy_percentage": 75, "max_healthy_percentage": 125, "instance_warmup": 1,
                    "health_check_grace": 20, **refresh},
    }
    if promote_from:
        settings["promote_from"] = promote_from
    if data_volume:
        settings["data_volume"] = data_volume
    (folder / "deploy.yml").write_text(yaml.safe_dump({"bakery_deploy": settings}, sort_keys=False))
    (folder / "runtime.yml").write_text(
        yaml.safe_dump({"bakery_runtime": {"ENVIRONMENT": name, "LOG_LEVEL": "info", **(runtime or {})}}))
    return port


def env_dir(project: Path, name: str) -> Path:
    return project / ".bakery" / "envs" / name


def env_containers(project: Path, name: str) -> list[str]:
    out = podman.run("ps", "-a", "--filter", f"label={ENV_LABEL}={name}",
                     "--filter", f"label={PROJECT_LABEL}={project_id(project)}",
                     "--format", "{{.Names}}").stdout
    return out.split()


def haproxy_pid(project: Path, name: str) -> int | None:
    try:
        pid = int((env_dir(project, name) / "haproxy.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"haproxy" in cmdline and str(env_dir(project, name)).encode() in cmdline else None


def force_clean(project: Path, name: str) -> None:
    """Whatever `down` could not remove: this environment's containers, HAProxy and volumes (by our labels only)."""
    names = env_containers(project, name)
    if names:
        podman.run("rm", "-f", "-t", "0", *names, check=False)
    pid = haproxy_pid(project, name)
    if pid:
        os.kill(pid, signal.SIGTERM)
    volumes = podman.run("volume", "ls", "--filter", f"label={ENV_LABEL}={name}",
                         "--filter", f"label={PROJECT_LABEL}={project_id(project)}",
                         "--format", "{{.Name}}", check=False).stdout.split()
    if volumes:
        podman.run("volume", "rm", "-f", *volumes, check=False)


@pytest.fixture
def environments(example_project):
    """Make test environments; each is taken down (and force-cleaned) afterwards."""
    made: list[str] = []

    def make(name: str, **settings) -> int:
        made.append(name)
        return write_env(example_project, name, **settings)

    yield make
    for name in reversed(made):
        bake(example_project, "down", "--env", name, timeout=300)
        force_clean(example_project, name)
        assert not env_containers(example_project, name)


def get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Load:
    """Threads sending GET /version through the load balancer without keep-alive; every non-200 or error is a
    failure."""

    def __init__(self, port: int, threads: int = 4, rate: float = 80.0):
        self.port = port
        self.interval = threads / rate
        self.ok = 0
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status, body = get(self.port, "/version")
                failure = None if status == 200 else f"status {status}: {body[:100]!r}"
                version = json.loads(body).get("image_version") if status == 200 else None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                failure, version = f"{type(exc).__name__}: {exc}", None
            with self._lock:
                if failure:
                    self.failures.append(failure)
                else:
                    self.ok += 1
                    self.versions[version] = self.versions.get(version, 0) + 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.seconds = time.monotonic() - self.started

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    @property
    def rate(self) -> float:
        return self.total / self.seconds


class UpMonitor:
    """Samples HAProxy's `show servers state` and keeps the fewest servers that were in service (UP, not drained)."""

    def __init__(self, sock: Path):
        self.sock = sock
        self.samples: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _query(self) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.sock))
            s.sendall(b"show servers state instances\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.decode()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                lines = [line.split() for line in self._query().splitlines() if line and not line.startswith("#")]
                # fields: be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
                self.samples.append(sum(1 for f in lines if len(f) > 6 and f[5] == "2" and f[6] == "0"))
            except OSError as exc:
                self.errors.append(str(exc))
            self._stop.wait(0.05)

    def __enter__(self) -> UpMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def status(project: Path, name: str) -> dict:
    out = bake(project, "status", "--env", name, "--json", timeout=600)
    assert out.rc == 0, out.stderr
    return out.json


def versions_in_service(data: dict) -> list[str]:
    return sorted(i["version"] for i in data["instances"] if i["in_service"])


def deploy(project: Path, version: str, env: str, *args: str):
    return bake(project, "deploy", f"webapp:{version}", "--env", env, "--json", *args, timeout=900)


def mark_verified(project: Path, version: str) -> None:
    catalog = open_catalog(project / ".bakery")
    try:
        catalog.record_verification("webapp", version, env=None,
                                    started=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), seconds=0.1,
                                    passed=True, run_id="test-deploy",
                                    summary="marked verified by tests/integration/test_deploy.py", reports={})
    finally:
        catalog.close()


# ---------------------------------------------------------------- image versions


def _build_variant(project: Path, edits: dict[str, tuple[str, str]], *extra: str) -> dict:
    """Bake webapp with some app files changed (pattern -> replacement), then put the files and the latest artifact
    back."""
    originals = {}
    for rel, (pattern, replacement) in edits.items():
        path = project / rel
        originals[path] = path.read_text()
        text, count = re.subn(pattern, replacement, originals[path], count=1, flags=re.M)
        assert count == 1, f"{rel}: {pattern!r} not found"
        path.write_text(text)
    try:
        assert bake(project, "build-app").rc == 0
        out = bake(project, "build", "webapp", "--json", *extra, timeout=1200)
        assert out.rc == 0, out.stderr
        record_bake_run(out.json["run_id"])
        return out.json
    finally:
        for path, text in originals.items():
            path.write_text(text)
        assert bake(project, "build-app").rc == 0


@pytest.fixture(scope="module")
def v1(webapp_image) -> str:
    return webapp_image["version"]


@pytest.fixture(scope="module")
def v2(example_project, v1) -> str:
    """An app-only change: only the webapp layer is baked again."""
    result = _build_variant(example_project,
                            {"app/webapp/__init__.py": (r'^__version__ = "[^"]*"', '__version__ = "2.0.0"')})
    assert result["version"] != v1
    return result["version"]


BROKEN_HEALTH = '''

def _broken_health(self):  # added by tests/integration/test_deploy.py: a version whose health check never passes
    return 503, {"status": "unhealthy", "reason": "broken on purpose"}


App.health = _broken_health
'''


@pytest.fixture(scope="module")
def broken(example_project, v2) -> str:
    """Boots and serves, but GET /health always answers 503 (the service itself still starts: the bake succeeds)."""
    result = _build_variant(example_project,
                            {"app/webapp/__init__.py": (r'^__version__ = "[^"]*"', '__version__ = "6.6.6"'),
                             "app/webapp/app.py": (r"\Z", BROKEN_HEALTH)})
    return result["version"]


# ---------------------------------------------------------------- tests


def test_rolling_refresh_under_load_loses_no_request(example_project, environments, v1, v2):
    port = environments("t1roll", checkpoint_percentages=[50, 100], checkpoint_delay=1, bake_time=2)
    first = deploy(example_project, v1, "t1roll")
    assert first.rc == 0, first.stderr
    assert first.json["result"] == "succeeded" and first.json["from"] is None and first.json["replaced"] == 4
    status_code, body = get(port, "/version")
    assert (status_code == 200 and json.loads(body)["image_version"] == v1
            and json.loads(body)["environment"] == "t1roll")

    with Load(port) as load:
        time.sleep(1)
        out = deploy(example_project, v2, "t1roll")
        time.sleep(1)
    assert out.rc == 0, out.stderr
    summary = out.json
    assert (summary["from"], summary["to"], summary["result"], summary["replaced"]) == (v1, v2, "succeeded", 4)
    assert "checkpoint 50%" in out.stderr and "checkpoint 100%" in out.stderr
    assert load.failures == [], f"{len(load.failures)} of {load.total} requests failed: {load.failures[:5]}"
    assert load.rate >= 50, f"only {load.rate:.0f} requests/s"
    assert load.versions.get(v1) and load.versions.get(v2), "the load saw both versions while rolling"

    data = status(example_project, "t1roll")
    assert data["state"] == "up" and versions_in_service(data) == [v2] * 4
    assert data["endpoint"] == f"http://127.0.0.1:{port}"
    assert data["releases"][0]["kind"] == "deploy" and data["releases"][0]["status"] == "succeeded"
    assert data["releases"][0]["previous_version"] == v1 and data["releases"][0]["version"] == v2
    name = data["instances"][0]["name"]
    labels = json.loads(podman.run("inspect", name, "--format", "{{json .Config.Labels}}").stdout)
    provenance = open_catalog(example_project / ".bakery").version("webapp", v2)["provenance"]
    assert (labels["io.bakery.env"] == "t1roll" and labels["io.bakery.version"] == v2
            and labels["io.bakery.instance"] == "1")
    assert (labels["io.bakery.git.commit"] == provenance["git_commit"]
            and labels["io.bakery.git.message"] == provenance["git_message"])
    assert labels["io.bakery.config"] == data["instances"][0]["config_digest"]
    ports = podman.run("port", name).stdout
    assert ports.strip().startswith("8080/tcp -> 127.0.0.1:"), ports
    print(f"\nrolling refresh of 4 instances: {summary['duration']:.1f} s, "
          f"{load.total} requests at {load.rate:.0f}/s, 0 failed")


def test_broken_version_rolls_back_under_load(example_project, environments, v1, broken):
    port = environments("t2broken", health_check_grace=6)
    assert deploy(example_project, v1, "t2broken").rc == 0
    with Load(port) as load:
        out = deploy(example_project, broken, "t2broken")
        time.sleep(0.5)
    assert out.rc == 1, out.stderr
    assert out.json["result"] == "rolled_back" and out.json["to"] == broken and out.json["from"] == v1
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("bake.py: error: deploy of webapp:") and "rolled back" in error
    assert re.search(r"instance bakery-t2broken-[0-9a-f]{6} failed its health check GET /health", error), error
    # HAProxy's own check failed on the status too (read while its next check runs, the code is not known)
    assert "status 503" in error and re.search(
        r"load balancer check: L7STS (503|\(its code is not shown while the next check runs\))", error), error
    assert "Traceback" not in out.stderr
    assert load.failures == [], f"{len(load.failures)} of {load.total} requests failed: {load.failures[:5]}"
    assert load.rate >= 50 and set(load.versions) == {v1}, load.versions

    data = status(example_project, "t2broken")
    assert data["state"] == "up" and versions_in_service(data) == [v1] * 4
    assert len(data["instances"]) == 4, "the broken instances are gone"
    assert data["releases"][0]["status"] == "rolled_back" and "failed its health check" in data["releases"][0]["reason"]


def test_killed_deploy_is_finished_by_status_never_below_min_healthy(example_project, environments, v1, v2):
    port = environments("t3kill", instance_warmup=2)
    assert deploy(example_project, v1, "t3kill").rc == 0
    state_file = env_dir(example_project, "t3kill") / "refresh.json"
    with UpMonitor(env_dir(example_project, "t3kill") / "haproxy.sock") as monitor, Load(port) as load:
        proc = subprocess.Popen([sys.executable, str(BAKE), "--project", str(example_project), "deploy", f"webapp:{v2}",
                                 "--env", "t3kill"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        killed_at = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                saved = json.loads(state_file.read_text())
            except (OSError, ValueError):
                saved = {}
            if saved.get("enabled"):  # mid-refresh: a new instance took traffic, old ones are still there
                proc.send_signal(signal.SIGKILL)
                killed_at = saved
                break
            time.sleep(0.05)
        proc.wait(timeout=30)
        assert killed_at is not None, "the deploy ended before it could be killed"
        time.sleep(1)  # nobody is rolling the environment now: it must still serve
        data = status(example_project, "t3kill")
    assert data["resumed"] and data["resumed"][0]["result"] == "succeeded", data["resumed"]
    assert data["state"] == "up" and versions_in_service(data) == [v2] * 4 and len(data["instances"]) == 4
    assert data["releases"][0]["status"] == "succeeded" and data["releases"][0]["version"] == v2
    assert monitor.errors == [] and monitor.samples, monitor.errors[:3]
    assert min(monitor.samples) >= 3, f"only {min(monitor.samples)} servers in service at one point (minimum healthy 3)"
    assert load.failures == [], f"{len(load.failures)} of {load.total} requests failed: {load.failures[:5]}"
    assert not state_file.exists()
    again = deploy(example_project, v2, "t3kill")  # nothing left to do
    assert again.rc == 0 and again.json["replaced"] == 0, again.stderr


def test_config_set_rolls_through_and_is_recorded(example_project, environments, v1):
    port = environments("t4config", instances=2, min_healthy_percentage=50, max_healthy_percentage=150)
    assert deploy(example_project, v1, "t4config").rc == 0
    runtime_file = example_project / "inventories/t4config/group_vars/all/runtime.yml"
    before = runtime_file.read_bytes()
    for bad in ("lower_case=1", "DATABASE_PASSWORD=hunter2", "NOT A PAIR"):
        out = bake(example_project, "config", "set", "--env", "t4config", bad)
        assert out.rc == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, (bad, out.stderr)
        assert runtime_file.read_bytes() == before
    out = bake(example_project, "config", "set", "--env", "t4config", "ENVIRONMENT=t4-blue", "FEATURE_SHINY=true",
               "--json", timeout=600)
    assert out.rc == 0, out.stderr
    assert out.json["result"] == "succeeded" and out.json["kind"] == "config" and out.json["replaced"] == 2
    assert yaml.safe_load(runtime_file.read_text())["bakery_runtime"]["ENVIRONMENT"] == "t4-blue"
    for _ in range(4):
        code, body = get(port, "/version")
        facts = json.loads(body)
        assert (code == 200 and facts["environment"] == "t4-blue" and facts["features"].get("shiny") is True
                and facts["image_version"] == v1)
    got = bake(example_project, "config", "get", "--env", "t4config", "ENVIRONMENT")
    assert got.rc == 0 and got.stdout.strip() == "t4-blue"
    data = status(example_project, "t4config")
    assert {i["config_digest"] for i in data["instances"]} == {out.json["config_digest"]}
    assert data["releases"][0]["kind"] == "config" and data["releases"][0]["status"] == "succeeded"
    assert data["releases"][0]["version"] == v1 == data["releases"][0]["previous_version"]
    # And back, by rollback: the previous release's config.
    back = bake(example_project, "rollback", "--env", "t4config", "--json", timeout=600)
    assert back.rc == 0 and back.json["kind"] == "rollback", back.stderr
    assert json.loads(get(port, "/version")[1])["environment"] == "t4config"


def test_data_survives_a_replacement(example_project, environments, v1, v2):
    port = environments("t5data", instances=1, min_healthy_percentage=0, max_healthy_percentage=100,
                        data_volume={"name": "items", "path": "/var/lib/webapp"})
    assert deploy(example_project, v1, "t5data").rc == 0
    code, _ = request(port, "PUT", "/items/greeting", b"hello from v1")
    assert code == 201
    out = deploy(example_project, v2, "t5data")
    assert out.rc == 0 and out.json["replaced"] == 1, out.stderr
    assert json.loads(get(port, "/version")[1])["image_version"] == v2
    assert get(port, "/items/greeting") == (200, b"hello from v1")
    volumes = podman.run("volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert "bakery-t5data-items" in volumes


def test_promote_needs_verification_and_health_in_the_source(example_project, environments, v1, v2):
    environments("t6src", instances=2, min_healthy_percentage=50, max_healthy_percentage=150)
    dst_port = environments("t6dst", instances=2, require_verified=True, promote_from="t6src",
                            min_healthy_percentage=50, max_healthy_percentage=150)
    assert deploy(example_project, v1, "t6src").rc == 0

    out = bake(example_project, "promote", f"webapp:{v2}", "--to", "t6dst")
    assert out.rc == 1 and "has no verification" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    out = deploy(example_project, v2, "t6dst")
    assert out.rc == 1 and "has no verification" in out.stderr, out.stderr
    assert not env_containers(example_project, "t6dst")

    mark_verified(example_project, v2)
    out = bake(example_project, "promote", f"webapp:{v2}", "--to", "t6dst")
    assert (out.rc == 1 and f"webapp:{v2} is not healthy in 't6src'" in out.stderr
            and out.stderr.count("\n") == 1), out.stderr

    out = bake(example_project, "promote", f"webapp:{v1}", "--to", "t6dst")
    assert out.rc == 1 and "has no verification" in out.stderr, out.stderr
    mark_verified(example_project, v1)
    out = bake(example_project, "promote", f"webapp:{v1}", "--to", "t6dst", "--json", timeout=600)
    assert out.rc == 0, out.stderr
    assert out.json["kind"] == "promote" and out.json["result"] == "succeeded" and out.json["to"] == v1
    assert json.loads(get(dst_port, "/version")[1])["image_version"] == v1
    data = status(example_project, "t6dst")
    assert versions_in_service(data) == [v1, v1] and data["releases"][0]["kind"] == "promote"


def test_gate_forced_open_is_recorded(example_project, environments, broken):
    environments("t6force", instances=1, require_verified=True, min_healthy_percentage=0, max_healthy_percentage=100,
                 health_check_grace=4)
    out = deploy(example_project, broken, "t6force")
    assert out.rc == 1 and "has no verification" in out.stderr, out.stderr
    out = deploy(example_project, broken, "t6force", "--force")
    assert out.rc == 1 and out.json["forced"] is True and out.json["result"] == "failed", out.stderr
    assert "there is no previous version to return to" in out.stderr
    release = open_catalog(example_project / ".bakery").releases("t6force")[0]
    assert release["forced"] is True and release["status"] == "failed"
    assert env_containers(example_project, "t6force") == [], (
        "the instance that never passed its health check is removed")


def test_down_removes_instances_and_load_balancer(example_project, environments, v1):
    port = environments("t7down", instances=2, min_healthy_percentage=50, max_healthy_percentage=150)
    assert deploy(example_project, v1, "t7down").rc == 0
    assert len(env_containers(example_project, "t7down")) == 2 and haproxy_pid(example_project, "t7down")
    out = bake(example_project, "down", "--env", "t7down", "--json", timeout=300)
    assert out.rc == 0 and out.json["removed"] == 2, out.stderr
    assert env_containers(example_project, "t7down") == []
    assert haproxy_pid(example_project, "t7down") is None
    with pytest.raises(OSError):
        get(port, "/health", timeout=2)
    data = status(example_project, "t7down")
    assert data["state"] == "down" and data["instances"] == [] and data["endpoint"] is None
    assert [r["kind"] for r in data["releases"][:2]] == ["down", "deploy"]
    text = bake(example_project, "status", "--env", "t7down")
    assert text.rc == 0 and "t7down: down" in text.stdout


def test_usage_errors_exit_2(example_project, environments, v1):
    environments("t8usage", instances=1, min_healthy_percentage=0, max_healthy_percentage=100)
    cases = [
        (("deploy", f"webapp:{v1}", "--env", "nosuchenv"), "unknown environment 'nosuchenv'"),
        (("deploy", f"other:{v1}", "--env", "t8usage"), "deploys image 'webapp', not 'other'"),
        (("deploy", "webapp:19990101.001", "--env", "t8usage"), "unknown version"),
        (("deploy", f"webapp:{v1}", "--env", "t8usage", "--checkpoint-percentages", "50,90"),
         "--checkpoint-percentages"),
        (("deploy", f"webapp:{v1}", "--env", "t8usage", "--min-healthy-percentage", "120"), "--min-healthy-percentage"),
        (("promote", f"webapp:{v1}", "--to", "t8usage"), "has no promote_from"),
    ]
    for args, message in cases:
        out = bake(example_project, *args)
        assert out.rc == 2 and message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    assert not env_containers(example_project, "t8usage")
