"""The disk's partition layout (bakery.yml images.<name>.disk), its /etc/fstab and its boot entry's command line."""

import os

import pytest

from bakery.disks import esp
from bakery.disks.layout import DEFAULT_PARTITIONS, ESP, GIB, MIB, Layout, Partition, fstab, parse_layout, parse_size
from bakery.errors import ConfigError

pytestmark = pytest.mark.unit

WHERE = "bakery.yml: images.webapp.disk"
ROOT_UUID = "11111111-2222-3333-4444-555555555555"


def refused(value, *fragments):
    with pytest.raises(ConfigError) as caught:
        parse_layout(value, WHERE)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(WHERE)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_absent_disk_setting_is_the_cis_level_1_layout():
    layout = parse_layout(None, WHERE)
    assert layout.disk_size == 0 and layout.partitions == DEFAULT_PARTITIONS
    options = {p.mount: set(p.options) for p in layout.all}
    assert options == {"/boot/efi": {"umask=0077", "nodev", "nosuid", "noexec"},
                       "/var": {"nodev", "nosuid"},
                       "/var/log": {"nodev", "nosuid", "noexec"},
                       "/var/log/audit": {"nodev", "nosuid", "noexec"},
                       "/tmp": {"nodev", "nosuid", "noexec"},
                       "/home": {"nodev", "nosuid"}}
    assert [p.name for p in layout.all] == ["esp", "var", "var-log", "var-log-audit", "tmp", "home"]
    assert layout.all[0] is ESP and ESP.filesystem == "vfat"
    assert all(p.size % MIB == 0 for p in layout.all)


def test_a_written_layout_is_parsed_with_its_sizes_and_options():
    layout = parse_layout({"size": "4G", "partitions": [
        {"mount": "/srv/data", "size": "2G", "options": ["nodev", "noatime"]},
        {"mount": "/tmp", "size": "64MiB"}]}, WHERE)
    assert layout.disk_size == 4 * GIB
    assert layout.partitions == (Partition("/srv/data", 2 * GIB, ("nodev", "noatime")), Partition("/tmp", 64 * MIB))
    assert parse_layout({"partitions": None}, WHERE) == Layout(())


@pytest.mark.parametrize("size", ["512", "1.5G", "0M", "-1G", "2T", "512m", "5 kB", "", 512, None, ["1G"]])
def test_a_bad_partition_size_names_the_field_and_the_value(size):
    refused({"partitions": [{"mount": "/tmp", "size": size}]}, "partitions[0].size", repr(size))


@pytest.mark.parametrize("size", ["4", "4 GB", 4])
def test_a_bad_disk_size_names_the_field_and_the_value(size):
    refused({"size": size, "partitions": []}, f"{WHERE}.size", repr(size))


def test_parse_size_takes_whole_mib_or_gib_only():
    assert parse_size("512M", "--size") == 512 * MIB
    assert parse_size("2GiB", "--size") == 2 * GIB
    with pytest.raises(ConfigError, match="--size must be a size such as 512M or 2G, got '2.5G'"):
        parse_size("2.5G", "--size")


@pytest.mark.parametrize("mount", ["/usr", "/etc", "/boot", "/boot/efi", "/proc", "/run", "/dev", "/lib"])
def test_a_mount_point_of_the_root_filesystem_or_the_esp_is_refused(mount):
    refused({"partitions": [{"mount": mount, "size": "1G"}]}, "partitions[0].mount", mount,
            "cannot be a separate partition")


@pytest.mark.parametrize("mount", ["/", "var", "/var/", "/var//log", "/var/../etc", "/..", "/Var", "/var log",
                                   "/var/log\n", "", None, 5])
def test_a_malformed_mount_point_is_refused(mount):
    refused({"partitions": [{"mount": mount, "size": "1G"}]}, "partitions[0].mount", repr(mount))


@pytest.mark.parametrize("mount", ["/.", "/var/.", "/var/./log"])
def test_a_dot_in_a_mount_point_is_refused(mount):
    """/. is the root itself and /var/. is /var: cut out of the tree, they would move the whole root (or /var twice)."""
    refused({"partitions": [{"mount": mount, "size": "1G"}]}, "partitions[0].mount", repr(mount))


