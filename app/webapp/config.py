"""Settings from the environment only.

systemd hands the service its runtime config through `EnvironmentFile=` (the
per-environment file that is never baked) and `Environment=`; reading nothing
else keeps one image valid in every environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

LOG_LEVELS = ("debug", "info", "warning", "error")
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
        level = get("LOG_LEVEL", "info").lower()
        if level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL={level!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
        return cls(
            port=int(port_text),
            bind=get("WEBAPP_BIND", "0.0.0.0"),
            data_dir=Path(get("WEBAPP_DATA_DIR", "/var/lib/webapp")),
            release_file=Path(get("WEBAPP_RELEASE_FILE", "/etc/image-release")),
            environment=get("ENVIRONMENT", "unknown"),
            log_level=level,
            features=_features(env),
        )


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
