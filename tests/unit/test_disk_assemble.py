"""Assembling the disk: the image's tree cut into one directory per partition, the filesystem images laid into a
GPT by systemd-repart, and the whole raw disk built twice from one version to the same bytes. The image is a small
fake root tree; `podman export` (tree.unpack) is replaced by a copy of it, everything else runs for real."""

import os
import shutil
import struct
import subprocess
import time
import uuid

import pytest

from bakery.disks import assemble, esp, filesystems, tree
from bakery.disks.layout import ESP, GIB, MIB, Layout, Partition
from bakery.errors import ConfigError, OperationError
from tests.conftest import REPO

pytestmark = pytest.mark.unit

EPOCH = 1_700_000_000
MTIME = 1_600_000_000
DIGEST = "sha256:" + "5e" * 32
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
LINUX_TYPE = "0fc63daf-8483-4772-8e79-3d69d8477de4"
ROOT_X86_64_TYPE = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
TINY = Layout((Partition("/var/log", 8 * MIB, ("nodev", "nosuid", "noexec")), Partition("/home", 4 * MIB)))


def fake_image(root):
    """What `podman export` of a bootable version unpacks to, in miniature."""
    for directory, mode in (("usr/bin", 0o755), ("etc/bakery/kernel-cmdline.d", 0o755), ("var/lib/app", 0o755),
                            ("var/log/audit", 0o750), ("tmp", 0o1777), ("home/ops", 0o700), ("boot", 0o755),
                            ("usr/lib/systemd/boot/efi", 0o755)):
        (root / directory).mkdir(parents=True, exist_ok=True)
        os.chmod(root / directory, mode)
    os.symlink("usr/bin", root / "bin")
    (root / "usr/bin/sh").write_bytes(b"\x7fELF shell")
    (root / "etc/hostname").write_text("vm\n")
    (root / "etc/fstab").write_text("# UNCONFIGURED FSTAB FOR BASE SYSTEM\n")
    (root / "etc/bakery/kernel-cmdline.d/10-boot.conf").write_text("console=ttyS0,115200n8\n")
    (root / "var/lib/app/state").write_text("s\n")
    (root / "var/log/syslog").write_text("log\n")
    (root / "var/log/audit/audit.log").write_text("type=DAEMON_START\n")
    (root / "home/ops/.profile").write_text("# ops\n")
    (root / "boot/vmlinuz-6.1.0-28-cloud-amd64").write_bytes(b"kernel" * 1000)
    (root / "boot/initrd.img-6.1.0-28-cloud-amd64").write_bytes(b"initrd" * 1000)
    (root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi").write_bytes(b"MZ systemd-boot")
    os.chown(root / "var/log/audit", 0, 4)
    os.chown(root / "home/ops", 1000, 1000)
    for path in (*root.rglob("*"), root):
        os.utime(path, (MTIME, MTIME), follow_symlinks=False)
    return root


def times(path):
    st = os.lstat(path)
    return st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns


def test_cut_moves_each_partition_out_and_leaves_its_mount_point_as_it_was(tmp_path):
    root = fake_image(tmp_path / "root")
    (tmp_path / "work").mkdir()
    before = {mount: times(root / mount) for mount in ("", "var", "var/log", "var/log/audit", "tmp", "home", "boot")}
    trees = tree.cut(root, Layout((*TINY.partitions, Partition("/var", 64 * MIB), Partition("/tmp", 4 * MIB),
                                   Partition("/var/log/audit", 4 * MIB))), tmp_path / "work", EPOCH)
    assert sorted(trees) == ["esp", "home", "tmp", "var", "var-log", "var-log-audit"]
    assert (trees["var-log-audit"] / "audit.log").read_text() == "type=DAEMON_START\n"
    assert sorted(p.name for p in trees["var-log"].iterdir()) == ["audit", "syslog"]
    assert list((trees["var-log"] / "audit").iterdir()) == []  # nested: the mount point inside its parent partition
    assert sorted(p.name for p in trees["var"].iterdir()) == ["lib", "log"]
    assert (trees["home"] / "ops/.profile").is_file()
    for mount in ("var", "tmp", "home"):
        assert list((root / mount).iterdir()) == [], mount
        assert times(root / mount) == before[mount], mount  # mode, owner and time of the mount point kept
    assert times(trees["var-log-audit"]) == before["var/log/audit"]  # the partition's root: the directory itself
    assert times(trees["var-log"] / "audit") == before["var/log/audit"]
    assert times(trees["var"] / "log") == before["var/log"]
    assert times(root) == before[""] and times(root / "boot") == before["boot"]  # parents' times put back
    assert trees["esp"].is_dir() and list(trees["esp"].iterdir()) == []  # the image has no /boot/efi: made
    assert (root / "boot/efi").is_dir() and os.lstat(root / "boot/efi").st_mtime == EPOCH


@pytest.mark.parametrize("make, fragment", [
    (lambda path: os.symlink("/srv/audit", path), "/var/log/audit is not a directory in the image"),
    (lambda path: path.write_text("x"), "/var/log/audit is not a directory in the image"),
])
def test_a_mount_point_that_is_a_symlink_or_a_file_is_refused(tmp_path, make, fragment):
    root = fake_image(tmp_path / "root")
    (tmp_path / "work").mkdir()
    shutil.rmtree(root / "var/log/audit")
    make(root / "var/log/audit")
    with pytest.raises(OperationError, match=fragment):
        tree.cut(root, Layout((Partition("/var/log/audit", 4 * MIB),)), tmp_path / "work", EPOCH)


def test_a_mount_point_reached_through_a_symlink_is_refused_and_the_host_left_alone(tmp_path):
    """/var -> /srv (absolute) in the image names the build host's /srv: cutting /var/log/audit out of it would
    move the host's directory into the disk."""
    root, host = fake_image(tmp_path / "root"), tmp_path / "host"
    (host / "log/audit").mkdir(parents=True)
    (host / "log/audit/host.log").write_text("the host's\n")
    shutil.rmtree(root / "var")
    os.symlink(host, root / "var")
    (tmp_path / "work").mkdir()
    with pytest.raises(OperationError, match="/var is a symbolic link"):
        tree.cut(root, Layout((Partition("/var/log/audit", 4 * MIB),)), tmp_path / "work", EPOCH)
    assert (host / "log/audit/host.log").read_text() == "the host's\n"


def test_a_partition_whose_parent_the_image_lacks_is_refused(tmp_path):
    root = fake_image(tmp_path / "root")
    (tmp_path / "work").mkdir()
    with pytest.raises(OperationError, match="the image has no directory srv for the partition mounted at /srv/data"):
        tree.cut(root, Layout((Partition("/srv/data", 4 * MIB),)), tmp_path / "work", EPOCH)


def test_write_file_replaces_the_image_s_file_with_a_fixed_time_and_keeps_the_directory_s(tmp_path):
    root = fake_image(tmp_path / "root")
    os.symlink("/proc/mounts", root / "etc/mtab")
    os.utime(root / "etc", (MTIME, MTIME))
    tree.write_file(root, "etc/mtab", "x\n", EPOCH)
    tree.write_file(root, "etc/fstab", "PARTUUID=a / ext4 defaults 0 1\n", EPOCH)
    fstab = os.lstat(root / "etc/fstab")
    assert (root / "etc/fstab").read_text() == "PARTUUID=a / ext4 defaults 0 1\n"
    assert fstab.st_mtime == EPOCH and fstab.st_mode & 0o7777 == 0o644 and (fstab.st_uid, fstab.st_gid) == (0, 0)
    assert not (root / "etc/mtab").is_symlink()
    assert os.lstat(root / "etc").st_mtime == MTIME


def test_write_file_refuses_a_directory_that_links_out_of_the_image(tmp_path):
    root, host = fake_image(tmp_path / "root"), tmp_path / "host-etc"
    host.mkdir()
    (host / "fstab").write_text("the host's fstab\n")
    shutil.rmtree(root / "etc")
    os.symlink(host, root / "etc")
    with pytest.raises(OperationError, match="/etc is a symbolic link"):
        tree.write_file(root, "etc/fstab", "x\n", EPOCH)
    assert (host / "fstab").read_text() == "the host's fstab\n"


def plan(layout=TINY, build_time="2024-05-01T12:00:00Z"):
    return assemble.DiskPlan("webapp", "20240501.001", "localhost/bakery/webapp:20240501.001", DIGEST, build_time,
                             layout)


def test_every_time_of_the_disk_is_the_build_time_in_utc_whatever_the_host_s_time_zone(monkeypatch):
    """A disk built in CI (UTC) and on a laptop (Europe/Berlin) from one version must be the same bytes."""
    epochs = set()
    for zone in ("UTC", "Europe/Berlin", "America/New_York"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        epochs.add(plan(build_time="2024-05-01T12:00:00Z").epoch)
    monkeypatch.delenv("TZ")
    time.tzset()
    assert epochs == {1714564800}


def test_identifiers_are_derived_from_the_version_and_its_inputs():
    a, b = plan(), plan()
    other = assemble.DiskPlan("webapp", "20240501.001", "r", "sha256:" + "00" * 32, "2024-05-01T12:00:00Z", TINY)
    assert a.ident("partition/root") == b.ident("partition/root") != other.ident("partition/root")
    assert a.ident("partition/root") != a.ident("partition/esp")
    assert uuid.UUID(a.ident("disk")).version == 5


def gpt(disk):
    """(disk GUID, [(type, uuid, label, first byte, size)]) read from the primary GPT header, as firmware does."""
    with disk.open("rb") as handle:
        handle.seek(512)
        header = handle.read(92)
        assert header[:8] == b"EFI PART"
        disk_guid = uuid.UUID(bytes_le=header[56:72])
        entries_lba, count, size = struct.unpack_from("<QII", header, 72)
        handle.seek(entries_lba * 512)
        table = handle.read(count * size)
    parts = []
    for index in range(count):
        entry = table[index * size:(index + 1) * size]
        if entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        parts.append((str(uuid.UUID(bytes_le=entry[:16])), str(uuid.UUID(bytes_le=entry[16:32])),
                      entry[56:128].decode("utf-16-le").rstrip("\0"), first * 512, (last - first + 1) * 512))
    return disk_guid, parts


def filesystem_images(work, the_plan):
    """One small filesystem image per partition of the plan, plus the root's."""
    images = work / "fs"
    images.mkdir(parents=True)
    source = work / "esp-tree"
    (source / "EFI/BOOT").mkdir(parents=True)
    (source / "EFI/BOOT/BOOTX64.EFI").write_bytes(b"MZ")
    filesystems.make_vfat(source, images / "esp.img", size=40 * MIB, label="ESP", volume_id="5e5e5e5e", epoch=EPOCH)
    for part in (*the_plan.layout.partitions, Partition("/", 8 * MIB)):
        name = part.name if part.mount != "/" else "root"
        content = work / f"tree-{name}"
        content.mkdir()
        (content / "hello").write_text(name)
        for path in (content, content / "hello"):
            os.utime(path, (MTIME, MTIME))
        filesystems.make_ext4(content, images / f"{name}.img", size=part.size, label=name,
                              fs_uuid=the_plan.ident(f"fs/{name}"), hash_seed=the_plan.ident(f"hash/{name}"),
                              epoch=EPOCH)
    return images


def laid_out(work, size=64 * MIB, the_plan=None):
    the_plan = the_plan or plan()
    images = filesystem_images(work, the_plan)
    contents = {p.stem: p.read_bytes() for p in images.iterdir()}
    uuids = {part.name: the_plan.ident(f"partition/{part.name}") for part in the_plan.layout.all}
    disk = work / "disk.raw"
    total = assemble._gpt(the_plan, images, work / "repart.d", disk, size, the_plan.ident("partition/root"), uuids)
    return the_plan, disk, total, contents


def test_the_gpt_holds_each_filesystem_image_under_its_uuid_and_label_with_the_root_last(tmp_path):
    the_plan, disk, total, contents = laid_out(tmp_path / "a")
    assert total == disk.stat().st_size == 64 * MIB
    _, parts = gpt(disk)
    assert [(kind, ident, label) for kind, ident, label, _, _ in parts] == [
        (ESP_TYPE, the_plan.ident("partition/esp"), "esp"),
        (LINUX_TYPE, the_plan.ident("partition/var-log"), "var-log"),
        (LINUX_TYPE, the_plan.ident("partition/home"), "home"),
        (ROOT_X86_64_TYPE, the_plan.ident("partition/root"), "root")]
    with disk.open("rb") as handle:
        for (_, _, label, offset, size), name in zip(parts, ("esp", "var-log", "home", "root"), strict=True):
            assert offset % MIB == 0 and size == len(contents[name])
            handle.seek(offset)
            assert handle.read(len(contents[name])) == contents[name], label
    assert parts[-1][3] == max(part[3] for part in parts)  # the root last: the first boot grows it to the end
    assert assemble.allocated_bytes(disk) < 8 * MIB  # zero blocks punched out
    assert list((tmp_path / "a/fs").iterdir()) == []  # the filesystem images are gone


def test_the_same_filesystems_laid_out_twice_give_the_same_disk(tmp_path):
    first, second = laid_out(tmp_path / "a")[1], laid_out(tmp_path / "b")[1]
    assert assemble.sha256_file(first) == assemble.sha256_file(second)
    assert gpt(first)[0] == gpt(second)[0]


def test_the_disk_guid_comes_from_the_version_not_from_the_build_host(tmp_path):
    """Without --seed, systemd-repart seeds from /etc/machine-id: the same on one host, different on the next."""
    other = assemble.DiskPlan("webapp", "20240501.002", "r", DIGEST, "2024-05-01T12:00:00Z", TINY)
    assert gpt(laid_out(tmp_path / "a")[1])[0] != gpt(laid_out(tmp_path / "b", the_plan=other)[1])[0]


def test_without_a_size_the_disk_is_the_smallest_whole_gib_and_a_too_small_size_is_refused(tmp_path):
    assert laid_out(tmp_path / "a", size=0)[2] == GIB
    with pytest.raises(OperationError, match=r"--size 32 MiB is smaller than the disk needs \(\d+ MiB\)"):
        laid_out(tmp_path / "b", size=32 * MIB)


def extract(disk, part, target):
    with disk.open("rb") as handle:
        handle.seek(part[3])
        target.write_bytes(handle.read(part[4]))
    return target


def unpacked_like_podman_export(image):
    """Copy the fake image the way `podman export | tar -x` leaves it: the top directory made now (the tar has no
    entry for it), so its time is the unpack's."""
    def unpack(_ref, root):
        shutil.copytree(image, root, symlinks=True)
        os.utime(root)
    return unpack


def build(work, monkeypatch, image):
    monkeypatch.setattr(tree, "unpack", unpacked_like_podman_export(image))
    monkeypatch.setattr(tree, "late_paths", lambda *_refs: set())  # no layers to diff
    work.mkdir()
    return assemble.build_raw(plan(Layout((Partition("/var/log", 8 * MIB, ("nodev", "nosuid", "noexec")),))),
                              work, 700 * MIB)


def test_the_raw_disk_of_one_version_is_the_same_bytes_whenever_it_is_built(tmp_path, monkeypatch):
    image = fake_image(tmp_path / "image")
    first, details = build(tmp_path / "a", monkeypatch, image)
    time.sleep(1.1)
    second = build(tmp_path / "b", monkeypatch, image)[0]
    assert assemble.sha256_file(first) == assemble.sha256_file(second)
    the_plan, (_, parts) = plan(), gpt(first)
    root_uuid = the_plan.ident("partition/root")
    assert [p["name"] for p in details["partitions"]] == ["esp", "var-log", "root"]
    assert details["kernel_cmdline"] == f"root=PARTUUID={root_uuid} ro console=ttyS0,115200n8"
    assert [p[1] for p in parts] == [p["uuid"] for p in details["partitions"]]
    root_fs = extract(first, parts[-1], tmp_path / "root.img")
    fstab = subprocess.run(["debugfs", "-R", "cat /etc/fstab", str(root_fs)], capture_output=True, text=True,
                           check=True).stdout
    assert f"PARTUUID={root_uuid} / ext4 defaults,x-systemd.growfs 0 1" in fstab
    assert f"PARTUUID={parts[1][1]} /var/log ext4 defaults,nodev,nosuid,noexec 0 2" in fstab
    assert f"PARTUUID={parts[0][1]} /boot/efi vfat" in fstab
    listing = subprocess.run(["debugfs", "-R", "ls -l /var/log", str(root_fs)], capture_output=True, text=True,
                             check=True).stdout
    assert "syslog" not in listing  # it lives on the /var/log partition
    log_fs = extract(first, parts[1], tmp_path / "log.img")
    assert "syslog" in subprocess.run(["debugfs", "-R", "ls /", str(log_fs)], capture_output=True, text=True,
                                      check=True).stdout
    entry = subprocess.run(["mtype", "-i", f"{first}@@{parts[0][3]}", "::/loader/entries/bakery.conf"],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    assert f"options {details['kernel_cmdline']}" in entry


def test_an_image_without_the_boot_role_is_refused_before_any_filesystem_is_made(tmp_path, monkeypatch):
    image = fake_image(tmp_path / "image")
    (image / esp.SYSTEMD_BOOT).unlink()
    with pytest.raises(ConfigError, match="list the boot role"):
        build(tmp_path / "a", monkeypatch, image)
    assert not (tmp_path / "a/fs").exists()


def test_the_esp_is_the_layout_s_first_partition_in_every_layout():
    assert TINY.all[0] is ESP and Layout(()).all == (ESP,)


# --- builder: publish atomically, cache, clean up after killed builds, name missing tools -------------------------

@pytest.fixture
def disk_project(tmp_path, monkeypatch):
    """A project with one ready version of a bootable (fake) image in its catalog; unpack copies that image."""
    from bakery.catalog import SqliteCatalog
    from bakery.config import Project

    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "bakery.yml", root / "bakery.yml")
    project = Project(root)
    catalog = SqliteCatalog(project.state_dir / "catalog.db")
    version = catalog.reserve_version("webapp", "bake-run", os.getpid())
    catalog.complete_version("webapp", version, image_ref=f"localhost/bakery/webapp:{version}", image_id="sha256:i",
                             input_digest=DIGEST, provenance={"build_time": "2024-05-01T12:00:00Z",
                                                              "input_digest": DIGEST}, layers=[])
    image = fake_image(tmp_path / "image")
    monkeypatch.setattr(tree, "unpack", lambda _ref, target: shutil.copytree(image, target, symlinks=True))
    monkeypatch.setattr(tree, "late_paths", lambda *_refs: set())  # no layers to diff
    yield project, catalog, catalog.resolve("webapp", None)
    catalog.close()


def make(disk_project, disk_format, size=700 * MIB):
    from bakery.disks import builder
    from bakery.progress import Progress

    project, catalog, record = disk_project
    return builder.make_disk(project, catalog, Progress(), record, Layout(()), disk_format, size)


def test_a_qcow2_disk_is_made_from_the_raw_one_and_both_are_recorded_and_then_cached(disk_project):
    project, catalog, record = disk_project
    qcow2 = make(disk_project, "qcow2")
    assert qcow2.path == project.state_dir / "disks/webapp" / f"{record['version']}.qcow2" and not qcow2.cached
    raw = make(disk_project, "raw")
    assert raw.cached and raw.seconds == 0 and raw.path.name == f"{record['version']}.raw"
    assert subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw.path), str(qcow2.path)],
                          capture_output=True, check=False).returncode == 0
    assert make(disk_project, "qcow2").cached
    provenance = catalog.version("webapp", record["version"])["provenance"]
    assert provenance["disks"] == {"raw": f"sha256:{raw.sha256}", "qcow2": f"sha256:{qcow2.sha256}"}
    assert assemble.sha256_file(raw.path) == raw.sha256
    assert sorted(p.name for p in (project.state_dir / "disks").iterdir()) == ["webapp"]  # no work directory left
    assert sorted(p.name for p in (project.state_dir / "disks/webapp").iterdir()) == sorted(
        [raw.path.name, qcow2.path.name])


