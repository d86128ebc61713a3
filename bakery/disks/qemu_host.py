"""Where the host's qemu, qemu-img and UEFI firmware are; a missing one names the Debian package to install."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bakery.errors import ConfigError

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
OVMF_DIR = Path("/usr/share/OVMF")
OVMF_CODE = "OVMF_CODE_4M.fd"  # no Secure Boot keys enrolled: the disk's systemd-boot is not signed
OVMF_VARS = "OVMF_VARS_4M.fd"


@dataclass(frozen=True)
class Firmware:
    code: Path  # read-only pflash, shared by every VM
    vars_template: Path  # each VM boots with its own copy (UEFI writes its boot entries there)


def command(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} is not installed: install the Debian package {package} (make setup does)")
    return found


def qemu_system() -> str:
    return command(QEMU, "qemu-system-x86")


def qemu_img() -> str:
    return command(QEMU_IMG, "qemu-utils")


def firmware() -> Firmware:
    code, vars_template = OVMF_DIR / OVMF_CODE, OVMF_DIR / OVMF_VARS
    for path in (code, vars_template):
        if not path.is_file():
            raise ConfigError(f"UEFI firmware {path} is missing: install the Debian package ovmf (make setup does)")
    return Firmware(code, vars_template)
