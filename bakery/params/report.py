"""What an instance says it resolved: /run/bakery/params.json, written by the applier (Contract 4 of issue 17).

Only keys, references, versions, refresh intervals and when they were checked are taken from it, even if the file
held more: `status` shows versions, never values. A missing file (an image from before parameters, an aws instance
bakery cannot reach) or one that does not read gives None: status shows nothing rather than failing.
"""

from __future__ import annotations

import json
from typing import Any

from bakery.runtime_grammar import KEY_RE

FILE = "/run/bakery/params.json"
FIELDS = ("ref", "version", "refresh", "checked")


def instance_params(text: str) -> dict[str, dict[str, Any]] | None:
    """key -> {ref, version, refresh, checked} from the file's text; None when it says nothing usable."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, dict):
        return None
    result = {}
    for key, entry in keys.items():
        if isinstance(key, str) and KEY_RE.fullmatch(key) and isinstance(entry, dict):
            result[key] = {name: _plain(entry.get(name)) for name in FIELDS}
    return result or None


def _plain(value: Any) -> Any:
    """A number or a short text; anything else (a nested value) is dropped."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return value
    return value[:64] if isinstance(value, str) else None


def params_column(params: dict[str, dict[str, Any]] | None) -> str:
    """KEY=VERSION pairs for status' table (a secret's version id cut to 8 characters); '-' when none."""
    if not params:
        return "-"
    return " ".join(f"{key}={str(entry.get('version') if entry.get('version') is not None else '?')[:8]}"
                     for key, entry in sorted(params.items()))
