"""Run directories: every command that changes something keeps its logs under .bakery/runs/<run-id>/."""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bakery.files import write_atomically


@dataclass
class Run:
    """One invocation's directory, log file and result file."""

    id: str
    path: Path

    @classmethod
    def start(cls, state_dir: Path, kind: str) -> Run:
        run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{kind}-{secrets.token_hex(3)}"
        path = state_dir / "runs" / run_id
        path.mkdir(parents=True)
        handler = logging.FileHandler(path / f"{kind}.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("bakery")
        root.setLevel(logging.DEBUG)
        root.addHandler(handler)
        return cls(run_id, path)

    def write_result(self, result: dict[str, Any]) -> Path:
        target = self.path / "result.json"
        write_atomically(target, json.dumps(result, indent=2, sort_keys=True) + "\n")
        return target
