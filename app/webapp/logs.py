"""Plain log lines on stderr, for journald (or `podman logs`) to collect.

Under systemd, stderr is a journal stream and each line gets a `<N>` syslog
prefix so `journalctl -p warning` works; elsewhere lines stay plain.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def _is_journal(stream: TextIO) -> bool:
    """True when the stream is the journal stream systemd announced in $JOURNAL_STREAM."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def setup(level: str, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if _is_journal(stream):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
