"""Log lines of many instances as one stream: filtered alike, merged in time order, printed alike.

A source (the local journals read through podman, or CloudWatch Logs) turns what
it reads into LogLine objects; everything after that (the unit and text filters,
the merge, the output) is the same for every target, so `bake.py logs` reads the
same whichever target an environment runs on.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

# journald fields naming the unit an entry belongs to (journalctl -u matches the same ones)
UNIT_FIELDS = ("_SYSTEMD_UNIT", "UNIT", "OBJECT_SYSTEMD_UNIT")
# units whose name says nothing about who wrote the line: the identifier is shown instead
GENERIC_UNITS = ("init.scope", "session-", "user@")


@dataclass(frozen=True)
class LogQuery:
    since: datetime
    unit: str | None = None  # a systemd unit; "webapp" means webapp.service
    grep: str | None = None  # a case-sensitive substring of the message (as CloudWatch's quoted filter term)

    @property
    def since_us(self) -> int:
        return int(self.since.timestamp() * 1_000_000)

    @property
    def unit_name(self) -> str | None:
        if not self.unit:
            return None
        return self.unit if "." in self.unit else f"{self.unit}.service"


@dataclass(frozen=True)
class LogLine:
    timestamp_us: int  # microseconds since the epoch, UTC
    instance: str
    version: str
    source: str  # who wrote it: a unit (webapp.service) or a syslog identifier (systemd, kernel)
    message: str
    priority: int | None = None
    unit: str = ""
    # live (a running instance), export (a replaced one, kept for the retention window), cloudwatch
    origin: str = "live"

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_us / 1_000_000, UTC)

    def text(self) -> str:
        stamp = self.time.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.timestamp_us % 1_000_000 // 1000:03d}Z"
        return f"{stamp} {self.instance} {self.version} {self.source}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["time"] = self.time.isoformat().replace("+00:00", "Z")
        return data


def journal_message(value: Any) -> str:
    """journald gives MESSAGE as a string, or as a list of byte values when it is not valid UTF-8."""
    if isinstance(value, list):
        return bytes(v for v in value if isinstance(v, int) and 0 <= v < 256).decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def from_journal(entry: dict[str, Any], instance: str, version: str, origin: str = "live") -> LogLine | None:
    """One `journalctl -o json` entry as a LogLine (None for an entry without a timestamp)."""
    try:
        stamp = int(entry.get("__REALTIME_TIMESTAMP") or entry.get("_SOURCE_REALTIME_TIMESTAMP") or "")
    except (TypeError, ValueError):
        return None
    unit = str(entry.get("_SYSTEMD_UNIT") or "")
    if unit and not unit.startswith(GENERIC_UNITS):
        source = unit.removesuffix(".service")
    else:
        source = str(entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM") or unit or "?")
    try:
        priority = int(entry["PRIORITY"])
    except (KeyError, TypeError, ValueError):
        priority = None
    return LogLine(timestamp_us=stamp, instance=instance, version=version or "?", source=source,
                   message=journal_message(entry.get("MESSAGE")).rstrip("\n"), priority=priority, unit=unit,
                   origin=origin)


def journal_matches(entry: dict[str, Any], query: LogQuery) -> bool:
    """The query's unit filter on a raw journal entry, as journalctl -u applies it."""
    unit = query.unit_name
    return unit is None or any(entry.get(name) == unit for name in UNIT_FIELDS)


def line_matches(line: LogLine, query: LogQuery) -> bool:
    return line.timestamp_us >= query.since_us and (not query.grep or query.grep in line.message)


def merge(streams: Iterable[Iterable[LogLine]]) -> list[LogLine]:
    """Lines of many instances in time order (ties: by instance, then as each instance logged them)."""
    ordered = [sorted(stream, key=lambda line: line.timestamp_us) for stream in streams]
    return list(heapq.merge(*ordered, key=lambda line: (line.timestamp_us, line.instance)))


class LogSource(Protocol):
    def read(self, query: LogQuery) -> list[list[LogLine]]:
        """The lines matching the query, one list per instance (or per replaced instance's export)."""

    def poll(self, query: LogQuery) -> list[list[LogLine]]:
        """Lines that arrived since the last read or poll (for --follow)."""


def collect(source: LogSource, query: LogQuery) -> list[LogLine]:
    return merge(source.read(query))


def follow(source: LogSource, query: LogQuery, emit: Callable[[LogLine], None], interval: float = 1.0,
           sleep: Callable[[float], None] = time.sleep) -> None:
    """Print what is there, then keep printing what arrives, until interrupted (KeyboardInterrupt ends it)."""
    for line in collect(source, query):
        emit(line)
    while True:
        sleep(interval)
        for line in merge(source.poll(query)):
            emit(line)