@pytest.mark.parametrize("mount", ["/usr/local", "/etc/ssl", "/run/user", "/proc/x", "/boot/efi/x"])
def test_a_mount_point_inside_the_root_s_own_trees_or_the_esp_is_refused(mount):
    """/usr and /etc are read before local filesystems are mounted; /run, /proc and /dev are virtual (a partition
    there is hidden or cannot be mounted); the ESP is FAT, cut out of the tree before the image is read."""
    refused({"partitions": [{"mount": mount, "size": "1G"}]}, "partitions[0].mount", mount,
            "cannot be a separate partition")


@pytest.mark.parametrize("mount", ["/root", "/esp"])
def test_a_mount_point_whose_name_is_the_root_s_or_the_esp_s_is_refused(mount):
    """Partition names are labels, file names of the filesystem images and the seeds of the partition UUIDs:
    /root would get the root partition's UUID (two partitions with one PARTUUID) and overwrite its image."""
    refused({"partitions": [{"mount": mount, "size": "1G"}]}, "partitions[0].mount", mount)


def test_a_mount_point_listed_twice_is_refused():
    refused({"partitions": [{"mount": "/tmp", "size": "1G"}, {"mount": "/tmp", "size": "2G"}]}, "/tmp", "twice")


def test_two_mount_points_with_one_partition_name_are_refused():
    message = refused({"partitions": [{"mount": "/var/log", "size": "1G"}, {"mount": "/var-log", "size": "1G"}]},
                      "var-log", "distinct names")
    assert "/var/log" in message and "/var-log" in message


@pytest.mark.parametrize("options", [["nodev", "exec"], ["defaults"], ["nodev,noexec"], "nodev", [1]])
def test_an_unknown_mount_option_is_refused(options):
    refused({"partitions": [{"mount": "/tmp", "size": "1G", "options": options}]}, "partitions[0].options",
            repr(options))


@pytest.mark.parametrize("entry, fragment", [
    ({"mount": "/tmp", "size": "1G", "fs": "xfs"}, "'fs'"),
    ({"size": "1G"}, "mount"),
    ("/tmp", "'/tmp'"),
])
def test_a_bad_partition_entry_is_refused(entry, fragment):
    refused({"partitions": [entry]}, "partitions[0]", fragment)


@pytest.mark.parametrize("value, fragment", [
    ({"partitions": [], "filesystem": "xfs"}, "'filesystem'"),
    ({"partitions": {"mount": "/tmp"}}, ".partitions must be a list"),
    (["/tmp"], "['/tmp']"),
    ("cis", "'cis'"),
])
def test_a_bad_disk_setting_is_refused(value, fragment):
    refused(value, fragment)


def test_fstab_mounts_every_filesystem_by_partuuid_with_its_options_and_grows_the_root():
    layout = parse_layout(None, WHERE)
    uuids = {p.name: f"00000000-0000-0000-0000-{i:012d}" for i, p in enumerate(layout.all)}
    lines = fstab(layout, uuids, ROOT_UUID).splitlines()
    assert lines[0].startswith("#")
    table = [line.split() for line in lines[1:]]
    assert table[0] == ["PARTUUID=" + ROOT_UUID, "/", "ext4", "defaults,x-systemd.growfs", "0", "1"]
    by_mount = {row[1]: row for row in table}
    assert sorted(by_mount) == ["/", "/boot/efi", "/home", "/tmp", "/var", "/var/log", "/var/log/audit"]
    assert by_mount["/boot/efi"] == ["PARTUUID=" + uuids["esp"], "/boot/efi", "vfat",
                                     "defaults,umask=0077,nodev,nosuid,noexec", "0", "2"]
    assert by_mount["/var/log/audit"] == ["PARTUUID=" + uuids["var-log-audit"], "/var/log/audit", "ext4",
                                          "defaults,nodev,nosuid,noexec", "0", "2"]
    assert by_mount["/home"][3] == "defaults,nodev,nosuid"
    mounts = [row[1] for row in table]
    assert mounts.index("/var") < mounts.index("/var/log") < mounts.index("/var/log/audit")  # parents first
    assert not any("/dev/" in line for line in lines)


def test_fstab_of_a_layout_without_separate_partitions_has_the_root_and_the_esp():
    table = [line.split()[:2] for line in fstab(Layout(()), {"esp": "e"}, ROOT_UUID).splitlines()[1:]]
    assert table == [["PARTUUID=" + ROOT_UUID, "/"], ["PARTUUID=e", "/boot/efi"]]


