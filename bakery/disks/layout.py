"""The partition layout of an image's bootable disk: which directories get their own filesystem, how big, and with
which mount options. Part of the image definition (bakery.yml `images.<name>.disk`), checked before any write.

The default is the CIS Level 1 layout: separate /var, /var/log, /var/log/audit, /tmp and /home with nodev,
nosuid and noexec where the benchmark asks for them (CIS 1.1.2-1.1.7), plus the EFI system partition. The root
filesystem comes last so that the first boot can grow it into a larger volume.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bakery.errors import ConfigError

MIB = 1024 * 1024
GIB = 1024 * MIB
ESP_MOUNT = "/boot/efi"
# Mount points of the root filesystem or of the kernel's own trees, and everything under them: never a partition
# of their own here (/etc and /usr are read before local filesystems are mounted; /dev, /proc, /sys and /run are
# virtual, so a partition there would be hidden or could not be mounted; the ESP is FAT).
FORBIDDEN_MOUNTS = {"/", "/boot", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/dev", "/proc", "/sys", "/run"}
# Names the disk builder gives the root filesystem and the ESP (labels, image files, partition UUID seeds).
RESERVED_NAMES = {"root", "esp"}
MOUNT_RE = re.compile(r"^(/[a-z0-9_.-]+)+\Z")
OPTION_RE = re.compile(r"^[a-z0-9_=.-]+\Z")
SIZE_RE = re.compile(r"^([1-9][0-9]*)\s*(M|MiB|G|GiB)\Z")
ALLOWED_OPTIONS = {"nodev", "nosuid", "noexec", "noatime", "relatime", "nodiratime"}


@dataclass(frozen=True)
class Partition:
    """One partition: its mount point, filesystem, size in bytes and mount options (beyond `defaults`)."""

    mount: str
    size: int
    options: tuple[str, ...] = ()
    filesystem: str = "ext4"

    @property
    def name(self) -> str:
        """A short name used for the GPT partition label and the filesystem label (16 characters for ext4)."""
        if self.mount == ESP_MOUNT:
            return "esp"
        return self.mount.strip("/").replace("/", "-")[:16]


ESP = Partition(ESP_MOUNT, 128 * MIB, ("umask=0077", "nodev", "nosuid", "noexec"), "vfat")
DEFAULT_PARTITIONS = (
    Partition("/var", 512 * MIB, ("nodev", "nosuid")),
    Partition("/var/log", 256 * MIB, ("nodev", "nosuid", "noexec")),
    Partition("/var/log/audit", 256 * MIB, ("nodev", "nosuid", "noexec")),
    Partition("/tmp", 256 * MIB, ("nodev", "nosuid", "noexec")),
    Partition("/home", 64 * MIB, ("nodev", "nosuid")),
)


@dataclass(frozen=True)
class Layout:
    """The ESP, the separate partitions (deepest mount first is how they are cut out of the tree) and the size of the
    whole disk (0: the smallest whole GiB that holds it)."""

    partitions: tuple[Partition, ...]
    disk_size: int = 0

    @property
    def all(self) -> tuple[Partition, ...]:
        return (ESP, *self.partitions)


def parse_size(value: Any, where: str) -> int:
    """'512M', '2G', '64MiB': whole MiB or GiB only, so every partition stays 1 MiB aligned."""
    match = SIZE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f"{where} must be a size such as 512M or 2G, got {value!r}")
    return int(match.group(1)) * (GIB if match.group(2).startswith("G") else MIB)


def _partition(entry: Any, where: str) -> Partition:
    if not isinstance(entry, dict) or set(entry) - {"mount", "size", "options"} or "mount" not in entry:
        raise ConfigError(f"{where} must be a mapping with mount, size and options, got {entry!r}")
    mount = entry["mount"]
    if not isinstance(mount, str) or not MOUNT_RE.match(mount) or {".", ".."} & set(mount.split("/")):
        raise ConfigError(f"{where}.mount must be an absolute path of lower-case names such as /var/log, "
                          f"got {mount!r}")
    if any(mount == m or mount.startswith(m + "/") for m in (*FORBIDDEN_MOUNTS, ESP_MOUNT) if m != "/"):
        raise ConfigError(f"{where}.mount {mount} cannot be a separate partition here: choose another mount point")
    if Partition(mount, 0).name in RESERVED_NAMES:
        raise ConfigError(f"{where}.mount {mount} cannot be a separate partition here (its name "
                          f"{Partition(mount, 0).name} is the disk builder's own): choose another mount point")
    options = entry.get("options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) and o in ALLOWED_OPTIONS for o in options):
        raise ConfigError(f"{where}.options must be a list of {', '.join(sorted(ALLOWED_OPTIONS))}, got {options!r}")
    size = parse_size(entry.get("size"), f"{where}.size")
    return Partition(mount, size, tuple(options))


def parse_layout(value: Any, where: str) -> Layout:
    """bakery.yml `images.<name>.disk` ({size, partitions}) or the default layout when absent."""
    if value is None:
        return Layout(DEFAULT_PARTITIONS)
    if not isinstance(value, dict) or set(value) - {"size", "partitions"}:
        raise ConfigError(f"{where} must be a mapping with 'size' and 'partitions', got {value!r}")
    disk_size = parse_size(value["size"], f"{where}.size") if "size" in value else 0
    if "partitions" not in value:  # only the size given: the default partitions
        return Layout(DEFAULT_PARTITIONS, disk_size)
    entries = value["partitions"]
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise ConfigError(f"{where}.partitions must be a list of {{mount, size, options}}, got {entries!r}")
    partitions = tuple(_partition(e, f"{where}.partitions[{i}]") for i, e in enumerate(entries))
    for part in partitions:
        same = [p.mount for p in partitions if p.name == part.name]
        if len(set(same)) == 1 < len(same):
            raise ConfigError(f"{where}.partitions names {part.mount} twice: give each mount point one entry")
        if len(same) > 1:
            raise ConfigError(f"{where}.partitions: {' and '.join(same)} would both be named {part.name} (labels "
                              "take / as -, 16 characters at most): choose mount points with distinct names")
    return Layout(partitions, disk_size)


def fstab(layout: Layout, uuids: dict[str, str], root_uuid: str) -> str:
    """/etc/fstab of the disk: every filesystem by PARTUUID (no device names, which differ between virtio, NVMe
    and Xen), the root grown at first boot (x-systemd.growfs)."""
    lines = ["# Written by bakery's disk builder from the image's partition layout (bakery.yml images.<name>.disk).",
             f"PARTUUID={root_uuid} / ext4 defaults,x-systemd.growfs 0 1"]
    for part in sorted(layout.all, key=lambda p: p.mount.count("/")):
        options = ",".join(("defaults", *part.options))
        lines.append(f"PARTUUID={uuids[part.name]} {part.mount} {part.filesystem} {options} 0 2")
    return "\n".join(lines) + "\n"
