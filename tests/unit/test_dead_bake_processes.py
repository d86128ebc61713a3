"""gc kills the ansible-playbook processes still running a dead bake's generated playbook, and no other process.

A SIGKILLed bake's run usually ends by itself (its pty hangs up), but one hung in a task was found still running an
hour later with mitogen's multiplexer: nothing else would ever end it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bakery.gc import leftovers
from bakery.processes import pid_alive

pytestmark = pytest.mark.unit


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def playbook_run(playbook: Path) -> subprocess.Popen:
    """A process whose command line reads as ansible-runner's `ansible-playbook -i INVENTORY PLAYBOOK`."""
    return subprocess.Popen(["/venv/bin/ansible-playbook", "-c", "import time; time.sleep(60)", "-i",
                             "/runs/x/inventory", str(playbook)], executable=sys.executable)


def test_only_runs_of_a_dead_bakes_playbook_in_this_project_are_found_and_killed(tmp_path):
    playbooks, elsewhere = tmp_path / "project" / "playbooks", tmp_path / "other" / "playbooks"
    dead = playbooks / f".bakery-{dead_pid()}-20261204T000000Z-build-abc.yml"
    orphan = playbook_run(dead)
    live = playbook_run(playbooks / f".bakery-{os.getpid()}-20261204T000000Z-build-def.yml")
    other_project = playbook_run(elsewhere / dead.name)
    user_playbook = playbook_run(playbooks / "webapp.yml")
    others = [live, other_project, user_playbook]
    try:
        found = leftovers.dead_bake_playbook_runs(playbooks)
        assert found == [(orphan.pid, str(dead))]
        leftovers.remove(leftovers.Leftovers(process_ids=found), catalog=None)  # type: ignore[arg-type]
        assert orphan.wait(timeout=10) == -9
        assert all(proc.poll() is None for proc in others)
    finally:
        for proc in [orphan, *others]:
            proc.kill()
            proc.wait()


def test_a_pid_reused_by_another_process_meanwhile_is_not_killed(tmp_path):
    playbook = tmp_path / "playbooks" / f".bakery-{dead_pid()}-run.yml"
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        leftovers.remove(leftovers.Leftovers(process_ids=[(unrelated.pid, str(playbook))]), catalog=None)  # type: ignore[arg-type]
        assert pid_alive(unrelated.pid)
    finally:
        unrelated.kill()
        unrelated.wait()
