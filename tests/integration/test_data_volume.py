"""A local environment with a data volume keeps every item through a deploy, a rollback and killed deploys.

The volume is handed from the old instance to its replacement: the old one stops (the app
flushes), then the new one starts on the same volume. Items are written through the load
balancer (PUT /items/<key>, acknowledged only once on disk) and read back the same way.
bake.py is killed with SIGKILL while its own `podman stop` of the old instance runs, and the
command that resumes it is killed while its `podman run` of the replacement runs: the next
command still finishes the release, and exactly one instance holds the volume.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bakery import podman
from tests.conftest import BAKE, bake
from tests.integration.test_deploy import (  # noqa: F401 - environments, v1 and v2 are fixtures
    deploy,
    env_containers,
    env_dir,
    environments,
    get,
    request,
    status,
    v1,
    v2,
    versions_in_service,
)

pytestmark = pytest.mark.integration

ENV = "t9volume"
VOLUME = f"bakery-{ENV}-items"


def put_items(port: int, prefix: str, count: int) -> dict[str, bytes]:
    written = {}
    for i in range(count):
        key, body = f"{prefix}-{i}", f"{prefix} item {i} {os.urandom(4).hex()}".encode()
        code, answer = request(port, "PUT", f"/items/{key}", body)
        assert code == 201, f"PUT /items/{key}: {code} {answer[:200]!r}"
        written[key] = body
    return written


def assert_items(port: int, expected: dict[str, bytes], when: str) -> None:
    code, body = get(port, "/items")
    assert code == 200, f"{when}: GET /items answered {code} {body[:200]!r}"
    listed = set(json.loads(body)["items"])
    missing = sorted(set(expected) - listed)
    assert not missing, f"{when}: {len(missing)} of {len(expected)} items lost: {missing[:5]}"
    for key, data in expected.items():
        assert get(port, f"/items/{key}") == (200, data), f"{when}: /items/{key} changed"


def volume_holders() -> list[str]:
    """Every container (running or not) that mounts the environment's volume."""
    return podman.run("ps", "-a", "--filter", f"volume={VOLUME}", "--format", "{{.Names}}").stdout.split()


def children(pid: int) -> list[tuple[str, int]]:
    """(command line, pid) of the processes whose parent is pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"),
                              int(entry.name)))
        except (OSError, ValueError, IndexError):
            continue
    return found


SLOW_PODMAN = """#!/bin/sh
# `podman run` that gets going only once $GO exists (a podman slow to start); every other podman command as usual
[ "$1" = run ] && while [ ! -e "$GO" ]; do sleep 0.1; done
exec "$REAL_PODMAN" "$@"
"""


def slow_podman(folder: Path) -> tuple[dict[str, str], Path]:
    """An environment whose `podman run` waits for a file (created by the caller) before it starts: unlike a
    SIGSTOPped podman, it holds none of podman's locks while it waits."""
    (folder / "bin").mkdir()
    wrapper = folder / "bin" / "podman"
    wrapper.write_text(SLOW_PODMAN)
    wrapper.chmod(0o755)
    go = folder / "go"
    env = {**os.environ, "PATH": f"{wrapper.parent}:{os.environ['PATH']}", "GO": str(go),
           "REAL_PODMAN": shutil.which("podman") or "podman"}
    return env, go


def kill_during(project: Path, args: list[str], podman_verb: str,
                env: dict[str, str] | None = None) -> tuple[str, int]:
    """Start bake.py ARGS and SIGKILL it (it alone, like kill -9) while its `podman <verb> ...` child runs; returns
    that child's command line and pid. The child is orphaned and goes on, as it would after a real kill -9."""
    proc = subprocess.Popen([sys.executable, str(BAKE), "--project", str(project), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            busy = [(cmd, pid) for cmd, pid in children(proc.pid) if re.search(rf"(^|/)podman {podman_verb} ", cmd)]
            if busy:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return busy[0]
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    raise AssertionError(f"bake.py {' '.join(args)} ended (exit {proc.returncode}) before it ran podman {podman_verb}")


def wait_gone(pid: int, timeout: float = 120) -> None:
    """Wait until an orphaned process has exited (init reaps it)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_items_survive_deploy_rollback_and_killed_deploys(example_project, environments, v1, v2,  # noqa: F811
                                                           tmp_path):
    started = time.monotonic()
    port = environments(ENV, instances=1, min_healthy_percentage=0, max_healthy_percentage=100,
                        data_volume={"name": "items", "path": "/var/lib/webapp"})
    assert deploy(example_project, v1, ENV).rc == 0
    items = put_items(port, "before-deploy", 5)

    out = deploy(example_project, v2, ENV)
    assert out.rc == 0 and out.json["replaced"] == 1, out.stderr
    assert json.loads(get(port, "/version")[1])["image_version"] == v2
    assert_items(port, items, "after the deploy")
    items |= put_items(port, "before-rollback", 5)

    back = bake(example_project, "rollback", "--env", ENV, "--json", timeout=600)
    assert back.rc == 0 and back.json["kind"] == "rollback" and back.json["to"] == v1, back.stderr
    assert json.loads(get(port, "/version")[1])["image_version"] == v1
    assert_items(port, items, "after the rollback")
    items |= put_items(port, "before-kill", 5)
    old = env_containers(example_project, ENV)
    assert len(old) == 1 and volume_holders() == old

    # kill -9 while the old instance is being stopped (the volume is between the two instances) ...
    stopping, _ = kill_during(example_project, ["deploy", f"webapp:{v2}", "--env", ENV], "stop")
    assert old[0] in stopping, stopping
    saved = json.loads((env_dir(example_project, ENV) / "refresh.json").read_text())
    assert saved["goal"]["version"] == v2 and not saved["enabled"]
    # ... and the command that resumes it while its replacement is being started on the volume, by a `podman run`
    # that is slow to get going: it starts only after the next command has finished the hand-over.
    slow_env, go = slow_podman(tmp_path)
    launching, orphan = kill_during(example_project, ["status", "--env", ENV], "run", env=slow_env)
    try:
        assert VOLUME in launching, launching
        out = deploy(example_project, v2, ENV)
    finally:
        go.touch()
        wait_gone(orphan)
    assert out.rc == 0 and out.json["replaced"] == 0, out.stderr
    assert [r["result"] for r in out.json["resumed"]] == ["succeeded"], out.json["resumed"]
    assert json.loads(get(port, "/version")[1])["image_version"] == v2
    assert_items(port, items, "after the killed deploy was resumed")
    instances = env_containers(example_project, ENV)
    assert len(instances) == 1 and old[0] not in instances, f"orphaned instances: {instances}"
    assert volume_holders() == instances, f"the volume is held by {volume_holders()}, not only {instances}"
    data = status(example_project, ENV)
    assert data["state"] == "up" and versions_in_service(data) == [v2] and data["refresh"] is None, data
    assert not (env_dir(example_project, ENV) / "refresh.json").exists()
    print(f"\ndata volume: deploy, rollback and two kill -9 resumes kept {len(items)} items "
          f"({time.monotonic() - started:.0f} s)")
