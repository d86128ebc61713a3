"""Turn SIGINT/SIGTERM into an exception so every `finally` gets to clean up.

While ansible-playbook runs, the signal only sets a flag: ansible-runner's
cancel callback sees it, stops the playbook, and the bake raises afterwards.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from bakery.errors import Interrupted


class Cancellation:
    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self.deferred = False  # True while a child process owns the work (ansible-runner)

    def __call__(self) -> bool:
        return self.requested

    def check(self) -> None:
        if self.requested:
            raise Interrupted(f"interrupted by {self.signal_name}")


@contextmanager
def cancellable() -> Iterator[Cancellation]:
    state = Cancellation()

    def handler(signum, _frame):
        state.requested = True
        state.signal_name = signal.Signals(signum).name
        if not state.deferred:
            raise Interrupted(f"interrupted by {state.signal_name}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class TimeLimitExceeded(BaseException):
    """Raised inside a `time_limit` block when its seconds are up; a BaseException so that code catching
    Exception around one file (the scan's per-file rules) lets it through to whoever set the limit."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Stop a CPU-bound step (the secret scan of hostile content) after `seconds`, from the main thread only."""

    def handler(_signum, _frame):
        raise TimeLimitExceeded(f"did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