def fragments(root, files):
    directory = root / esp.CMDLINE_DIR
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def test_the_kernel_command_line_is_the_root_then_the_fragments_in_file_name_order(tmp_path):
    fragments(tmp_path, {"50-hardening.conf": "audit=1 audit_backlog_limit=8192\n",
                         "10-boot.conf": "console=tty0 console=ttyS0,115200n8\n  nvme_core.io_timeout=4294967295\n",
                         "README": "not a fragment; ignored",
                         "90-x.conf": ""})
    assert esp.kernel_cmdline(tmp_path, ROOT_UUID, "webapp:1") == (
        f"root=PARTUUID={ROOT_UUID} ro console=tty0 console=ttyS0,115200n8 nvme_core.io_timeout=4294967295 "
        "audit=1 audit_backlog_limit=8192")


def test_an_image_without_fragments_boots_the_root_read_only_first(tmp_path):
    assert esp.kernel_cmdline(tmp_path, ROOT_UUID, "webapp:1") == f"root=PARTUUID={ROOT_UUID} ro"


@pytest.mark.parametrize("text", ["quiet; reboot", 'init="/bin/sh"', "a='b'", "x=$(id)", "a`b`", "key=a|b"])
def test_a_fragment_with_a_character_a_boot_entry_cannot_carry_is_refused_naming_the_file(tmp_path, text):
    fragments(tmp_path, {"10-boot.conf": "console=ttyS0\n", "60-bad.conf": text + "\n"})
    with pytest.raises(ConfigError) as caught:
        esp.kernel_cmdline(tmp_path, ROOT_UUID, "webapp:1")
    message = str(caught.value)
    assert message.startswith("webapp:1: /etc/bakery/kernel-cmdline.d/60-bad.conf") and "\n" not in message


def test_a_fragment_that_sets_the_root_is_refused(tmp_path):
    """The boot entry's root=PARTUUID= is the disk's root partition; a second root= would win and not boot."""
    fragments(tmp_path, {"20-x.conf": "root=/dev/sda1\n"})
    with pytest.raises(ConfigError, match="20-x.conf .*root="):
        esp.kernel_cmdline(tmp_path, ROOT_UUID, "webapp:1")


def test_a_fragment_that_links_out_of_the_image_is_refused_and_not_read(tmp_path):
    """The image's files are read on the build host: an absolute symlink would read the host's file."""
    host = tmp_path / "host-secret"
    host.write_text("password=hunter2\n", encoding="utf-8")
    root = tmp_path / "root"
    directory = fragments(root, {})
    os.symlink(host, directory / "10-boot.conf")
    with pytest.raises(ConfigError, match="10-boot.conf") as caught:
        esp.kernel_cmdline(root, ROOT_UUID, "webapp:1")
    assert "hunter2" not in str(caught.value)


def bootable(root, kernels=("6.1.0-28-cloud-amd64",)):
    """The files the boot role leaves in an image: systemd-boot's EFI binary, one kernel and its initramfs."""
    loader = root / esp.SYSTEMD_BOOT
    loader.parent.mkdir(parents=True)
    loader.write_bytes(b"MZ systemd-boot")
    (root / "boot").mkdir()
    for release in kernels:
        (root / "boot" / f"vmlinuz-{release}").write_bytes(b"kernel " + release.encode())
        (root / "boot" / f"initrd.img-{release}").write_bytes(b"initrd " + release.encode())
    fragments(root, {"10-boot.conf": "console=ttyS0,115200n8\n"})
    return root


