"""`--since` values: a duration back from now (90s, 10m, 2h, 1d) or an ISO 8601 time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from bakery.errors import ConfigError

DURATION_RE = re.compile(r"^\s*(\d{1,12})\s*([smhd])\s*\Z")  # 12 digits: far past the range, never past int()
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DAYS = 3650  # ten years: longer than any journal or log group keeps lines


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """The moment `text` names, in UTC; a time without a zone is taken as UTC (the instances' zone)."""
    now = now or datetime.now(UTC)
    match = DURATION_RE.match(text or "")
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        if amount * SECONDS[unit] > MAX_DAYS * 86400:
            raise ConfigError(f"--since '{text}' is out of range: a duration goes back at most {MAX_DAYS}d "
                              f"({MAX_DAYS * 24}h); give a shorter one or an ISO time")
        return now - timedelta(**{UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat((text or "").strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since '{text}' is neither a duration (30s, 10m, 2h, 1d) "
                          "nor an ISO time (2026-11-29T10:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment > now:
        raise ConfigError(f"--since '{text}' is in the future; give a past time or a duration such as 10m")
    if moment < now - timedelta(days=MAX_DAYS):  # also keeps year 1 minus an offset from overflowing
        raise ConfigError(f"--since '{text}' is out of range: at most {MAX_DAYS}d back; give a later time")
    return moment.astimezone(UTC)
