"""`bake.py disk`: a version's bootable GPT disk (UEFI, ESP + ext4 root + the layout's separate partitions).

Steps: unpack the version's image, cut it into one tree per partition, write fstab and the ESP, make each
filesystem image offline (filesystems.py), lay them into a GPT with systemd-repart (CopyBlocks, partition UUIDs
given), punch the zero blocks out (the raw disk stays sparse), and move the finished file into place: the
catalog lists it only after that rename, so no half disk is ever listed, and a killed build leaves only its
work directory, which the next `disk` run (or gc) removes. Every identifier (disk GUID, partition UUIDs,
filesystem UUIDs, volume id) comes from the version's input digest and every time from its build time (or the
files' own), so the same version always gives the same bytes; the hash and checksum seeds are the image's and the
files of the last role go in last, so the next version's disk differs in few blocks (an incremental publish).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bakery.disks import esp, filesystems, tree
from bakery.disks.layout import GIB, MIB, Layout, Partition, fstab
from bakery.errors import OperationError

NAMESPACE = uuid.UUID("6f1c3a52-0d7e-4d0b-9a53-2f0a8f1c9e41")  # bakery's namespace for disk identifiers
ROOT = "root"


@dataclass
class DiskPlan:
    """What one build needs to know about the version."""

    image: str
    version: str
    image_ref: str
    input_digest: str
    build_time: str
    layout: Layout
    under_ref: str = ""  # the cached layer under the image's last role ('' unknown): what is not late

    @property
    def epoch(self) -> int:
        # the build time is UTC (its Z): read as local time, the disk's bytes would depend on the host's zone
        return int(datetime.strptime(self.build_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())

    def ident(self, purpose: str) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{self.image}:{self.version}:{self.input_digest}:{purpose}"))

    def image_ident(self, purpose: str) -> str:
        """The same for every version of the image: seeds that would otherwise change every metadata block."""
        return str(uuid.uuid5(NAMESPACE, f"{self.image}:{purpose}"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


def build_raw(plan: DiskPlan, workdir: Path, size: int) -> tuple[Path, dict[str, Any]]:
    """The raw disk in `workdir`; returns it and the details recorded with it (partitions, command line)."""
    root = workdir / "tree"
    tree.unpack(plan.image_ref, root)
    late = tree.late_paths(plan.image_ref, plan.under_ref)
    mounts = [part.mount for part in plan.layout.all]
    os.utime(root, (plan.epoch, plan.epoch))  # the export has no entry for /: its time was the unpack's
    trees = tree.cut(root, plan.layout, workdir, plan.epoch)
    uuids = {part.name: plan.ident(f"partition/{part.name}") for part in plan.layout.all}
    root_uuid = plan.ident(f"partition/{ROOT}")
    tree.write_file(root, "etc/fstab", fstab(plan.layout, uuids, root_uuid), plan.epoch)
    tree.link_resolver(root, plan.epoch)
    cmdline = esp.build(root, trees["esp"], root_uuid, f"{plan.image}:{plan.version}")
    images = workdir / "fs"
    images.mkdir()
    for part in plan.layout.all:
        _filesystem(plan, part, trees[part.name], images / f"{part.name}.img",
                    tree.late_under(late, part.mount, mounts))
    root_size = filesystems.fitting_size(root, 512 * MIB)
    filesystems.make_ext4(root, images / f"{ROOT}.img", size=root_size, label=ROOT, fs_uuid=plan.ident(f"fs/{ROOT}"),
                          hash_seed=plan.image_ident(f"hash/{ROOT}"), epoch=plan.epoch,
                          csum_seed=plan.image_ident(f"csum/{ROOT}"), late=tree.late_under(late, "/", mounts))
    shutil.rmtree(root)
    for path in trees.values():
        shutil.rmtree(path)
    disk = workdir / "disk.raw"
    total = _gpt(plan, images, workdir / "repart.d", disk, size, root_uuid, uuids)
    partitions = [{"name": p.name, "mount": p.mount, "uuid": uuids[p.name], "bytes": p.size,
                   "options": list(p.options)} for p in plan.layout.all]
    partitions.append({"name": ROOT, "mount": "/", "uuid": root_uuid, "bytes": root_size, "options": []})
    return disk, {"partitions": partitions, "kernel_cmdline": cmdline, "disk_bytes": total}


def _filesystem(plan: DiskPlan, part: Partition, source: Path, image: Path, late: set[str]) -> None:
    if part.filesystem == "vfat":
        filesystems.make_vfat(source, image, size=part.size, label="ESP", volume_id=plan.input_digest[-8:],
                              epoch=plan.epoch)
        return
    size = max(part.size, filesystems.fitting_size(source, 0)) if part.mount == "/var" else part.size
    try:
        filesystems.make_ext4(source, image, size=size, label=part.name, fs_uuid=plan.ident(f"fs/{part.name}"),
                              hash_seed=plan.image_ident(f"hash/{part.name}"), epoch=plan.epoch,
                              csum_seed=plan.image_ident(f"csum/{part.name}"), late=late)
    except OperationError as exc:
        raise OperationError(f"the {part.mount} partition ({part.size // MIB} MiB) cannot hold the image's "
                             f"{part.mount}: give it a larger size in bakery.yml images.{plan.image}.disk ({exc})"
                             ) from exc


def _gpt(plan: DiskPlan, images: Path, definitions: Path, disk: Path, size: int, root_uuid: str,
         uuids: dict[str, str]) -> int:
    """Lay the filesystem images into a GPT (root last, so the first boot can grow it); returns the disk size."""
    definitions.mkdir()
    order = [*plan.layout.all, None]
    for index, part in enumerate(order):
        name = part.name if part is not None else ROOT
        kind = "esp" if part is not None and part.filesystem == "vfat" else "root" if part is None else "linux-generic"
        image = images / f"{name}.img"
        length = image.stat().st_size
        (definitions / f"{index:02d}-{name}.conf").write_text(
            f"[Partition]\nType={kind}\nLabel={name}\nUUID={uuids.get(name, root_uuid)}\nCopyBlocks={image}\n"
            f"SizeMinBytes={length}\nSizeMaxBytes={length}\n", encoding="utf-8")
    needed = sum(image.stat().st_size for image in images.glob("*.img")) + 2 * MIB  # + the GPT at both ends
    total = size or -(-needed // GIB) * GIB
    if total < needed:
        raise OperationError(f"--size {total // MIB} MiB is smaller than the disk needs ({-(-needed // MIB)} MiB)")
    argv = ["systemd-repart", "--empty=create", f"--size={total}", f"--definitions={definitions}",
            f"--seed={plan.ident('disk')}", "--dry-run=no", "--no-pager", str(disk)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode != 0:
        raise OperationError(f"systemd-repart failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    for image in images.iterdir():
        image.unlink()
    subprocess.run(["fallocate", "--dig-holes", str(disk)], check=True, timeout=1800)
    return total


def to_qcow2(raw: Path, target: Path) -> None:
    proc = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(target)],
                          capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode != 0:
        raise OperationError(f"qemu-img convert failed: {proc.stderr.strip()}")
