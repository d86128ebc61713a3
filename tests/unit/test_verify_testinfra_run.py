"""verify's testinfra run in the background ends in the same `testinfra` check as a run in the foreground did:
testinfra.log is pytest's stdout then stderr, a failing test fails the check with its name in the message, a pass
names the suites; the command loads the exec session plugin, importable without bakery; a cancelled verify kills
the run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bakery.verify import testinfra_run

pytestmark = pytest.mark.unit

SUITE = """
import sys

def test_ok(host):
    assert host.run("true").rc == 0

def test_says_something(host):
    print("to stderr", file=sys.stderr)
"""


def run(tmp_path: Path, text: str, timeout: float = 60) -> tuple[object, Path]:
    root = tmp_path / "project"
    (root / "tests").mkdir(parents=True)
    suite = root / "tests" / "test_image.py"
    suite.write_text(text, encoding="utf-8")
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\naddopts = -p no:cacheprovider\n", encoding="utf-8")
    report = tmp_path / "testinfra-online.xml"
    cmd = testinfra_run.command(ini, root, ("--hosts=local://",), report, "testinfra img:1", [suite])
    started = testinfra_run.start(cmd, testinfra_run.environment({"BAKERY_VERIFY_IMAGE": "img"}), root, [suite],
                                  tmp_path / "testinfra.log")
    return started.finish(timeout), report


def test_a_passing_run_names_the_summary_and_the_suites(tmp_path):
    check, report = run(tmp_path, SUITE)
    assert check.name == "testinfra" and check.passed, check.message
    assert check.output.startswith("2 passed") and check.output.endswith("(tests/test_image.py)")
    assert 'name="testinfra img:1"' in report.read_text()
    assert (tmp_path / "testinfra.log").read_text().rstrip().splitlines()[-1].startswith("2 passed")


def test_a_failing_test_fails_the_check_with_its_name(tmp_path):
    check, _ = run(tmp_path, SUITE + "\ndef test_broken(host):\n    assert host.run('false').rc == 0\n")
    assert not check.passed
    assert check.message.startswith("1 failed, 2 passed")
    assert "tests/test_image.py::test_broken[local]" in check.message
    assert "assert 1 == 0" in check.output


def test_the_log_is_stdout_then_stderr_and_a_usage_error_fails_with_it(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    missing = root / "tests" / "test_gone.py"
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    cmd = testinfra_run.command(tmp_path / "pytest.ini", root, ("--hosts=local://",), tmp_path / "r.xml", "s",
                                [missing])
    log_path = tmp_path / "testinfra.log"
    check = testinfra_run.start(cmd, testinfra_run.environment({}), root, [missing], log_path).finish()
    log = (tmp_path / "testinfra.log").read_text()
    assert not check.passed and check.message.startswith("no tests ran")  # the last line pytest printed
    assert log.index("no tests ran") < log.index("ERROR: file or directory not found") and "test_gone.py" in log


def test_the_run_loads_the_exec_session_plugin_from_its_own_directory(tmp_path):
    env = testinfra_run.environment({})
    assert env["PYTHONPATH"].split(":")[0] == str(testinfra_run.PLUGIN_DIR)
    assert (testinfra_run.PLUGIN_DIR / f"{testinfra_run.PLUGIN}.py").is_file()
    cmd = testinfra_run.command(tmp_path / "i", tmp_path, (), tmp_path / "r.xml", "s", [])
    assert testinfra_run.PLUGIN in [cmd[n + 1] for n, arg in enumerate(cmd) if arg == "-p"]
    check, _ = run(tmp_path, "import testinfra.backend\n\ndef test_loaded():\n"
                   "    assert testinfra.backend.BACKENDS['podman'].startswith('bakery_exec_session.')\n")
    assert check.passed, check.message + check.output


def test_a_callers_pytest_options_cannot_spread_the_suites_over_workers(tmp_path, monkeypatch):
    """The suites share one instance: an `-n` in PYTEST_ADDOPTS (pytest-xdist is installed) must not apply."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-n 2")
    check, _ = run(tmp_path, "import os\n\ndef test_one_process():\n"
                   "    assert 'PYTEST_XDIST_WORKER' not in os.environ\n")
    assert check.passed, check.message + check.output


def test_stop_kills_a_run_still_going(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    started = testinfra_run.start(["sleep", "60"], testinfra_run.environment({}), root, [], tmp_path / "log")
    t = time.monotonic()
    started.stop()
    assert started.proc.returncode is not None and time.monotonic() - t < 5


def test_its_seconds_end_when_the_run_ended_not_when_verify_asked(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    started = testinfra_run.start(["true"], testinfra_run.environment({}), root, [], tmp_path / "testinfra.log")
    time.sleep(2)  # the secret scan, beside it
    assert started.finish().seconds < 1.5
