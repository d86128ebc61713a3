"""The secret scan of a raw disk read without mounting: real GPT disks made in a temporary directory with sfdisk on a
file, mkfs.ext4 -d and mkfs.vfat + mcopy (no podman, no loop devices, no root needed)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from bakery.verify import disk_scan
from bakery.verify.disk_scan import BIOS_BOOT_TYPE, ESP_TYPE
from tests.unit.test_secret_archives import PEM

pytestmark = pytest.mark.unit

MIB = 1024 * 1024
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def ext4(tmp: Path, name: str, files: dict[str, str], size_mib: int = 8, last_mounted: str = "") -> Path:
    image = tmp / f"{name}.img"
    source = tree(tmp / f"{name}-tree", files)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", name, "-d", str(source), str(image), f"{size_mib}M"], check=True)
    if last_mounted:
        subprocess.run(["tune2fs", "-M", last_mounted, str(image)], check=True, capture_output=True)
    return image


def vfat(tmp: Path, files: dict[str, str], size_mib: int = 8) -> Path:
    image = tmp / "esp.img"
    subprocess.run(["mkfs.vfat", "-C", "-n", "ESP", str(image), str(size_mib * 1024)], check=True,
                   capture_output=True)
    source = tree(tmp / "esp-tree", files)
    for top in source.iterdir():
        subprocess.run(["mcopy", "-s", "-i", str(image), str(top), "::/"], check=True,
                       env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    return image


def raw(tmp: Path, size_mib: int, content: bytes = b"") -> Path:
    image = tmp / f"raw-{len(list(tmp.glob('raw-*')))}.img"
    with image.open("wb") as out:
        out.truncate(size_mib * MIB)
        out.write(content)
    return image


def gpt_disk(tmp: Path, parts: list[tuple[str, str, Path]], uuids: dict[str, str] | None = None) -> Path:
    """A GPT disk holding each (label, type GUID, filesystem image) in order, 1 MiB aligned."""
    disk = tmp / "disk.raw"
    lines, start = ["label: gpt"], MIB
    for label, kind, image in parts:
        size = image.stat().st_size
        named = f", uuid={uuids[label]}" if uuids and label in uuids else ""
        lines.append(f"start={start // 512}, size={size // 512}, type={kind}, name={label}{named}")
        start += -(-size // MIB) * MIB
    with disk.open("wb") as out:
        out.truncate(start + MIB)
    subprocess.run(["sfdisk", "-q", str(disk)], input="\n".join(lines) + "\n", text=True, check=True)
    with disk.open("r+b") as out:
        offset = MIB
        for _, _, image in parts:
            out.seek(offset)
            out.write(image.read_bytes())
            offset += -(-image.stat().st_size // MIB) * MIB
    return disk


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_a_planted_key_is_found_with_its_partition_and_absolute_path(tmp_path, work):
    disk = gpt_disk(tmp_path, [
        ("esp", ESP_TYPE, vfat(tmp_path, {"EFI/BOOT/BOOTX64.EFI": "boot", "EFI/keys/signing.pem": PEM})),
        ("root", LINUX, ext4(tmp_path, "root", {"etc/hostname": "web\n"})),
        ("var", LINUX, ext4(tmp_path, "var", {"lib/app/deploy.pem": PEM, "lib/app/ok.txt": "fine\n"})),
    ])

    scan = disk_scan.scan_disk(disk, work, [], by_label={"root": "/", "var": "/var"})

    assert not scan.passed and not scan.failures
    where = {(f.path, f.layer) for f in scan.findings}
    assert ("/var/lib/app/deploy.pem", "partition 3 'var' (/var)") in where
    assert ("/boot/efi/EFI/keys/signing.pem", "partition 1 'esp' (/boot/efi)") in where  # the ESP by its GPT type
    assert not any(f.path.startswith("/etc") for f in scan.findings)
    assert [p.filesystem for p in scan.partitions] == ["vfat", "ext4", "ext4"]
    assert list(work.iterdir()) == []  # each partition's copy is removed once scanned


def test_a_clean_disk_has_no_finding_and_every_file_was_read(tmp_path, work):
    disk = gpt_disk(tmp_path, [
        ("esp", ESP_TYPE, vfat(tmp_path, {"EFI/BOOT/BOOTX64.EFI": "boot"})),
        ("root", LINUX, ext4(tmp_path, "root", {"etc/hostname": "web\n", "usr/share/doc/a": "text\n"})),
    ])

    scan = disk_scan.scan_disk(disk, work, [], by_label={"root": "/"})

    assert scan.passed and scan.findings == []
    assert [(p.mount, p.files) for p in scan.partitions] == [("/boot/efi", 1), ("/", 2)]


def test_a_partition_of_an_unknown_filesystem_fails_the_scan_naming_it(tmp_path, work):
    disk = gpt_disk(tmp_path, [
        ("root", LINUX, ext4(tmp_path, "root", {"etc/hostname": "web\n"})),
        ("blob", LINUX, raw(tmp_path, 2, os.urandom(64 * 1024))),
        ("xfsdata", LINUX, raw(tmp_path, 2, b"XFSB" + bytes(100))),
        ("unused", LINUX, raw(tmp_path, 2)),
    ])

    scan = disk_scan.scan_disk(disk, work, [], by_label={"root": "/"})

    assert not scan.passed and scan.findings == []
    failed = {p.partition.number: p.error for p in scan.failures}
    assert sorted(failed) == [2, 3]
    assert failed[2].startswith("partition 2 'blob' (mount unknown) holds no filesystem the scan recognises")
    assert "a xfs filesystem" in failed[3] and "partition 3 'xfsdata'" in failed[3]
    assert scan.partitions[3].filesystem == "empty" and not scan.partitions[3].error  # nothing there to hide


def test_an_ext4_partition_its_tools_cannot_read_fails_the_scan(tmp_path, work):
    image = ext4(tmp_path, "root", {"etc/hostname": "web\n"})
    damaged = bytearray(image.read_bytes())
    damaged[1024:1080] = os.urandom(56)  # the superblock's counts, its magic kept
    image.write_bytes(bytes(damaged))
    disk = gpt_disk(tmp_path, [("root", LINUX, image)])

    scan = disk_scan.scan_disk(disk, work, [], by_label={"root": "/"})

    [failed] = scan.failures
    assert failed.filesystem == "ext4" and failed.error.startswith("partition 1 'root' (/): e2fsck finds its ext "
                                                                   "filesystem inconsistent (ext2fs_open2: ")
    assert failed.error.endswith("it was not scanned")


def test_the_mount_comes_from_the_disk_record_then_the_filesystem_then_nowhere(tmp_path, work):
    part_uuid = str(uuid.uuid4())
    disk = gpt_disk(tmp_path, [
        ("srv", LINUX, ext4(tmp_path, "srv", {"keys/a.pem": PEM}, last_mounted="/srv")),
        ("home", LINUX, ext4(tmp_path, "home", {"u/b.pem": PEM})),
        ("opt", LINUX, ext4(tmp_path, "opt", {"c.pem": PEM})),
    ], uuids={"home": part_uuid})

    scan = disk_scan.scan_disk(disk, work, [], by_uuid={part_uuid.upper(): "/home"}, by_label={"home": "/wrong"})

    assert sorted(f.path for f in scan.findings) == ["/c.pem", "/home/u/b.pem", "/srv/keys/a.pem"]
    assert {f.layer for f in scan.findings if f.path == "/c.pem"} == {"partition 3 'opt' (mount unknown)"}


def test_a_disk_without_a_partition_table_is_one_filesystem(tmp_path, work):
    image = ext4(tmp_path, "whole", {"root/.ssh/id_rsa": PEM}, last_mounted="/")

    scan = disk_scan.scan_disk(image, work, [])

    [part] = scan.partitions
    assert part.partition.number == 0 and part.mount == "/"
    assert "/root/.ssh/id_rsa" in {f.path for f in scan.findings}


def test_a_bios_boot_partition_is_scanned_as_raw_bytes(tmp_path, work):
    boot_code = raw(tmp_path, 1, b"\xeb\x63\x90" + PEM.encode())
    disk = gpt_disk(tmp_path, [("bios", BIOS_BOOT_TYPE, boot_code),
                               ("root", LINUX, ext4(tmp_path, "root", {"etc/hostname": "web\n"}))])

    scan = disk_scan.scan_disk(disk, work, [], by_label={"root": "/"})

    assert not scan.failures and scan.partitions[0].filesystem == "bios-boot"
    assert [f.path for f in scan.findings] == ["/partition-1.bin"]


def test_a_file_of_mode_000_is_copied_and_scanned(tmp_path, work):
    image = ext4(tmp_path, "root", {"etc/secret/k.pem": PEM})
    subprocess.run(["debugfs", "-w", "-R", "set_inode_field /etc/secret/k.pem mode 0100000", str(image)],
                   check=True, capture_output=True)
    disk = gpt_disk(tmp_path, [("root", LINUX, image)])

    scan = disk_scan.scan_disk(disk, work, [], by_label={"root": "/"})

    assert scan.partitions[0].files == 1 and [f.path for f in scan.findings] == ["/etc/secret/k.pem"]


def crafted_ext4(tmp: Path, files: dict[str, str], renames: dict[str, str]) -> Path:
    """An ext4 image whose directory entries are then renamed in place, as a crafted AMI could hold them: each new
    name has its old one's length; without metadata checksums, so that only the names are wrong."""
    image = tmp / "crafted.img"
    source = tree(tmp / "crafted-tree", files)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^metadata_csum", "-d", str(source), str(image), "8M"], check=True)
    data = image.read_bytes()
    for old, new in renames.items():
        assert len(old) == len(new) and data.count(old.encode()) == 1, old
        data = data.replace(old.encode(), new.encode())
    image.write_bytes(data)
    return image


