"""Progress for long operations: a live line per step on a terminal, plain lines in CI.

Progress always goes to stderr so that `--json` output on stdout stays clean.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Plain-line progress: one line per event, greppable in CI logs."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self._started: dict[str, float] = {}
        self._counts: dict[str, dict[str, int]] = {}

    def note(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def step_start(self, step: str, detail: str = "") -> None:
        self._started[step] = time.monotonic()
        self._counts[step] = {"tasks": 0, "changed": 0}
        self.note(f"{step}: {detail or 'started'}")

    def task_done(self, step: str, task: str, changed: bool) -> None:
        counts = self._counts.setdefault(step, {"tasks": 0, "changed": 0})
        counts["tasks"] += 1
        counts["changed"] += int(changed)

    def counts(self, step: str) -> dict[str, int]:
        return dict(self._counts.get(step, {"tasks": 0, "changed": 0}))

    def step_done(self, step: str, outcome: str) -> float:
        elapsed = time.monotonic() - self._started.pop(step, time.monotonic())
        c = self._counts.get(step, {"tasks": 0, "changed": 0})
        self.note(f"{step}: {outcome} ({c['tasks']} tasks, {c['changed']} changed, {elapsed:.1f} s)")
        return elapsed

    def close(self) -> None:
        """Nothing to tear down for plain lines."""


class LiveProgress(Progress):
    """On a terminal: a rich status line that counts tasks as they finish."""

    def __init__(self, stream=None):
        super().__init__(stream)
        from rich.console import Console

        self._console = Console(file=self.stream)
        self._status: Any = None

    def note(self, message: str) -> None:
        self._console.print(message, highlight=False, markup=False)

    def step_start(self, step: str, detail: str = "") -> None:
        super().step_start(step, detail)
        self._stop_status()
        self._status = self._console.status(f"{step}: running")
        self._status.start()

    def task_done(self, step: str, task: str, changed: bool) -> None:
        super().task_done(step, task, changed)
        if self._status is not None:
            c = self.counts(step)
            self._status.update(f"{step}: {c['tasks']} tasks done, {c['changed']} changed - {task}")

    def step_done(self, step: str, outcome: str) -> float:
        self._stop_status()
        return super().step_done(step, outcome)

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def close(self) -> None:
        self._stop_status()


def make_progress(quiet: bool = False) -> Progress:
    """Live progress on an interactive terminal, plain lines otherwise (CI, pipes, --json)."""
    if not quiet and sys.stderr.isatty():
        return LiveProgress()
    return Progress()
