"""The files of one VM in its run directory: what a VM writes there and what leftover cleanup reads back.

`owner` names the bakery process that runs the VM (pid and kernel start time, so a reused pid is not taken
for it); while that process lives, nobody else touches the VM. Scratch files (the disk overlay, the firmware
variables, the QMP socket, the pid file) go when the VM stops; the console log and qemu's own output stay.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bakery.files import write_atomically
from bakery.processes import pid_alive


@dataclass(frozen=True)
class VmFiles:
    root: Path

    @property
    def console(self) -> Path:
        return self.root / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.root / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "qemu.pid"

    @property
    def owner(self) -> Path:
        return self.root / "owner"

    @property
    def overlay(self) -> Path:
        return self.root / "overlay.qcow2"

    @property
    def firmware_vars(self) -> Path:
        return self.root / "OVMF_VARS.fd"

    @property
    def qmp(self) -> Path:
        return self.root / "qmp.sock"

    def scratch(self) -> list[Path]:
        return [self.overlay, self.firmware_vars, self.qmp, self.pidfile, self.owner]

    def remove_scratch(self) -> list[Path]:
        """Remove what a stopped VM no longer needs; returns what was there."""
        removed = []
        for path in self.scratch():
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
        return removed


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name in (...) may hold spaces
    return fields[19] if len(fields) > 19 else None


def write_owner(files: VmFiles) -> None:
    pid = os.getpid()
    write_atomically(files.owner, f"{pid} {start_time(pid)}\n")


def owner_alive(files: VmFiles) -> bool:
    """True while the bakery process that wrote `owner` still runs; a missing or unreadable file means no."""
    try:
        pid_text, _, started = files.owner.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    return pid_alive(pid) and start_time(pid) == started


def recorded_pid(files: VmFiles) -> int | None:
    """The pid qemu wrote to its -pidfile, None when there is none."""
    try:
        return int(files.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
