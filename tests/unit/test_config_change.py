"""`config set` is one unit with its rollout: runtime.yml changes only when the rollout starts, and comes back when
the change does not roll out: when a check fails, on SIGTERM, and after kill -9 (the next command settles the
journal the dead process left).

No real podman: a `podman` first on PATH answers like one environment of one running instance, and blocks (as a
long refresh would) once the config change's release is recorded, so the test can kill bake.py exactly inside
the rollout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bakery.cli import main
from tests.conftest import BAKE, bake
from tests.unit.test_cli_contract import VERSION, fix_catalog_version, make_project, use_project

pytestmark = pytest.mark.unit

FAKE_PODMAN = """#!{python}
import json, os, pathlib, sys, time
args = sys.argv[1:]
journal = pathlib.Path(os.environ["FAKE_PODMAN_JOURNAL"])
if journal.is_file() and json.loads(journal.read_text()).get("release_id") is not None:
    pathlib.Path(os.environ["FAKE_PODMAN_BLOCKED"]).write_text(str(os.getpid()))
    time.sleep(300)
if args[:1] == ["info"]:
    print("crun")
elif args[:1] == ["ps"]:
    print(json.dumps([{{"Names": ["bakery-qa-aaaaaa"], "State": "running", "Created": 1, "Ports": [],
                       "Labels": {{"io.bakery.version": "{version}", "io.bakery.config": "sha256:old"}}}}]))
elif args[:2] == ["image", "exists"]:
    sys.exit(int(os.environ.get("FAKE_PODMAN_IMAGE_MISSING", "0")))
else:
    sys.exit(1)
