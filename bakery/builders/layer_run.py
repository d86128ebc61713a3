"""Follow the one ansible-playbook run of a local bake layer by layer, from its events and commit records.

Each play is one layer: its step starts when its play starts and ends when the next play starts (or at the
stats); ansible-runner's own callback reports an event before bakery_layers commits, so the commit of layer
k happens inside step k+1 and is subtracted from it. The commit records are read at every event and after
the run, and handed to `on_commit` in order, so each committed layer is recorded as soon as it exists.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bakery.ansible import event_counts
from bakery.builders.layer_commits import read_records
from bakery.layers import PlannedLayer
from bakery.progress import Progress


class LayerRun:
    def __init__(self, layers: list[PlannedLayer], total: int, progress: Progress, records: Path,
                 on_commit: Callable[[dict[str, Any]], None]):
        self.layers = layers
        self.total = total
        self.progress = progress
        self.records = records
        self.on_commit = on_commit
        self.current = -1  # index into layers of the play running now
        self.ended = False
        self.recap_failed = False  # the recap counts a failure or an unreachable host (even when the exit code is 0)
        self.tasks = [0] * len(layers)
        self.changed = [0] * len(layers)
        self.step_seconds = [0.0] * len(layers)
        self.committed: list[dict[str, Any]] = []

    def step(self, index: int | None = None) -> str:
        p = self.layers[max(self.current if index is None else index, 0)]
        return f"[{p.layer.position + 1}/{self.total}] {p.role}"

    @property
    def broken(self) -> bool:
        """A commit failed (or a play had no host): the run must stop, bakery reports it."""
        return any("error" in record for record in self.committed)

    def observe(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "playbook_on_play_start" and self.current + 1 < len(self.layers):
            if self.current >= 0:
                self.step_seconds[self.current] = self.progress.step_done(self.step(), "baked")
            self.current += 1
            self.progress.step_start(self.step(), "running")
        elif kind == "playbook_on_stats" and self.current >= 0 and not self.ended:
            data = event.get("event_data", {})
            failed = any((data.get("failures") or {}).values()) or any((data.get("dark") or {}).values())
            self.recap_failed = failed
            self.step_seconds[self.current] = self.progress.step_done(self.step(), "FAILED" if failed else "baked")
            self.ended = True
        elif self.current >= 0:
            counted, changed = event_counts(event)
            self.tasks[self.current] += counted
            self.changed[self.current] += changed
        self.collect()

    def finish(self, ok: bool) -> None:
        """After the run: the last records, and the step of a run that ended without stats (killed, cancelled)."""
        self.collect()
        if self.ended:
            return
        if self.current < 0:
            self.current = 0
            self.progress.step_start(self.step(), "running")
        self.step_seconds[self.current] = self.progress.step_done(self.step(), "baked" if ok else "FAILED")
        self.ended = True

    def collect(self) -> None:
        for record in read_records(self.records)[len(self.committed):]:
            self.committed.append(record)
            self.on_commit(record)

    def seconds(self, index: int) -> float:
        """The layer's own time: its step, without the previous layer's commit that ran inside it."""
        before = next((r.get("seconds", 0.0) for r in self.committed if r.get("index") == index - 1), 0.0)
        return round(max(self.step_seconds[index] - before, 0.0), 3)