def test_the_esp_boots_the_image_s_one_kernel_at_once_with_the_editor_off(tmp_path):
    root, part = bootable(tmp_path / "root"), tmp_path / "esp"
    part.mkdir()
    cmdline = esp.build(root, part, ROOT_UUID, "webapp:1")
    assert cmdline == f"root=PARTUUID={ROOT_UUID} ro console=ttyS0,115200n8"
    assert (part / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"MZ systemd-boot"
    assert (part / "vmlinuz").read_bytes() == b"kernel 6.1.0-28-cloud-amd64"
    assert (part / "initrd.img").read_bytes() == b"initrd 6.1.0-28-cloud-amd64"
    loader = (part / "loader/loader.conf").read_text().splitlines()
    assert "editor no" in loader and "timeout 0" in loader and "default bakery.conf" in loader
    entry = (part / "loader/entries/bakery.conf").read_text().splitlines()
    assert entry == ["title 6.1.0-28-cloud-amd64", "linux /vmlinuz", "initrd /initrd.img", f"options {cmdline}"]


def test_an_esp_the_image_already_filled_is_completed_not_refused(tmp_path):
    """A role may leave files in /boot/efi (cut out of the tree as the ESP's contents): they stay, ours win."""
    root, part = bootable(tmp_path / "root"), tmp_path / "esp"
    (part / "EFI/BOOT").mkdir(parents=True)
    (part / "EFI/BOOT/BOOTX64.EFI").write_bytes(b"old loader")
    (part / "EFI/vendor").mkdir()
    (part / "EFI/vendor/tool.efi").write_bytes(b"tool")
    esp.build(root, part, ROOT_UUID, "webapp:1")
    assert (part / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"MZ systemd-boot"
    assert (part / "EFI/vendor/tool.efi").read_bytes() == b"tool"


def test_an_image_without_systemd_boot_is_refused_naming_the_boot_role(tmp_path):
    root = bootable(tmp_path / "root")
    (root / esp.SYSTEMD_BOOT).unlink()
    with pytest.raises(ConfigError, match=r"^webapp:1 has no /usr/lib/systemd/boot/efi/systemd-bootx64.efi: "
                                          r"list the boot role"):
        esp.build(root, tmp_path / "esp", ROOT_UUID, "webapp:1")


@pytest.mark.parametrize("kernels, fragment", [((), "has 0 kernels in /boot (none)"),
                                               (("6.1.0-27-cloud-amd64", "6.1.0-28-cloud-amd64"),
                                                "has 2 kernels in /boot (vmlinuz-6.1.0-27")])
def test_an_image_without_exactly_one_kernel_is_refused_naming_the_boot_role(tmp_path, kernels, fragment):
    root = bootable(tmp_path / "root", kernels)
    with pytest.raises(ConfigError) as caught:
        esp.build(root, tmp_path / "esp", ROOT_UUID, "webapp:1")
    assert fragment in str(caught.value) and "list the boot role in the image's playbook" in str(caught.value)


@pytest.mark.parametrize("relative", ["boot/vmlinuz-6.1.0-28-cloud-amd64", "boot/initrd.img-6.1.0-28-cloud-amd64",
                                      esp.SYSTEMD_BOOT])
def test_a_boot_file_that_links_out_of_the_image_is_refused(tmp_path, relative):
    """An absolute symlink in the image would copy the build host's own kernel or loader onto the ESP."""
    root = bootable(tmp_path / "root")
    host = tmp_path / "host-file"
    host.write_bytes(b"the build host's file")
    (root / relative).unlink()
    os.symlink(host, root / relative)
    with pytest.raises(ConfigError, match="symbolic link"):
        esp.build(root, tmp_path / "esp", ROOT_UUID, "webapp:1")


def test_a_boot_directory_that_links_out_of_the_image_is_refused(tmp_path):
    root = bootable(tmp_path / "root")
    host = tmp_path / "host-boot"
    (root / "boot").rename(host)
    os.symlink(host, root / "boot")
    with pytest.raises(ConfigError, match="/boot is a symbolic link"):
        esp.build(root, tmp_path / "esp", ROOT_UUID, "webapp:1")


def test_a_symbolic_link_the_image_left_in_its_esp_is_refused_before_anything_is_written(tmp_path):
    """FAT has no links, and the ESP is filled on the build host: EFI -> /boot/efi/EFI would write the host's ESP."""
    root, part, host = bootable(tmp_path / "root"), tmp_path / "esp", tmp_path / "host-efi"
    part.mkdir()
    host.mkdir()
    os.symlink(host, part / "EFI")
    with pytest.raises(ConfigError, match="/boot/efi/EFI is a symbolic link"):
        esp.build(root, part, ROOT_UUID, "webapp:1")
    assert list(host.iterdir()) == []


def test_a_disk_size_alone_keeps_the_default_partitions():
    from bakery.disks.layout import DEFAULT_PARTITIONS, GIB, Layout, parse_layout

    assert parse_layout({"size": "4G"}, "bakery.yml: images.webapp.disk") == Layout(DEFAULT_PARTITIONS, 4 * GIB)