def test_cached_returns_the_recorded_disk_only_while_its_file_is_there_with_the_recorded_size(disk_project):
    from bakery.disks import builder

    project, catalog, record = disk_project
    version = record["version"]
    path = project.state_dir / "disks/webapp" / f"{version}.raw"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\0" * 4096)
    catalog.record_disk("webapp", version, disk_format="raw", path=str(path.relative_to(project.state_dir)),
                        sha256="ab" * 32, size=4096, allocated=4096, run_id="r", details={"kernel_cmdline": "ro"})
    found = builder.cached(project, catalog, "webapp", version, "raw")
    assert found is not None and found.cached and found.path == path and found.sha256 == "ab" * 32
    assert found.details == {"kernel_cmdline": "ro"} and found.bytes == 4096
    assert builder.cached(project, catalog, "webapp", version, "qcow2") is None
    with path.open("ab") as handle:
        handle.write(b"\0")
    assert builder.cached(project, catalog, "webapp", version, "raw") is None
    path.unlink()
    assert builder.cached(project, catalog, "webapp", version, "raw") is None


def test_remove_stale_work_removes_work_of_dead_builds_and_keeps_that_of_running_ones(disk_project):
    from bakery.disks import builder

    project = disk_project[0]
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        works = {}
        for name, pid in (("dead", str(dead.pid)), ("alive", str(alive.pid)), ("nopid", None), ("junk", "x")):
            works[name] = builder.disks_dir(project) / f".work-{name}"
            (works[name] / "fs").mkdir(parents=True)
            if pid is not None:
                (works[name] / "pid").write_text(pid)
        removed = builder.remove_stale_work(project)
        assert sorted(removed) == sorted([works["dead"], works["nopid"], works["junk"]])
        assert [p.name for p in builder.disks_dir(project).iterdir()] == [".work-alive"]
    finally:
        alive.kill()
        alive.wait()
    assert builder.remove_stale_work(project) == [works["alive"]]


