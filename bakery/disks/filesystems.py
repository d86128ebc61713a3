"""Filesystem images made offline from a directory, byte for byte the same every time.

No loop device and no mount (systemd-repart 252 needs both to populate a partition): `mkfs.ext4 -d` copies the
tree into the image file, `mkfs.vfat` + `mcopy` fill the EFI system partition. What would differ between two
runs is pinned: UUIDs and the directory hash seed come from the caller (derived from the version's input digest),
E2FSPROGS_FAKE_TIME fixes the creation times, and a debugfs pass sets every inode's ctime, atime and crtime to
its mtime (mkfs copies the first two from the staging tree, where they are extraction times), and the
superblock's write time and write counter.

What would differ between two versions of an image is kept to few 512 KiB blocks (an incremental snapshot
uploads only those): the metadata checksums come from a seed of the image (metadata_csum_seed) while the UUID
stays the version's, inode times come from the files, and the late files (the last layers') are added after
the rest (late_files.py), so a changed app does not move the inodes and blocks of everything walked after it.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
from collections.abc import Collection
from pathlib import Path

from bakery.disks import late_files
from bakery.errors import OperationError

MIB = 1024 * 1024


def tree_bytes(root: Path) -> int:
    """Blocks the tree occupies (st_blocks), each inode counted once: what the filesystem must hold."""
    total, seen = 0, set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512 + 256  # plus the inode itself
    return total


def fitting_size(root: Path, minimum: int) -> int:
    """A filesystem size that holds the tree with room for metadata and first-boot writes, in whole MiB."""
    needed = int(tree_bytes(root) * 1.2) + 96 * MIB
    return max(minimum, -(-needed // MIB) * MIB)


def _run(argv: list[str], what: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=1800, check=False)
    except FileNotFoundError as exc:
        raise OperationError(f"{what}: {argv[0]} is missing; run make setup") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise OperationError(f"{what}: {argv[0]} failed ({proc.returncode}): {' / '.join(tail)}")
    return proc.stdout


def _used_inodes(out: str) -> list[int]:
    """Every inode in use, from dumpe2fs's per-group free-inode ranges."""
    per_group = int(re.search(r"^Inodes per group:\s+(\d+)", out, re.M).group(1))  # type: ignore[union-attr]
    parts = re.split(r"^Group (\d+):", out, flags=re.M)[1:]
    used: list[int] = []
    for number, body in zip(parts[0::2], parts[1::2], strict=True):
        first = int(number) * per_group + 1
        free: set[int] = set()
        ranges = re.search(r"Free inodes: ([^\n]*)", body)
        for item in filter(None, (r.strip() for r in (ranges.group(1) if ranges else "").split(","))):
            low, _, high = item.partition("-")
            free.update(range(int(low), int(high or low) + 1))
        used.extend(i for i in range(first, first + per_group) if i not in free)
    return used


def _mtimes(image: Path) -> dict[int, int]:
    """Every used inode's mtime in seconds, read from the inode tables (dumpe2fs says where they are)."""
    out = _run(["dumpe2fs", str(image)], f"reading {image.name}")

    def header(name: str) -> int:
        return int(re.search(rf"^{name}:\s+(\d+)", out, re.M).group(1))  # type: ignore[union-attr]

    block, size, per_group = header("Block size"), header("Inode size"), header("Inodes per group")
    tables = [int(m) for m in re.findall(r"Inode table at (\d+)-", out)]
    mtimes: dict[int, int] = {}
    with image.open("rb") as handle:
        for number in _used_inodes(out):
            group, index = divmod(number - 1, per_group)
            handle.seek(tables[group] * block + index * size)
            raw = handle.read(size)
            seconds = struct.unpack_from("<i", raw, 0x10)[0]
            extra = struct.unpack_from("<I", raw, 0x90)[0] if size > 0x94 else 0
            mtimes[number] = seconds + ((extra & 3) << 32)
    return mtimes


