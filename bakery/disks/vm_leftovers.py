"""VMs of bakery runs that died without stopping them: kill their qemu, remove their overlay and scratch files.

qemu normally dies with the bakery process that started it (tied_process); this catches the rest (a qemu of an
older bakery, a PR_SET_PDEATHSIG that could not fire) and the files a kill -9 leaves. A VM directory is any
`<runs root>/<run id>/` or `<runs root>/<run id>/<name>/` holding an `owner` or a `qemu.pid` file. While its
owner (the bakery process that started the VM) runs, nothing there is touched. Otherwise the pid in qemu.pid
is killed only when /proc shows that it is still a qemu-system process whose command line names that VM
directory: a pid reused by an unrelated process is never killed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from bakery.disks.vm_files import VmFiles, owner_alive, recorded_pid
from bakery.processes import kill, pid_alive

log = logging.getLogger("bakery.disks.vm_leftovers")


@dataclass
class VmLeftovers:
    killed: list[int] = field(default_factory=list)  # qemu pids
    removed: list[Path] = field(default_factory=list)  # overlays and other scratch files

    def empty(self) -> bool:
        return not (self.killed or self.removed)


def vm_dirs(runs_root: Path) -> list[Path]:
    found: set[Path] = set()
    for pattern in ("*/owner", "*/qemu.pid", "*/*/owner", "*/*/qemu.pid"):
        found.update(path.parent for path in runs_root.glob(pattern))
    return sorted(found)


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def is_vm_qemu(pid: int, vm_dir: Path) -> bool:
    """True when `pid` is a live qemu-system process started for `vm_dir` (its path is in the command line)."""
    argv = command_line(pid)
    if not argv or not os.path.basename(argv[0]).startswith("qemu-system") or not pid_alive(pid):
        return False
    root = str(vm_dir.absolute())
    names = (root + os.sep, root.replace(",", ",,") + os.sep)
    return any(name in arg for arg in argv[1:] for name in names)


def clean(runs_root: Path) -> VmLeftovers:
    """Kill the qemu of every VM whose bakery is gone and remove that VM's scratch files (its logs stay)."""
    found = VmLeftovers()
    if not runs_root.is_dir():
        return found
    for vm_dir in vm_dirs(runs_root):
        files = VmFiles(vm_dir.absolute())
        if owner_alive(files):
            continue
        pid = recorded_pid(files)
        if pid is not None and is_vm_qemu(pid, files.root):
            log.info("killing leftover VM %s (qemu pid %d)", vm_dir, pid)
            kill(pid)
            found.killed.append(pid)
        found.removed.extend(files.remove_scratch())
    return found