def test_a_missing_tool_is_named_with_its_debian_package(tmp_path, monkeypatch):
    from bakery.disks import builder

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ConfigError, match=r"^mkfs.ext4 is not installed \(Debian package e2fsprogs\): run make setup"):
        builder.require_tools("raw")
    for command in builder.TOOLS:
        os.symlink(shutil.which(command, path="/usr/sbin:/usr/bin:/sbin:/bin"), empty / command)
    builder.require_tools("raw")
    with pytest.raises(ConfigError, match=r"^qemu-img is not installed \(Debian package qemu-utils\)"):
        builder.require_tools("qcow2")


def test_the_disk_resolves_through_systemd_resolved_only_when_the_image_has_it(tmp_path):
    from bakery.disks import tree

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "resolv.conf").write_text("nameserver 10.255.255.53\n")  # the build host's, as baked
    assert tree.link_resolver(root, 1_700_000_000) is False
    assert (root / "etc" / "resolv.conf").read_text() == "nameserver 10.255.255.53\n"
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    (root / "usr" / "lib" / "systemd" / "systemd-resolved").write_bytes(b"\x7fELF")
    mtime = (root / "etc").stat().st_mtime_ns
    assert tree.link_resolver(root, 1_700_000_000) is True
    link = root / "etc" / "resolv.conf"
    assert link.is_symlink() and os.readlink(link) == "../run/systemd/resolve/stub-resolv.conf"
    assert link.lstat().st_mtime == 1_700_000_000 and (root / "etc").stat().st_mtime_ns == mtime


def test_orphan_disks_are_unlisted_disk_files_and_never_a_running_build(disk_project):
    from bakery.disks import builder

    project, catalog = disk_project[0], disk_project[1]
    stray = builder.disks_dir(project) / "webapp" / "20240101.001.raw"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"x")
    assert builder.orphan_disks(project, catalog) == [stray]
    building = subprocess.Popen(["sleep", "60"])
    try:
        work = builder.disks_dir(project) / ".work-live"
        work.mkdir()
        (work / "pid").write_text(str(building.pid))
        (work / "disk.raw").write_bytes(b"half")  # a build's disk in progress: never an orphan
        assert builder.orphan_disks(project, catalog) == []  # it may be about to record its renamed disk
    finally:
        building.kill()
        building.wait()
    assert builder.orphan_disks(project, catalog) == [stray]
