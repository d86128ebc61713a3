"""bakery.yml `base:`: extra apt sources and packages for bakery's own Debian bases.

A company repository (an agent, internal CA certificates) belongs in the base so that every image and every
`base --if-updates` check sees it. Bases made with other settings are another flavour: a label and a tag part
keep them apart, so a base is only reused by projects that asked for the same sources and packages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bakery.errors import ConfigError
from bakery.provenance import sha256_json

KEYS = {"extra_sources", "extra_packages"}
# One-line sources.list entries: `deb [options] URI SUITE [COMPONENT...]`. A local directory is a copy: URI
# (mmdebstrap installs from it: with file: apt leaves the .deb outside the chroot dpkg runs in); the directory is
# mounted read-only into the container that checks the base for updates.
SOURCE_LINE = re.compile(r"^deb(\s+\[[^\]\n]*\])?\s+(?P<uri>(https?|copy):\S+)\s+\S+(\s+[\w./-]+)*$")
PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


@dataclass(frozen=True)
class BaseSettings:
    extra_sources: tuple[str, ...] = ()
    extra_packages: tuple[str, ...] = ()

    @property
    def flavour(self) -> str:
        """'' for bakery's plain base; else a short digest of the settings (part of the base's tag and labels)."""
        if not self.extra_sources and not self.extra_packages:
            return ""
        return sha256_json([list(self.extra_sources), list(self.extra_packages)]).removeprefix("sha256:")[:12]

    def file_paths(self) -> list[str]:
        """Local directories of `copy:` sources: what the update check mounts into its container."""
        paths = []
        for line in self.extra_sources:
            match = SOURCE_LINE.match(line)
            if match and match.group("uri").startswith("copy:"):
                paths.append("/" + match.group("uri").removeprefix("copy:").lstrip("/"))
        return paths


def parse_base_settings(raw: Any, where: str = "bakery.yml") -> BaseSettings:
    """Validate bakery.yml's `base:` mapping; one line naming the field and value otherwise."""
    if raw is None:
        return BaseSettings()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: base must be a mapping with {' and/or '.join(sorted(KEYS))}")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise ConfigError(f"{where}: base: unknown key '{unknown[0]}'; known keys: {', '.join(sorted(KEYS))}")
    sources = _strings(raw.get("extra_sources"), f"{where}: base.extra_sources")
    for line in sources:
        if " file:" in line:
            raise ConfigError(f"{where}: base.extra_sources entry {line!r}: name a local directory as copy:/PATH, "
                              "not file:/PATH (mmdebstrap cannot install from a file: source)")
        if not SOURCE_LINE.match(line):
            raise ConfigError(f"{where}: base.extra_sources entry {line!r} is not a one-line apt source like "
                              "'deb [signed-by=/usr/share/keyrings/x.gpg] https://apt.example.com bookworm main'")
    packages = _strings(raw.get("extra_packages"), f"{where}: base.extra_packages")
    for name in packages:
        if not PACKAGE_NAME.match(name):
            raise ConfigError(f"{where}: base.extra_packages entry {name!r} is not a Debian package name")
    return BaseSettings(tuple(sources), tuple(packages))


def _strings(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{field} must be a list of non-empty strings")
    return [v.strip() for v in value]


def project_base_settings(settings: dict[str, Any], where: str = "bakery.yml") -> BaseSettings:
    return parse_base_settings(settings.get("base"), where)