"""


@pytest.fixture
def qa(tmp_path: Path, monkeypatch) -> Path:
    """A used project whose qa environment runs one instance of VERSION, as the fake podman says."""
    root = make_project(tmp_path / "p")
    use_project(root)
    fix_catalog_version(root)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "podman"
    fake.write_text(FAKE_PODMAN.format(python=sys.executable, version=VERSION))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PODMAN_JOURNAL", str(journal_path(root / ".bakery", "qa")))
    monkeypatch.setenv("FAKE_PODMAN_BLOCKED", str(tmp_path / "blocked"))
    monkeypatch.delenv("BAKERY_PROJECT", raising=False)
    return root


def journal_path(state_dir: Path, env: str) -> Path:
    """Where config set keeps its journal (bakery.fleets.config_journal)."""
    return state_dir / "envs" / env / "config-change.json"


def runtime_file(root: Path) -> Path:
    return root / "inventories" / "qa" / "group_vars" / "all" / "runtime.yml"


def start_config_set(root: Path, blocked: Path) -> subprocess.Popen:
    """bake.py config set in its own session (so it and its podman can be killed together), once it blocks inside
    the rollout."""
    proc = subprocess.Popen([sys.executable, str(BAKE), "--project", str(root), "config", "set", "--env", "qa",
                             "LOG_LEVEL=debug"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not blocked.exists():
        if proc.poll() is not None:
            raise AssertionError(f"config set ended (exit {proc.returncode}) before its rollout: "
                                 f"{proc.communicate()[1]}")
        assert time.monotonic() < deadline, "config set never reached its rollout"
        time.sleep(0.05)
    return proc


def test_a_change_that_cannot_start_leaves_runtime_yml_untouched(qa, monkeypatch, capsys):
    old = runtime_file(qa).read_bytes()
    monkeypatch.setenv("FAKE_PODMAN_IMAGE_MISSING", "1")  # the image to relaunch is gone: the rollout cannot start
    rc = main(["--project", str(qa), "config", "set", "--env", "qa", "LOG_LEVEL=debug"])
    err = capsys.readouterr().err
    assert rc == 2 and "no longer in podman's storage" in err
    assert runtime_file(qa).read_bytes() == old
    assert not journal_path(qa / ".bakery", "qa").exists()


def test_kill_9_inside_the_rollout_then_the_next_command_restores_runtime_yml(qa, tmp_path):
    path = runtime_file(qa)
    old = path.read_bytes()
    proc = start_config_set(qa, tmp_path / "blocked")
    assert path.read_bytes() != old  # the change was written: the rollout had started
    journal = json.loads(journal_path(qa / ".bakery", "qa").read_text())
    assert journal["pid"] == proc.pid and journal["release_id"] is not None
    os.killpg(proc.pid, signal.SIGKILL)  # bake.py and its podman, together
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()

    outcome = bake(qa, "config", "get", "--env", "qa", "LOG_LEVEL", timeout=60)
    assert outcome.rc == 0 and outcome.stdout == "info\n"
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "qa: restored" in lines[0] and f"pid {proc.pid}" in lines[0], outcome.stderr
    assert path.read_bytes() == old  # byte for byte
    assert not journal_path(qa / ".bakery", "qa").exists()
    again = bake(qa, "config", "get", "--env", "qa", timeout=60)
    assert again.rc == 0 and again.stderr == ""  # settled once


def test_sigterm_inside_the_rollout_restores_runtime_yml_at_once(qa, tmp_path):
    path = runtime_file(qa)
    old = path.read_bytes()
    proc = start_config_set(qa, tmp_path / "blocked")
    os.kill(proc.pid, signal.SIGTERM)  # bake.py only, as `kill PID` would
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert path.read_bytes() == old
    assert not journal_path(qa / ".bakery", "qa").exists()


def test_a_dead_change_whose_release_succeeded_is_kept(qa):
    """The journal follows the release: when the change did roll out before its process died, the file stays."""
    from bakery.catalog import open_catalog
    from bakery.config import Project
    from bakery.environments import load_environment
    from bakery.fleets.config_journal import ConfigChange, settle_locked

    path = runtime_file(qa)
    old = path.read_bytes()
    env = load_environment(Project(qa), "qa")
    change = ConfigChange(qa / ".bakery", env)
    change.begin(old, b"new")
    path.write_bytes(b"---\nbakery_runtime:\n  LOG_LEVEL: debug\n")
    catalog = open_catalog(qa / ".bakery")
    release = catalog.start_release("qa", "webapp", VERSION, previous_version=VERSION, kind="config", user="t",
                                    forced=False, run_id="r", pid=1, config_digest="sha256:new")
    change.record_release(release, "r")
    catalog.finish_release(release, "succeeded")
    assert "stays" in settle_locked(qa / ".bakery", catalog, env)
    catalog.close()
    assert b"debug" in path.read_bytes() and not change.path.exists()


def test_deploy_rolls_out_the_runtime_yml_that_settling_the_dead_change_left(qa, monkeypatch, tmp_path):
    """deploy loads the environment before it holds the lock; settling a dead config set inside the lock (here:
    its release never started a refresh, so the old bytes come back) changes runtime.yml, and the deploy must roll
    out that file, not the config it loaded before (a concurrent status took the lock when deploy looked)."""
    from bakery.catalog import open_catalog
    from bakery.config import Project
    from bakery.environments import load_environment
    from bakery.errors import BakeryError
    from bakery.fleets.config_journal import ConfigChange
    from bakery.fleets.haproxy import HAProxy
    from bakery.fleets.operations import deploy
    from bakery.fleets.rollout import Session
    from bakery.progress import Progress

    monkeypatch.setenv("FAKE_PODMAN_JOURNAL", str(tmp_path / "no-journal"))  # the fake podman never blocks here
    path = runtime_file(qa)
    old = path.read_bytes()
    project = Project(qa)
    before = load_environment(project, "qa")
    new = old.replace(b"LOG_LEVEL: info", b"LOG_LEVEL: debug")
    ConfigChange(qa / ".bakery", before).begin(old, new)
    path.write_bytes(new)
    catalog = open_catalog(qa / ".bakery")
    dead = catalog.start_release("qa", "webapp", VERSION, previous_version=VERSION, kind="config", user="t",
                                 forced=False, run_id="r", pid=999999, config_digest="sha256:new")
    ConfigChange(qa / ".bakery", before).record_release(dead, "r")

    env = load_environment(project, "qa")  # as the deploy saw it: the dead change's config
    assert env.runtime["LOG_LEVEL"] == "debug"
    try:
        deploy(Session(project, catalog, Progress()), env, "webapp", VERSION)
    except BakeryError:
        pass  # the fake podman cannot launch anything; the release is recorded before that
    finally:
        HAProxy(env, qa / ".bakery" / "envs" / "qa").stop()  # the deploy started the environment's real HAProxy
    assert path.read_bytes() == old  # the dead change was settled: the old bytes are back
    release = catalog.releases("qa", limit=1)[0]
    catalog.close()
    assert release["kind"] == "deploy"
    assert release["details"]["runtime"]["LOG_LEVEL"] == "info", release["details"]["runtime"]
