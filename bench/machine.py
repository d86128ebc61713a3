"""What the machine was doing around a benchmark: load, other podman containers and VMs, cores and memory.

The bench runs on a shared machine; a ratio measured while another session's VM boots means something
else than one measured on idle cores, so the report says what ran before and after (the bench's own
containers, labelled io.bakery.bench or made from the bench-webapp image, are not counted).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from common import BENCH_LABEL, IMAGE


@dataclass
class Machine:
    load: tuple[float, float, float]
    containers: int  # running podman containers the bench did not start
    vms: int  # qemu-system processes (the bench starts none)
    cpus: int
    affinity: int
    mem_total_mb: int
    mem_available_mb: int

    def describe(self) -> str:
        return (f"load average {self.load[0]:.2f} / {self.load[1]:.2f} / {self.load[2]:.2f} (1/5/15 min), "
                f"{self.containers} other running podman container(s), {self.vms} qemu process(es), "
                f"memory available {self.mem_available_mb:,} of {self.mem_total_mb:,} MB")


def other_containers() -> int:
    proc = subprocess.run(["podman", "ps", "--format", "json"], capture_output=True, text=True, check=False)
    try:
        found = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return -1
    ours = 0
    for container in found:
        labels = container.get("Labels") or {}
        names = " ".join(container.get("Names") or [])
        if BENCH_LABEL in labels or IMAGE in names or IMAGE in str(container.get("Image", "")):
            ours += 1
    return len(found) - ours


def qemu_processes() -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += Path(f"/proc/{entry.name}/comm").read_text().startswith("qemu-system")
            except OSError:
                continue
    return count


def _meminfo() -> dict[str, int]:
    found = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        found[key] = int(rest.split()[0]) // 1024 if rest.split() else 0
    return found


def snapshot() -> Machine:
    mem = _meminfo()
    return Machine(os.getloadavg(), other_containers(), qemu_processes(), os.cpu_count() or 0,
                   len(os.sched_getaffinity(0)), mem.get("MemTotal", 0), mem.get("MemAvailable", 0))


def header_lines(before: Machine, after: Machine) -> list[str]:
    return [
        f"Machine: {before.cpus} CPUs ({before.affinity} usable by the bench), {before.mem_total_mb:,} MB memory.",
        f"Before the bench: {before.describe()}.",
        f"After the bench: {after.describe()}.",
    ]
