"""What the service answers, kept apart from HTTP: its state, health and version facts."""

from __future__ import annotations

import time
from typing import Any

from webapp import __version__
from webapp.config import Config
from webapp.health import unready_reason
from webapp.items import ItemStore
from webapp.release import read_release


class App:
    """One running service: starting -> ready -> stopping."""

    def __init__(self, config: Config):
        self.config = config
        self.items = ItemStore(config.data_dir)
        self.state = "starting"
        self._started = time.monotonic()

    def unready_reason(self) -> str | None:
        return unready_reason(self.config)

    def mark_ready(self) -> None:
        self.state = "ready"

    def mark_stopping(self) -> None:
        self.state = "stopping"

    def release_facts(self) -> dict[str, str]:
        """The release file's facts, or none when it cannot be read (health reports that)."""
        try:
            return read_release(self.config.release_file)
        except OSError:
            return {}

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 200 only when ready and every dependency is, checked now."""
        reason = self.unready_reason()
        if reason:
            return 503, {"status": "unhealthy", "reason": reason}
        if self.state != "ready":
            return 503, {"status": self.state}
        return 200, {
            "status": "ok",
            "app_version": __version__,
            "image_version": self.release_facts().get("IMAGE_VERSION"),
            "environment": self.config.environment,
            "uptime_seconds": round(time.monotonic() - self._started, 1),
        }

    def version(self) -> dict[str, Any]:
        facts = self.release_facts()
        return {
            "image": facts.get("IMAGE_NAME"),
            "image_version": facts.get("IMAGE_VERSION"),
            "git_commit": facts.get("GIT_COMMIT"),
            "environment": self.config.environment,
            "app_version": __version__,
            "features": self.config.features,
        }
