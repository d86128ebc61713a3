"""The image's own facts, from /etc/image-release.

The bake writes `KEY="value"` lines (readable by sh, systemd and Python); the
app reads them itself rather than importing bakery, which is not in the image.
"""

from __future__ import annotations

from pathlib import Path


def parse_release(text: str) -> dict[str, str]:
    """`KEY="value"` lines to a dict; comments, blank and malformed lines are skipped."""
    facts = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        facts[key] = value
    return facts


def read_release(path: Path) -> dict[str, str]:
    """Read and parse the release file; OSError tells the caller it is unreadable."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        return parse_release(fh.read())
