"""Secret scan of a raw disk's filesystems, read without mounting, so that it works unprivileged on any disk.

An AMI read back from its snapshot is a disk, not an image with layers: the scan reads its partition table
(`sfdisk --json`, which works on a plain file), recognises each partition's filesystem by its superblock, copies
its files out with the filesystem's own user-space tools (e2fsprogs' `debugfs rdump` for ext2/3/4, mtools'
`mcopy -s` for FAT) into a scratch directory placed at the partition's mount point, and runs the image scan's
rules over that tree: findings name the partition and the absolute path a booted system would show. A partition
it cannot read (a filesystem it does not know, or one its tool refuses) fails the scan, naming the partition: it
is never skipped in silence. A partition that holds no byte at all is empty, and a BIOS boot partition holds boot
code and no filesystem: its raw bytes go through the content rules.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bakery.errors import OperationError
from bakery.verify import secrets

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
# a superblock's last mount point, if it is a plain one: segments of these characters, none of them only dots
SAFE_MOUNT = re.compile(r"^(/(?!\.+(?:/|\Z))[A-Za-z0-9_.+-]+)+\Z|^/\Z")
ESP_MOUNT = "/boot/efi"
PROBE_BYTES = 72 * 1024  # every superblock magic looked at below lies in the first 72 KiB
CHUNK = 4 * 1024 * 1024
TOOL_TIMEOUT = 1800
# filesystems recognised by their magic only to name them in the failure: no unprivileged reader here
NAMED_ONLY = ((0, b"XFSB", "xfs"), (65536 + 64, b"_BHRfS_M", "btrfs"), (4086, b"SWAPSPACE2", "swap"),
              (0, b"hsqs", "squashfs"), (0, b"LUKS\xba\xbe", "LUKS"), (32769, b"CD001", "iso9660"))


@dataclass(frozen=True)
class DiskPartition:
    """One entry of the partition table (number 0: a disk with no table, one filesystem over all of it)."""

    number: int
    offset: int  # bytes from the start of the disk
    size: int  # bytes
    type: str = ""  # GPT type GUID (upper case) or MBR type
    uuid: str = ""  # GPT partition UUID (upper case)
    label: str = ""  # GPT partition name

    def describe(self, mount: str) -> str:
        named = f" '{self.label}'" if self.label else ""
        return f"partition {self.number}{named} ({mount or 'mount unknown'})"


@dataclass
class PartitionScan:
    partition: DiskPartition
    filesystem: str  # ext4, vfat, bios-boot, empty, or what the superblock says (xfs, ...), or unknown
    mount: str = ""
    files: int = 0
    error: str = ""  # why it was not scanned ('' when it was)

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.partition.number, "label": self.partition.label, "uuid": self.partition.uuid,
                "offset": self.partition.offset, "bytes": self.partition.size, "filesystem": self.filesystem,
                "mount": self.mount, "files": self.files, "error": self.error}


@dataclass
class DiskScan:
    findings: list[secrets.Finding] = field(default_factory=list)
    partitions: list[PartitionScan] = field(default_factory=list)

    @property
    def failures(self) -> list[PartitionScan]:
        return [p for p in self.partitions if p.error]

    @property
    def passed(self) -> bool:
        return not self.findings and not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"partitions": [p.to_dict() for p in self.partitions], "findings": [f.to_dict() for f in self.findings]}


def partition_table(image: Path) -> list[DiskPartition]:
    """The disk's partitions per `sfdisk --json`; a disk with no table is one partition (number 0) over all of it."""
    proc = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, check=False,
                          timeout=TOOL_TIMEOUT)
    if proc.returncode != 0:
        if "does not contain a recognized partition table" in proc.stderr:
            return [DiskPartition(0, 0, image.stat().st_size)]
        raise OperationError(f"sfdisk cannot read the partition table of {image}: "
                             f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    table = json.loads(proc.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    found = []
    for index, entry in enumerate(table.get("partitions", []), start=1):
        node = str(entry.get("node", ""))
        number = int(node[len(node.rstrip("0123456789")):] or index)
        found.append(DiskPartition(number, int(entry["start"]) * sector, int(entry["size"]) * sector,
                                   str(entry.get("type", "")).upper(), str(entry.get("uuid", "")).upper(),
                                   str(entry.get("name", ""))))
    return found


def probe(image: Path, part: DiskPartition) -> tuple[str, str]:
    """(filesystem, the directory it was last mounted on, when the superblock keeps one) from the first bytes."""
    with image.open("rb") as handle:
        handle.seek(part.offset)
        head = handle.read(min(PROBE_BYTES, part.size))
    if part.type == BIOS_BOOT_TYPE:
        return "bios-boot", ""
    if head[1080:1082] == b"\x53\xef":  # ext2/3/4: superblock at 1024, s_magic at +56
        return "ext4", head[1024 + 136:1024 + 200].split(b"\0", 1)[0].decode("utf-8", "replace")
    if head[510:512] == b"\x55\xaa" and (head[54:57] == b"FAT" or head[82:87] == b"FAT32"):
        return "vfat", ""
    for offset, magic, name in NAMED_ONLY:
        if head[offset:offset + len(magic)] == magic:
            return name, ""
    return ("empty" if _all_zero(image, part) else "unknown"), ""


def _all_zero(image: Path, part: DiskPartition) -> bool:
    """True when the partition holds no byte but zero (a hole in a sparse file reads as zeros, without reading it)."""
    end = part.offset + part.size
    with image.open("rb") as handle:
        offset = part.offset
        while offset < end:
            try:
                offset = os.lseek(handle.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                return True
            if offset >= end:
                return True
            handle.seek(offset)
            chunk = handle.read(min(CHUNK, end - offset))
            if chunk.strip(b"\0"):
                return False
            offset += len(chunk)
    return True


def mount_of(part: DiskPartition, last_mounted: str, by_uuid: Mapping[str, str], by_label: Mapping[str, str]) -> str:
    """Where the partition is mounted: the disk's record (by partition UUID), else bakery's partition names, else
    the GPT type (ESP, x86-64 root), else the directory the filesystem says it was last mounted on; '' unknown."""
    for found in (by_uuid.get(part.uuid.upper()), by_label.get(part.label)):
        if found:
            return found
    if part.type == ESP_TYPE:
        return ESP_MOUNT
    if part.type == ROOT_X86_64_TYPE:
        return "/"
    return last_mounted if SAFE_MOUNT.match(last_mounted) else ""  # the disk's own word: never a way out of the copy


def scan_disk(image: Path, workdir: Path, allowlist: list[secrets.AllowEntry], *,
              by_uuid: Mapping[str, str] | None = None, by_label: Mapping[str, str] | None = None) -> DiskScan:
    """Every partition of the raw disk `image`, one at a time (its files copied under `workdir`, scanned, removed).

    by_uuid / by_label: mount points by GPT partition UUID (upper case) or by GPT partition name, when known.
    """
    result = DiskScan()
    for part in partition_table(image):
        filesystem, last_mounted = probe(image, part)
        mount = mount_of(part, last_mounted, by_uuid or {}, by_label or {})
        scanned = PartitionScan(part, filesystem, mount)
        result.partitions.append(scanned)
        if filesystem == "empty":
            continue
        root = workdir / f"partition-{part.number}"
        target = root / mount.lstrip("/")
        if not target.resolve().is_relative_to(root.resolve()):
            raise OperationError(f"{part.describe(mount)}: mount point {mount!r} leaves the scan's copy")
        target.mkdir(parents=True)
        try:
            scanned.error = _extract(image, part, filesystem, target, part.describe(mount))
            if not scanned.error:
                scanned.files = _readable(root)
                found = secrets.scan_tree(root, allowlist)
                result.findings += [replace(f, layer=part.describe(mount)) for f in found]
        except OperationError as error:
            scanned.error = str(error)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return result


def _extract(image: Path, part: DiskPartition, filesystem: str, target: Path, name: str) -> str:
    """Copy the partition's files into `target`; returns why it could not ('' when it did)."""
    if filesystem == "ext4":
        return _debugfs(image, part, target, name)
    if filesystem == "vfat":
        return _mcopy(image, part, target, name)
    if filesystem == "bios-boot":
        with image.open("rb") as source, (target / f"partition-{part.number}.bin").open("wb") as out:
            source.seek(part.offset)
            remaining = part.size
            while remaining > 0 and (chunk := source.read(min(CHUNK, remaining))):
                out.write(chunk)
                remaining -= len(chunk)
        return ""
    what = "no filesystem the scan recognises" if filesystem == "unknown" else \
        f"a {filesystem} filesystem, which the scan cannot read without mounting"
    return f"{name} holds {what}: it was not scanned"


def _debugfs(image: Path, part: DiskPartition, target: Path, name: str) -> str:
    """debugfs `rdump` through the unix io manager's offset option; run in the image's directory so that neither
    path goes through debugfs' own option ('?') and argument parsing.

    rdump writes each entry's name as it stands under `target`: only a filesystem e2fsck finds consistent is
    copied, since a crafted one could hold names with '/' (written outside the copy), or two entries of one name
    (the copy keeps the last, the kernel finds the first, and a symlink of that name first would be written
    through on the host)."""
    where = f"{image.name}?offset={part.offset}"
    check = subprocess.run(["e2fsck", "-f", "-n", where], capture_output=True, text=True, check=False,
                           cwd=image.parent, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
    if check.returncode != 0:
        return f"{name}: e2fsck finds its ext filesystem inconsistent ({_first_problem(check.stdout)}): it was " \
               "not scanned"
    dest = os.path.relpath(target, image.parent)
    proc = subprocess.run(["debugfs", "-R", f"rdump / {dest}", where], capture_output=True, text=True,
                          check=False, cwd=image.parent, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
    # the banner, and ownership that an unprivileged user cannot give away, are no reason to distrust the copy
    errors = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("debugfs ")
              and "while changing ownership" not in line]
    if proc.returncode != 0 or errors:
        reason = (errors or proc.stderr.strip().splitlines() or ["?"])[0]
        return f"{name}: debugfs could not read its ext filesystem ({reason}): it was not scanned"
    return ""


def _first_problem(report: str) -> str:
    """The first line of a checker's report that is not its banner or a pass name."""
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith(("e2fsck ", "fsck.fat ", "Pass "))), "?")


def _mcopy(image: Path, part: DiskPartition, target: Path, name: str) -> str:
    """mcopy of a copy of the partition that fsck.fat found consistent (it has no offset option): with two
    entries of one name, mcopy -n keeps the last while the firmware and the kernel find the first."""
    alone = target.parent / f".partition-{part.number}.fat"
    try:
        subprocess.run(["dd", f"if={image}", f"of={alone}", "bs=1M", f"skip={part.offset}", f"count={part.size}",
                        "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none"], check=True,
                       capture_output=True, timeout=TOOL_TIMEOUT)
        check = subprocess.run(["fsck.fat", "-n", str(alone)], capture_output=True, text=True, check=False,
                               timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
        if check.returncode != 0:
            return f"{name}: fsck.fat finds its FAT filesystem inconsistent ({_first_problem(check.stdout)}: " \
                   f"{_fat_problem(check.stdout)}): it was not scanned"
        return _mcopy_from(alone, target, name)
    finally:
        alone.unlink(missing_ok=True)


def _fat_problem(report: str) -> str:
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    first = _first_problem(report)
    return lines[lines.index(first) + 1] if first in lines and lines.index(first) + 1 < len(lines) else ""


def _mcopy_from(fat: Path, target: Path, name: str) -> str:
    proc = subprocess.run(["mcopy", "-s", "-n", "-m", "-i", str(fat), "::/", str(target)],
                          capture_output=True, text=True, check=False, timeout=TOOL_TIMEOUT,
                          stdin=subprocess.DEVNULL, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"{name}: mcopy could not read its FAT filesystem ({reason}): it was not scanned"
    return ""


def _readable(root: Path) -> int:
    """Make the copied tree readable by its owner (an unprivileged copy keeps modes like 000); returns the files."""
    files = 0
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IRWXU)
        for name in filenames:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                files += 1
                if not mode & stat.S_IRUSR:
                    os.chmod(path, stat.S_IMODE(mode) | stat.S_IRUSR)
    return files