def make_ext4(tree: Path, image: Path, *, size: int, label: str, fs_uuid: str, hash_seed: str, epoch: int,
              csum_seed: str = "", late: Collection[str] = ()) -> None:
    """An ext4 image of `tree` (owners, modes, xattrs such as file capabilities, hard links kept). With
    `csum_seed` (a UUID) the metadata checksums derive from it rather than from `fs_uuid`; `late` names the
    entries (relative paths) that go in after all the others."""
    image.unlink(missing_ok=True)
    with image.open("wb") as handle:
        handle.truncate(size)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch), "MKE2FS_CONFIG": "/etc/mke2fs.conf", "LC_ALL": "C",
           "TZ": "UTC0"}
    top = os.stat(tree)
    aside = late_files.set_aside(tree, late, image.parent / f".late-{image.name}") if late else None
    try:
        # 4 KiB blocks also below 512 MiB (mke2fs's "small" type would take 1 KiB): 8 MiB groups would put a
        # superblock backup, which carries the version's UUID and time, in 10 places of a 256 MiB /tmp
        _run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(tree), "-L", label, "-U", csum_seed or fs_uuid,
              *(["-O", "metadata_csum_seed"] if csum_seed else []),
              "-E", f"hash_seed={hash_seed},root_owner={top.st_uid}:{top.st_gid}", str(image)],
             f"making the {label} filesystem", env)
        if aside is not None:
            _run(["debugfs", "-w", "-f", "-", str(image)], f"adding the late files of the {label} filesystem", env,
                 stdin="\n".join(aside.commands()) + "\n")
    finally:
        if aside is not None:
            aside.put_back()
    if csum_seed:
        # tune2fs writes the UUID into every superblock: debugfs' ssv would change the primary only, and a backup
        # that differs from it in its UUID makes the first boot's fsck check the root and ask for a reboot
        _run(["tune2fs", "-U", fs_uuid, str(image)], f"setting the UUID of the {label} filesystem", env)
    commands = [f"sif <{i}> {field} @{mtime}" for i, mtime in _mtimes(image).items()
                for field in ("ctime", "atime", "crtime")]
    # mkfs -d gives the filesystem's root 0755 and its own time: once mounted it is the mount point (/tmp: 1777)
    commands += [f"sif <2> mode 0{top.st_mode:o}", f"sif <2> mtime @{int(top.st_mtime)}"]
    for field in ("ctime", "atime", "crtime"):
        commands.append(f"sif <2> {field} @{int(top.st_mtime)}")
    commands += ["ssv kbytes_written 0", f"ssv wtime @{epoch}", f"ssv lastcheck @{epoch}"]
    _run(["debugfs", "-w", "-f", "-", str(image)], f"fixing the times of the {label} filesystem", env,
         stdin="\n".join(commands) + "\n")


def make_vfat(tree: Path, image: Path, *, size: int, label: str, volume_id: str, epoch: int) -> None:
    """A FAT32 image (the EFI system partition) holding `tree`, every file and directory dated `epoch`."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in (*dirnames, *filenames):
            os.utime(os.path.join(dirpath, name), (epoch, epoch), follow_symlinks=False)
    image.unlink(missing_ok=True)
    with image.open("wb") as handle:
        handle.truncate(size)
    # FAT stores local times: pinned to UTC, or the same version's ESP differs between time zones
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C", "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC0"}
    # --invariant first: it also sets the volume id (to 1234ABCD), so a -i before it would be overridden
    _run(["mkfs.vfat", "--invariant", "-F", "32", "-n", label.upper()[:11], "-i", volume_id, str(image)],
         "making the EFI system partition", env)
    entries = sorted(str(p) for p in tree.iterdir())
    if entries:
        _run(["mcopy", "-s", "-p", "-m", "-i", str(image), *entries, "::/"], "filling the EFI system partition", env)
