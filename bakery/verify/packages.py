"""Installed packages of an image and their difference to its base, read from the dpkg database.

Kept with every verification for vulnerability review and audit: which versions
of which packages went into the image on top of its base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def installed(rootfs: Path) -> dict[str, str]:
    """package (with :arch when not the native one) -> version, for packages dpkg lists as installed."""
    status = rootfs / "var" / "lib" / "dpkg" / "status"
    if not status.is_file():
        return {}
    return parse_status(status.read_text(encoding="utf-8", errors="replace"))


def parse_status(text: str) -> dict[str, str]:
    """dpkg's status file -> {package (with :arch when not the native one): version} of installed packages."""
    packages: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            arch = fields.get("Architecture", "")
            name = fields["Package"] if arch in ("", "all", "amd64", "arm64") else f"{fields['Package']}:{arch}"
            packages[name] = fields.get("Version", "")
    return dict(sorted(packages.items()))


def diff(base: dict[str, str], image: dict[str, str]) -> dict[str, Any]:
    return {
        "added": {name: image[name] for name in sorted(set(image) - set(base))},
        "removed": {name: base[name] for name in sorted(set(base) - set(image))},
        "changed": {name: {"base": base[name], "image": image[name]}
                    for name in sorted(set(base) & set(image)) if base[name] != image[name]},
    }
