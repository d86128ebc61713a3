"""roles/base/files/bakery-data-volume on real block devices: loop devices over files, real mkfs.ext4 and mount.

The loop tests need root and losetup (CI has both, as this host does); skipped cleanly where either is missing. Their
candidate blank disks are limited to the test's loop device (BAKERY_DATA_VOLUME_DISKS), so no other disk is ever
looked at. Which disks the script takes for EBS is read from a sysfs tree of real files the test makes.
"""

import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import uuid
from types import SimpleNamespace

import pytest

from bakery.aws.lifecycle_hooks import HEARTBEAT_SECONDS, INSTANCE_WAIT_SECONDS
from tests.conftest import REPO

SCRIPT = REPO / "roles" / "base" / "files" / "bakery-data-volume"
UNIT = REPO / "roles" / "base" / "templates" / "bakery-data-volume.service.j2"

pytestmark = pytest.mark.unit
needs_loop = pytest.mark.skipif(shutil.which("losetup") is None or os.geteuid() != 0,
                                reason="needs root and losetup (CI has both)")


def load_script():
    loader = importlib.machinery.SourceFileLoader("bakery_data_volume", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


@pytest.fixture
def disk(tmp_path):
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as out:
        out.truncate(32 * 1024 * 1024)
    made = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"no loop device here: {made.stderr.strip()}")
    device = made.stdout.strip()
    yield device
    subprocess.run(["umount", "-l", str(tmp_path / "data")], capture_output=True, check=False)
    subprocess.run(["losetup", "-d", device], check=True)


def run_script(tmp_path, device, value, wait="2"):
    runtime = tmp_path / "runtime.env"
    runtime.write_text('LOG_LEVEL="info"\n' + (f'BAKERY_DATA_VOLUME="{value}"\n' if value else ""))
    env = {**os.environ, "BAKERY_RUNTIME_FILE": str(runtime), "BAKERY_DATA_VOLUME_WAIT_SECONDS": wait,
           "BAKERY_DATA_VOLUME_DISKS": device}
    return subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


def blkid(device, tag):
    return subprocess.run(["blkid", "-p", "-s", tag, "-o", "value", device], capture_output=True,
                          text=True, check=False).stdout.strip()


def findmnt(path):
    return subprocess.run(["findmnt", "-n", "-o", "SOURCE", "--mountpoint", str(path)], capture_output=True,
                          text=True, check=False).stdout.strip()


def label():
    return "t" + uuid.uuid4().hex[:12]


@needs_loop
def test_a_blank_volume_is_formatted_with_the_label_and_mounted_then_mounted_again_without_mkfs(tmp_path, disk):
    name, data = label(), tmp_path / "data"

    first = run_script(tmp_path, disk, f"{name}:{data}")

    assert first.returncode == 0, first.stderr
    assert (blkid(disk, "TYPE"), blkid(disk, "LABEL")) == ("ext4", name)
    assert findmnt(data) == disk and "formatted the new volume" in first.stderr
    (data / "items").write_text("kept\n")
    subprocess.run(["umount", str(data)], check=True)

    again = run_script(tmp_path, disk, f"{name}:{data}")  # the next instance: found by its label, never formatted

    assert again.returncode == 0, again.stderr
    assert "formatted" not in again.stderr and (data / "items").read_text() == "kept\n"


@needs_loop
def test_a_disk_with_another_signature_is_never_formatted(tmp_path, disk):
    subprocess.run(["mkswap", disk], capture_output=True, check=True)

    result = run_script(tmp_path, disk, f"{label()}:{tmp_path / 'data'}", wait="1")

    assert result.returncode == 1 and "a disk with another signature is never formatted" in result.stderr
    assert blkid(disk, "TYPE") == "swap" and findmnt(tmp_path / "data") == ""


@needs_loop
def test_no_data_volume_in_the_runtime_file_does_nothing(tmp_path, disk):
    result = run_script(tmp_path, disk, None)

    assert result.returncode == 0 and "no data volume" in result.stderr
    assert blkid(disk, "TYPE") == "" and not (tmp_path / "data").exists()


def test_the_instance_waits_for_its_volume_as_long_as_the_launching_hook_holds_it():
    script = load_script()
    timeout = re.search(r"^TimeoutStartSec=(\d+)min$", UNIT.read_text(), re.M)

    assert script.wait_seconds() == INSTANCE_WAIT_SECONDS  # bakery abandons a launch it could not serve by then
    assert INSTANCE_WAIT_SECONDS < int(timeout.group(1)) * 60 < HEARTBEAT_SECONDS + 600


def sys_block(root, disks):
    for name, (model, serial) in disks.items():
        device = root / name / "device"
        device.mkdir(parents=True)
        (device / "model").write_text(model + "\n")
        (device / "serial").write_text(serial + "\n")


def test_only_ebs_disks_are_data_volume_candidates_never_an_instance_store(tmp_path, monkeypatch, capsys):
    script = load_script()
    sys_block(tmp_path, {"nvme0n1": ("Amazon Elastic Block Store", "vol0aaaaaaaaaaaaaaaa"),
                         "nvme1n1": ("Amazon EC2 NVMe Instance Storage", "AWS1B2C3D4E5F6"),
                         "nvme2n1": ("", "vol0bbbbbbbbbbbbbbbb"),  # an EBS volume whose model reads empty
                         "xvdb": ("", ""),  # Xen: an ephemeral disk looks like any other
                         "xvdf": ("", "")})  # Xen: where bakery attaches the volume (/dev/sdf)
    lsblk = "".join(f"/dev/{name} {kind} 0\n" for name, kind in (
        ("nvme0n1", "disk"), ("nvme1n1", "disk"), ("nvme2n1", "disk"), ("xvdb", "disk"), ("xvdf", "disk"),
        ("sr0", "rom")))
    monkeypatch.delenv("BAKERY_DATA_VOLUME_DISKS", raising=False)
    monkeypatch.setattr(script, "SYS_BLOCK", str(tmp_path), raising=False)
    monkeypatch.setattr(script, "run", lambda *args: SimpleNamespace(stdout=lsblk, stderr="", returncode=0))

    assert script.candidate_disks() == ["/dev/nvme0n1", "/dev/nvme2n1", "/dev/xvdf"]
    err = capsys.readouterr().err
    assert "/dev/nvme1n1 is not considered" in err and "/dev/xvdb is not considered" in err
    script.candidate_disks()
    assert capsys.readouterr().err == ""  # said once, not every poll
