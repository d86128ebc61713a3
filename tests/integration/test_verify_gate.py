"""The faster gate keeps today's report: the testinfra suite runs in the background over one exec session per
instance while the offline boot, the secret scan and the package report go on, and the report still lists the
checks in the same order, names a failing test in the failing check, and keeps testinfra.log and the tests' ids."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import bake
from tests.integration.conftest import containers

pytestmark = pytest.mark.integration

SUITE = '''
def test_commands_answer_as_podman_exec_does(host):
    out = host.run("echo out; echo err >&2; exit 3")
    assert (out.rc, out.stdout, out.stderr) == (3, "out\\n", "err\\n")
    assert host.run("cat").stdout == ""  # no stdin
    assert host.file("/etc/os-release").contains("bookworm")


def test_commands_run_over_one_exec_session(host):
    parent = host.run("tr '\\\\0' ' ' < /proc/$PPID/cmdline").stdout
    assert parent.startswith("python3 -S -c") and "struct" in parent, parent


def test_the_gate_must_name_me(host):
    assert host.run("false").rc == 0, "planted failure"
'''


def test_a_failing_test_fails_the_gate_and_the_report_keeps_its_order(project):
    assert bake(project, "build", "sample").rc == 0
    suite = project / "tests" / "images" / "test_sample.py"
    suite.parent.mkdir(parents=True)
    suite.write_text(SUITE, encoding="utf-8")
    out = bake(project, "verify", "sample", "--json")
    assert out.rc == 1, out.stderr
    checks = out.json["checks"]
    assert [c["name"] for c in checks] == ["boot", "testinfra", "offline-boot", "secret-scan", "apt-leftovers",
                                               "package-report"]
    failed = {c["name"]: c for c in checks if not c["passed"]}
    assert list(failed) == ["testinfra"]
    assert failed["testinfra"]["message"].startswith("1 failed, 2 passed"), failed["testinfra"]["message"]
    assert "tests/images/test_sample.py::test_the_gate_must_name_me[podman://" in failed["testinfra"]["message"]
    assert "testinfra: " in out.json["summary"] and "test_the_gate_must_name_me" in out.stderr

    run_dir = Path(out.json["reports"]["junit"]).parent
    assert "1 failed, 2 passed" in (run_dir / "testinfra.log").read_text().splitlines()[-1]
    junit = ET.parse(run_dir / "junit.xml").getroot()
    suites = junit.findall("testsuite")
    assert [c.get("name") for c in suites[0].findall("testcase")] == [c["name"] for c in checks]
    online = f"podman://bakery-verify-{out.json['run_id'].rsplit('-', 1)[-1]}-online"
    assert [c.get("name") for c in suites[1].findall("testcase")] == [
        f"test_commands_answer_as_podman_exec_does[{online}]", f"test_commands_run_over_one_exec_session[{online}]",
        f"test_the_gate_must_name_me[{online}]"]
    assert json.loads((run_dir / "result.json").read_text())["checks"] == checks
    assert containers(f"io.bakery.verify={out.json['run_id']}") == []  # this run left no instance
