"""`bake.py logs` and `top` on the local target: real instances, their real journals, a real replacement.

Uses the example image the deploy tests bake (the session's webapp_image: no extra
bake) and their environment helpers (own name and loopback port, taken down after).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import BAKE, bake
from tests.integration.test_deploy import deploy, environments, get, status  # noqa: F401 - environments is a fixture

pytestmark = pytest.mark.integration

ENV = "obs9"


def app_log_line(address: str, marker: str) -> None:
    """A request the app logs (INFO: method, path, status) on exactly this instance."""
    host, port = address.split(":")
    code, _ = get(int(port), f"/items/{marker}")
    assert code == 404


def interruptible() -> None:
    """Ctrl-C as in a terminal: a test run started in the background (`cmd &` in a script) ignores SIGINT, and its
    children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def marker_lines(project, marker: str, *extra: str) -> list[dict]:
    out = bake(project, "logs", "--env", ENV, "--unit", "webapp", "--grep", marker, "--since", "10m", "--json", *extra)
    assert out.rc == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_logs_merge_every_instance_and_keep_replaced_ones_and_top_shows_the_app(
        example_project, environments, webapp_image):  # noqa: F811
    version = webapp_image["version"]
    environments(ENV, instances=2, min_healthy_percentage=50, max_healthy_percentage=150)
    assert deploy(example_project, version, ENV).rc == 0
    first = status(example_project, ENV)["instances"]
    assert len(first) == 2
    marker = f"marker-{uuid.uuid4().hex[:10]}"
    for instance in first:  # one after the other: the merge must put them in this order
        app_log_line(instance["address"], marker)
        time.sleep(0.05)

    lines = marker_lines(example_project, marker)
    assert [line["instance"] for line in lines] == [i["name"] for i in first]
    assert all(line["version"] == version and line["origin"] == "live" and line["source"] == "webapp" for line in lines)
    assert lines[0]["timestamp_us"] < lines[1]["timestamp_us"] and f"GET /items/{marker} 404" in lines[0]["message"]
    text = bake(example_project, "logs", "--env", ENV, "--grep", marker)
    assert text.rc == 0 and text.stdout.splitlines()[0].split()[1:3] == [first[0]["name"], version]

    top = bake(example_project, "top", "--env", ENV, "--json")
    assert top.rc == 0, top.stderr
    rows = {row["instance"]: row for row in top.json["instances"]}
    assert sorted(rows) == sorted(i["name"] for i in first)
    for row in rows.values():
        assert (row["unit"] == "webapp.service" and row["state"] == "active/running" and row["health"] == "UP"
                and row["version"] == version)
        assert (row["pid"] > 1 and row["restarts"] == 0 and row["open_fds"] > 0 and row["memory_bytes"] > 1_000_000
                and row["uptime_seconds"] > 0)

    # Replace both instances (a config change): their lines now come from the journals exported before removal.
    out = bake(example_project, "config", "set", "--env", ENV, "LOG_LEVEL=debug", "--json", timeout=600)
    assert out.rc == 0 and out.json["replaced"] == 2, out.stderr
    second = {i["name"] for i in status(example_project, ENV)["instances"]}
    assert not second & {i["name"] for i in first}
    lines = marker_lines(example_project, marker)
    assert [(line["instance"], line["origin"]) for line in lines] == [(i["name"], "export") for i in first]
    exports = example_project / ".bakery" / "envs" / ENV / "journals"
    assert sorted(p.stem for p in exports.glob("*.jsonl")) == sorted(i["name"] for i in first)


def test_follow_prints_new_lines_and_ends_cleanly_on_ctrl_c(example_project, environments, webapp_image):  # noqa: F811
    environments(ENV, instances=1, min_healthy_percentage=0, max_healthy_percentage=100)
    assert deploy(example_project, webapp_image["version"], ENV).rc == 0
    address = status(example_project, ENV)["instances"][0]["address"]
    marker = f"follow-{uuid.uuid4().hex[:10]}"
    proc = subprocess.Popen([sys.executable, str(BAKE), "--project", str(example_project), "logs", "--env", ENV,
                             "--grep", marker, "--follow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=interruptible)
    try:
        time.sleep(2)  # it is following now
        app_log_line(address, marker)
        deadline = time.monotonic() + 20
        seen = ""
        while marker not in seen and time.monotonic() < deadline:
            seen += proc.stdout.readline()
        assert marker in seen
        # Ctrl-C reaches the terminal's whole process group: bake.py and the podman execs reading journals
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=60)  # at most one journal read still finishing (READ_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0 and "Traceback" not in proc.stderr.read()
