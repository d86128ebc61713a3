"""gc stops the ansible-playbook runs of dead bakes with all they started, and no other process.

A SIGKILLed bake's run usually ends by itself (its pty hangs up), but one hung in a task was found still running an
hour later with mitogen's multiplexer: nothing else would ever end it. Real processes whose command lines read as
ansible-runner's `ansible-playbook -i INVENTORY PLAYBOOK`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bakery.gc import dead_runs
from bakery.processes import pid_alive

pytestmark = pytest.mark.unit

# a run that starts a child of its own, as a task worker starts `podman exec`, and prints the child's pid
RUN = "import subprocess, sys, time; c = subprocess.Popen(['sleep', '60']); print(c.pid, flush=True); time.sleep(60)"


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def playbook_run(playbook: Path, session_leader: bool = True) -> tuple[subprocess.Popen, int]:
    """The run, and the pid of the child it started."""
    proc = subprocess.Popen(["/venv/bin/ansible-playbook", "-c", RUN, "-i", "/runs/x/inventory", str(playbook)],
                            executable=sys.executable, stdout=subprocess.PIPE, text=True,
                            start_new_session=session_leader)
    return proc, int(proc.stdout.readline())


def found_here(tmp_path: Path) -> list[tuple[int, str]]:
    """What find() sees of this test's runs (a real dead bake elsewhere on the machine is not this test's)."""
    return [run for run in dead_runs.find() if run[1].startswith(str(tmp_path))]


def gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


def test_a_dead_bakes_run_is_killed_with_its_children_in_any_checkout_and_nothing_else(tmp_path):
    dead = f".bakery-{dead_pid()}-20261204T000000Z-build-abc.yml"
    orphan, orphan_child = playbook_run(tmp_path / "project" / "playbooks" / dead)
    elsewhere, elsewhere_child = playbook_run(tmp_path / "deleted-checkout" / "playbooks" / dead)
    live, live_child = playbook_run(tmp_path / "project" / "playbooks" / f".bakery-{os.getpid()}-run.yml")
    user, user_child = playbook_run(tmp_path / "project" / "playbooks" / "webapp.yml")
    try:
        found = found_here(tmp_path)
        assert sorted(found) == sorted([(orphan.pid, str(tmp_path / "project" / "playbooks" / dead)),
                                        (elsewhere.pid, str(tmp_path / "deleted-checkout" / "playbooks" / dead))])
        killed = dead_runs.stop(found)
        assert orphan.wait(timeout=10) == -9 and elsewhere.wait(timeout=10) == -9
        assert gone(orphan_child) and gone(elsewhere_child)  # a hung task's `podman exec` goes too
        assert len(killed) == 4 and sum("ansible-playbook" in line for line in killed) == 2, killed
        assert all(proc.poll() is None and pid_alive(child) for proc, child in ((live, live_child), (user, user_child)))
    finally:
        for proc, child in ((orphan, orphan_child), (elsewhere, elsewhere_child), (live, live_child),
                            (user, user_child)):
            proc.kill()
            proc.wait()
            subprocess.run(["kill", "-9", str(child)], stderr=subprocess.DEVNULL, check=False)


def test_a_run_that_leads_no_session_of_its_own_is_not_a_reason_to_kill_the_session_it_is_in(tmp_path):
    """Killing the session of a run started from a shell would kill that shell (here: pytest)."""
    playbook = tmp_path / f".bakery-{dead_pid()}-run.yml"
    run, child = playbook_run(playbook, session_leader=False)
    try:
        found = found_here(tmp_path)
        assert found == [(run.pid, str(playbook))]
        assert dead_runs.stop(found) == []
        assert run.poll() is None and pid_alive(child)
    finally:
        run.kill()
        run.wait()
        subprocess.run(["kill", "-9", str(child)], stderr=subprocess.DEVNULL, check=False)


def test_a_pid_reused_by_another_process_meanwhile_is_not_killed(tmp_path):
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        assert dead_runs.stop([(unrelated.pid, str(tmp_path / f".bakery-{dead_pid()}-run.yml"))]) == []
        assert pid_alive(unrelated.pid)
    finally:
        unrelated.kill()
        unrelated.wait()
