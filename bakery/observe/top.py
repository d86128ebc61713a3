"""`bake.py top`: per instance, the watched process's CPU, memory, restarts, uptime, open files and health.

Locally each instance is asked once, in parallel: a short Python program run with
`podman exec` reads systemd's view of the unit (MainPID, NRestarts, when it became
active) and /proc for the process (CPU over a short sample, resident memory, open
file descriptors); `podman stats` adds the whole instance's CPU and memory, and the
fleet's status the load balancer's health. On AWS the same rows come from the
procstat metrics of the CloudWatch agent (bakery.observe.cloudwatch).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from bakery import podman

log = logging.getLogger("bakery.observe.top")

SAMPLE_SECONDS = 0.5
DEFAULT_UNIT = "webapp"

# Runs inside the instance (python3 is in every image: the base has it). Prints one JSON object.
PROBE = r"""
import json, os, subprocess, sys, time
unit, sample = sys.argv[1], float(sys.argv[2])
out = subprocess.run(["systemctl", "show", unit, "-p",
                      "MainPID,NRestarts,ActiveState,SubState,ActiveEnterTimestampMonotonic,MemoryCurrent"],
                     capture_output=True, text=True).stdout
props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
pid = int(props.get("MainPID") or 0)
result = {"unit": unit, "pid": pid or None, "state": props.get("ActiveState", "?") + "/" + props.get("SubState", "?"),
          "restarts": int(props["NRestarts"]) if props.get("NRestarts", "").isdigit() else None}
def ticks():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
try:
    if pid:
        entered = int(props.get("ActiveEnterTimestampMonotonic") or 0)
        with open("/proc/uptime") as handle:
            now_us = float(handle.read().split()[0]) * 1e6
        result["uptime_seconds"] = round((now_us - entered) / 1e6, 1) if entered else None
        result["open_fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        memory = props.get("MemoryCurrent", "")
        if memory.isdigit():
            result["memory_bytes"] = int(memory)
        else:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    result["memory_bytes"] = int(line.split()[1]) * 1024
        before, start = ticks(), time.monotonic()
        time.sleep(sample)
        used = (ticks() - before) / os.sysconf("SC_CLK_TCK")
        result["cpu_percent"] = round(100 * used / (time.monotonic() - start), 1)
except OSError as exc:
    result["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(result))
"""


@dataclass
class ProcessRow:
    instance: str
    version: str
    health: str  # the load balancer's view (local: HAProxy UP/DOWN/DRAIN; AWS: the group's Healthy/Unhealthy)
    in_service: bool
    unit: str
    pid: int | None = None
    state: str = "?"  # the unit's ActiveState/SubState (AWS: the instance's lifecycle state)
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    restarts: int | None = None
    uptime_seconds: float | None = None
    open_fds: int | None = None
    instance_cpu_percent: float | None = None
    instance_memory_bytes: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SIZE_RE = re.compile(r"^\s*([\d.]+)\s*([kKMGT]?i?B)?\s*\Z")
SIZE_UNITS = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
              "KiB": 1024, "kiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


def parse_size(text: str) -> int | None:
    """podman's '41.99MB' (decimal units) or '40MiB' as bytes."""
    match = SIZE_RE.match(text or "")
    if not match:
        return None
    return int(float(match.group(1)) * SIZE_UNITS.get(match.group(2) or "B", 1))


def parse_percent(text: str) -> float | None:
    try:
        return float(str(text).strip().rstrip("%"))
    except ValueError:
        return None


def container_stats(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`podman stats --no-stream` for these instances: name -> {cpu_percent, memory_bytes}."""
    names = list(names)
    if not names:
        return {}
    proc = podman.run("stats", "--no-stream", "--format", "json", *names, check=False, timeout=60)
    try:
        rows = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    except ValueError:
        rows = []
    return {row.get("name"): {"cpu_percent": parse_percent(row.get("cpu_percent", "")),
                              "memory_bytes": parse_size(str(row.get("mem_usage", "")).split("/")[0])} for row in rows}


def probe_process(instance: str, unit: str, sample: float = SAMPLE_SECONDS) -> dict[str, Any]:
    """Ask the instance about its unit's main process (PROBE above)."""
    proc = podman.run("exec", instance, "python3", "-c", PROBE, unit, str(sample), check=False, timeout=60)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout or "no answer").strip().splitlines()[-1][:200]}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unreadable answer: {proc.stdout.strip()[:200]}"}


def local_top(status, unit: str) -> list[ProcessRow]:
    """One row per instance of a local fleet's status (bakery.fleets.base.FleetStatus)."""
    unit_name = unit if "." in unit else f"{unit}.service"
    rows = [ProcessRow(instance=i.name, version=i.version or "?", health=i.health, in_service=i.in_service,
                       unit=unit_name, state=i.state)
            for i in status.instances]
    running = [r for r in rows if r.state == "running"]
    if not running:
        return rows
    with ThreadPoolExecutor(max_workers=min(8, len(running) + 1)) as pool:
        pending_stats = pool.submit(container_stats, [r.instance for r in running])
        probes = list(pool.map(lambda row: probe_process(row.instance, unit_name), running))
        stats = pending_stats.result()
    for row, probe in zip(running, probes, strict=True):
        for key in ("pid", "state", "cpu_percent", "memory_bytes", "restarts", "uptime_seconds", "open_fds", "error"):
            if key in probe:
                setattr(row, key, probe[key])
        row.instance_cpu_percent = (stats.get(row.instance) or {}).get("cpu_percent")
        row.instance_memory_bytes = (stats.get(row.instance) or {}).get("memory_bytes")
    return rows


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def human_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    seconds = int(value)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def table(rows: list[ProcessRow]) -> str:
    """The rows as a fixed-width table (what `bake.py top` prints)."""
    header = ("INSTANCE", "VERSION", "HEALTH", "UNIT", "PID", "STATE", "CPU%", "MEM", "RESTARTS", "UPTIME", "FDS")
    body = []
    for r in rows:
        body.append((r.instance, r.version, r.health + ("" if r.in_service else "*"), r.unit, str(r.pid or "-"),
                     r.state, "-" if r.cpu_percent is None else f"{r.cpu_percent:.1f}", human_bytes(r.memory_bytes),
                     "-" if r.restarts is None else str(r.restarts), human_seconds(r.uptime_seconds),
                     "-" if r.open_fds is None else str(r.open_fds)))
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
             for line in [header, *body]]
    lines += [f"  {r.instance}: {r.error}" for r in rows if r.error]
    return "\n".join(lines)