def test_a_duplicate_name_that_would_hide_a_key_from_the_copy_fails_the_scan(tmp_path):
    # two entries 'deploy': a copy keeps the last (benign), the kernel's lookup finds the first (the key)
    fs = crafted_ext4(tmp_path, {"deploy": PEM, "deplox": "benign\n"}, {"deplox": "deploy"})
    disk = gpt_disk(tmp_path, [("root", LINUX, fs)])

    result = disk_scan.scan_disk(disk, tmp_path / "work", [])

    assert not result.passed
    [failed] = result.failures
    assert "Duplicate entry 'deploy'" in failed.error and "not scanned" in failed.error


def test_a_name_with_a_slash_fails_the_scan_and_nothing_is_written_outside_the_work_directory(tmp_path):
    escaped = tmp_path / "escaped"
    name = "../" * 12 + str(escaped).lstrip("/")
    fs = crafted_ext4(tmp_path, {"x" * len(name): "benign\n"}, {"x" * len(name): name})
    disk = gpt_disk(tmp_path, [("root", LINUX, fs)])

    result = disk_scan.scan_disk(disk, tmp_path / "work", [])

    assert not result.passed and "illegal characters" in result.failures[0].error
    assert not escaped.exists()


def test_a_last_mounted_path_that_climbs_out_is_not_a_host_path(tmp_path):
    outside = tmp_path / "outside"
    fs = ext4(tmp_path, "data", {"root/.ssh/id_ed25519": PEM}, last_mounted=f"/../../../../../../../..{outside}")
    disk = gpt_disk(tmp_path, [("data", LINUX, fs)])

    result = disk_scan.scan_disk(disk, tmp_path / "work", [])

    assert not outside.exists()
    assert [f.path for f in result.findings] == ["/root/.ssh/id_ed25519"]  # scanned, as if mounted at /
    assert result.partitions[0].mount == ""


def test_a_fat_duplicate_name_fails_the_scan(tmp_path):
    esp = vfat(tmp_path, {"KEY.TXT": PEM, "ZZZ.TXT": "benign\n"})
    data = esp.read_bytes()
    assert data.count(b"ZZZ     TXT") == 1
    esp.write_bytes(data.replace(b"ZZZ     TXT", b"KEY     TXT"))  # two KEY.TXT: a copy keeps the benign one
    disk = gpt_disk(tmp_path, [("esp", ESP_TYPE, esp)])

    result = disk_scan.scan_disk(disk, tmp_path / "work", [])

    assert not result.passed and "Duplicate directory entry" in result.failures[0].error
