"""Settings from the environment, and the live part of them from the runtime file on SIGHUP.

systemd hands the service its runtime config through `EnvironmentFile=` (the
per-environment file that is never baked) and `Environment=`; reading nothing
else keeps one image valid in every environment. Feature flags and the log level
may change while the service runs (parameters refreshed on the instance): on
SIGHUP they are read again from WEBAPP_RUNTIME_FILE, the copy of the runtime
config systemd's ExecReload= puts in /run/webapp (KEY="VALUE" lines).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from webapp.release import parse_release

LOG_LEVELS = ("debug", "info", "warning", "error")
RUNTIME_FILE = "/run/webapp/runtime.env"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class ConfigError(ValueError):
    """A setting is malformed; the message names the variable and what to do."""


@dataclass(frozen=True)
class Config:
    port: int = 8080
    bind: str = "0.0.0.0"
    data_dir: Path = Path("/var/lib/webapp")
    release_file: Path = Path("/etc/image-release")
    environment: str = "unknown"
    log_level: str = "info"
    features: dict[str, bool] = field(default_factory=dict)
    runtime_file: Path = Path(RUNTIME_FILE)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read the settings; an empty value (`KEY=` in an env file) counts as unset."""
        env = os.environ if env is None else env

        def get(key: str, default: str) -> str:
            value = env.get(key, "").strip()
            return value or default

        port_text = get("WEBAPP_PORT", "8080")
        if not port_text.isdigit() or int(port_text) > 65535:
            raise ConfigError(f"WEBAPP_PORT={port_text!r} is not a port number; use 1-65535 (0 picks a free port)")
        return cls(
            port=int(port_text),
            bind=get("WEBAPP_BIND", "0.0.0.0"),
            data_dir=Path(get("WEBAPP_DATA_DIR", "/var/lib/webapp")),
            release_file=Path(get("WEBAPP_RELEASE_FILE", "/etc/image-release")),
            environment=get("ENVIRONMENT", "unknown"),
            log_level=_log_level(get("LOG_LEVEL", "info")),
            features=_features(env),
            runtime_file=Path(get("WEBAPP_RUNTIME_FILE", RUNTIME_FILE)),
        )

    def live(self) -> dict[str, str]:
        """The settings a reload may change, by the variable that sets them (what a reload log line names)."""
        flags = {f"FEATURE_{name.upper()}": "true" if on else "false" for name, on in self.features.items()}
        return {**flags, "LOG_LEVEL": self.log_level}

    def reloaded(self) -> Config | None:
        """A new Config with FEATURE_* and LOG_LEVEL from the runtime file (the rest stays: a port or a data
        directory cannot change under a running server); None when there is no file. ConfigError when a value
        is malformed, so that the caller keeps the current config."""
        try:
            text = self.runtime_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        env = parse_release(text)
        return replace(self, log_level=_log_level(env.get("LOG_LEVEL", "").strip() or "info"), features=_features(env))


def _log_level(text: str) -> str:
    level = text.lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL={level!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    return level


def _features(env: Mapping[str, str]) -> dict[str, bool]:
    """FEATURE_<NAME>=true|false becomes {"<name>": bool}, so flags need no code change to add."""
    flags = {}
    for key, value in env.items():
        if not key.startswith("FEATURE_") or len(key) == len("FEATURE_"):
            continue
        text = value.strip().lower()
        if text in _TRUE:
            flags[key[len("FEATURE_"):].lower()] = True
        elif text in _FALSE:
            flags[key[len("FEATURE_"):].lower()] = False
        else:
            raise ConfigError(f"{key}={value!r} is not a feature switch; use true or false")
    return dict(sorted(flags.items()))
