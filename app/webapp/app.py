"""What the service answers, kept apart from HTTP: its state, health and version facts."""

from __future__ import annotations

import logging
import time
from typing import Any

from webapp import __version__
from webapp.config import Config, ConfigError
from webapp.health import unready_reason
from webapp.items import ItemStore
from webapp.release import read_release

log = logging.getLogger("webapp")


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
        facts, config = self.release_facts(), self.config  # one config for the whole answer
        return {
            "image": facts.get("IMAGE_NAME"),
            "image_version": facts.get("IMAGE_VERSION"),
            "git_commit": facts.get("GIT_COMMIT"),
            "environment": config.environment,
            "app_version": __version__,
            "features": config.features,
        }

    def reload(self) -> list[str]:
        """SIGHUP: feature flags and log level from the runtime file. The Config is immutable and replaced in one
        assignment, so a request in flight sees the old one or the new one, never half of each. Logs the names
        of the keys that changed, never their values; keeps the current config when the file is absent or bad."""
        old = self.config
        try:
            new = old.reloaded()
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            log.warning("reload refused: %s; keeping the current config", exc)
            return []
        if new is None:
            log.info("reload: no runtime file at %s; keeping the current config", old.runtime_file)
            return []
        before, after = old.live(), new.live()
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        self.config = new
        logging.getLogger().setLevel(new.log_level.upper())
        log.info("reloaded runtime config from %s: %s", new.runtime_file,
                 f"changed {', '.join(changed)}" if changed else "nothing changed")
        return changed
