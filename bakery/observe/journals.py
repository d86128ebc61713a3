"""The local target's journals: read live through podman, and kept after an instance is removed.

Every local instance runs journald (persistent, size-capped by role base). A
running instance is read with `podman exec NAME journalctl -o json`. Before the
fleet removes an instance (a replacement, a rollback, `down`, a failed launch) it
calls export_journal: the instance's journal goes to
.bakery/envs/<env>/journals/<instance>.jsonl (a header line naming the instance
and its version, then journalctl's JSON lines), so `bake.py logs` still shows a
replaced instance's lines for RETENTION seconds. Exports older than that are
pruned whenever a new one is written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bakery import podman
from bakery.errors import OperationError
from bakery.files import write_atomically
from bakery.observe.logs import LogLine, LogQuery, from_journal, journal_matches, line_matches

log = logging.getLogger("bakery.observe.journals")

RETENTION = int(os.environ.get("BAKERY_JOURNAL_RETENTION_HOURS", "24")) * 3600  # seconds an export is kept
EXPORT_TIMEOUT = 30  # seconds journalctl may take inside an instance before the export is given up
READ_TIMEOUT = 60
HEADER_KEY = "bakery_journal_export"


@dataclass(frozen=True)
class Instance:
    name: str
    version: str
    running: bool


def journalctl_args(query: LogQuery, cursor: str | None = None) -> list[str]:
    args = ["journalctl", "-o", "json", "--no-pager"]
    args += ["--after-cursor", cursor] if cursor else ["--since", f"@{int(query.since.timestamp())}"]
    if query.unit_name:
        args += ["-u", query.unit_name]
    return args


def parse_journal(text: str, instance: str, version: str, query: LogQuery,
                  origin: str) -> tuple[list[LogLine], str | None]:
    """journalctl's JSON lines -> the matching LogLines, and the last cursor seen (where the next poll starts)."""
    lines, cursor = [], None
    for raw in text.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(entry, dict) or HEADER_KEY in entry:
            continue
        cursor = entry.get("__CURSOR") or cursor
        line = from_journal(entry, instance, version, origin) if journal_matches(entry, query) else None
        if line is not None and line_matches(line, query):
            lines.append(line)
    return lines, cursor


def export_journal(directory: Path, name: str, version: str, now: float | None = None) -> Path:
    """Copy a running instance's journal (the last RETENTION seconds) to directory/<name>.jsonl; prune old exports."""
    now = time.time() if now is None else now
    proc = podman.run("exec", name, "journalctl", "-o", "json", "--no-pager", "--since", f"@{int(now - RETENTION)}",
                      timeout=EXPORT_TIMEOUT)
    header = json.dumps({HEADER_KEY: 1, "instance": name, "version": version, "exported": now})
    path = directory / f"{name}.jsonl"
    write_atomically(path, header + "\n" + proc.stdout, mode=0o600)
    prune_exports(directory, now)
    return path


def prune_exports(directory: Path, now: float | None = None) -> list[Path]:
    now = time.time() if now is None else now
    removed = []
    for path in directory.glob("*.jsonl"):
        try:
            if now - path.stat().st_mtime > RETENTION:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue
    return removed


def read_export(path: Path, query: LogQuery) -> tuple[str, list[LogLine]]:
    """An export's instance name and its matching lines."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
        rest = handle.read()
    try:
        header = json.loads(first)
    except ValueError:
        header = {}
    name = str(header.get("instance") or path.stem)
    lines, _ = parse_journal(rest, name, str(header.get("version") or "?"), query, origin="export")
    return name, lines


class LocalJournals:
    """LogSource over the local fleet: running instances through podman, removed ones from their exports."""

    def __init__(self, instances: Callable[[], list[Instance]], exports: Path):
        self.instances = instances
        self.exports = exports
        self.cursors: dict[str, str | None] = {}  # instance -> last cursor read (None: read from --since)

    def _read_instance(self, instance: Instance, query: LogQuery) -> list[LogLine]:
        proc = podman.run("exec", instance.name, *journalctl_args(query, self.cursors.get(instance.name)), check=False,
                          timeout=READ_TIMEOUT)
        if proc.returncode != 0:
            log.warning("cannot read the journal of %s: %s", instance.name, (proc.stderr or "").strip()[-200:])
            return []
        lines, cursor = parse_journal(proc.stdout, instance.name, instance.version, query, origin="live")
        if cursor:
            self.cursors[instance.name] = cursor
        return lines

    def _read_live(self, query: LogQuery) -> tuple[set[str], list[list[LogLine]]]:
        running = [i for i in self.instances() if i.running]
        if not running:
            return set(), []
        with ThreadPoolExecutor(max_workers=min(8, len(running))) as pool:
            streams = list(pool.map(lambda instance: self._read_instance(instance, query), running))
        return {i.name for i in running}, streams

    def read(self, query: LogQuery) -> list[list[LogLine]]:
        live, streams = self._read_live(query)
        for path in sorted(self.exports.glob("*.jsonl")) if self.exports.is_dir() else []:
            try:
                name, lines = read_export(path, query)
            except OSError as exc:
                raise OperationError(f"{path}: cannot read the exported journal ({exc.strerror or exc})") from exc
            if name not in live:  # exported but still running (its removal failed): the live journal has it all
                streams.append(lines)
        return streams

    def poll(self, query: LogQuery) -> list[list[LogLine]]:
        return self._read_live(query)[1]
