"""The ansible-playbook runs of bakes that died (kill -9), and everything those runs started.

ansible-runner starts ansible-playbook in a session of its own, mitogen's multiplexer and every task worker
`setsid` too, so none of them dies with bake.py: a run hung in a task (found still waiting an hour later) stays
forever. A run is recognised by the playbook bakery generated for it (`.bakery-<bake pid>-<run id>.yml`, in any
checkout, as dead bakes' containers are found machine-wide by label) and by its bake's pid being gone; then
every process in the sessions it leads is killed: its workers' `podman exec` and task shells included.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from bakery.processes import command_lines, kill, owned, pid_alive, session_id

log = logging.getLogger("bakery.leftovers")

GENERATED_PLAYBOOK = re.compile(r"^\.bakery-(\d+)-.*\.yml\Z")


def find() -> list[tuple[int, str]]:
    """(pid, playbook) of every ansible-playbook process of ours (or fork of one: workers, the multiplexer)
    running a generated playbook whose bake is gone."""
    found = []
    for pid, cmdline in command_lines():
        argv = [arg.decode(errors="replace") for arg in cmdline.split(b"\0") if arg]
        if not any(os.path.basename(arg) == "ansible-playbook" for arg in argv[:2]):
            continue
        for arg in argv[1:]:
            match = GENERATED_PLAYBOOK.match(Path(arg).name)
            if match and not pid_alive(int(match.group(1))) and owned(pid):
                found.append((pid, arg))
                break
    return found


def stop(runs: list[tuple[int, str]]) -> list[str]:
    """Kill the sessions these runs lead (only a process still running its playbook counts: a pid reused
    meanwhile is left alone, and a session it does not lead, such as a terminal's, is never touched).
    What was killed, one line each."""
    leaders: dict[int, str] = {}
    for pid, playbook in runs:
        try:
            still = playbook.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if still and session_id(pid) == pid:
            leaders[pid] = playbook
    members = [pid for pid, _ in command_lines() if session_id(pid) in leaders and owned(pid)]
    killed = []
    for pid in sorted(set(members), key=lambda p: p not in leaders):  # leaders first: no new children
        if kill(pid):
            what = f"ansible-playbook {leaders[pid]}" if pid in leaders else "started by a dead bake's run"
            log.info("killed pid %d of a dead bake: %s", pid, what)
            killed.append(f"pid {pid}: {what}")
    return killed
