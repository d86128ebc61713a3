"""Filesystem images made offline (mkfs.ext4 -d + debugfs, mkfs.vfat + mcopy): the same tree gives the same bytes,
and what the image's files carry (owners, modes, file capabilities, hard links) survives."""

import hashlib
import os
import shutil
import subprocess
import time

import pytest

from bakery.disks import filesystems
from bakery.errors import OperationError

pytestmark = pytest.mark.unit

MIB = 1024 * 1024
EPOCH = 1_700_000_000
MTIME = 1_600_000_000
FS_UUID = "0b6b5a1e-4b7b-4c1a-9d38-1d2f6a2f0c11"
HASH_SEED = "1b6b5a1e-4b7b-4c1a-9d38-1d2f6a2f0c11"
# What `setcap cap_net_raw+ep` writes (VFS_CAP_REVISION_2, permitted CAP_NET_RAW, effective): a file capability.
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")
MTOOLS = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def small_tree(root, files=3):
    """A root-like tree: owners other than root, a setuid binary with a file capability and a hard link to it, a
    symlink, an empty directory, and enough files to spill into a second block group."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "var/empty").mkdir(parents=True)
    ping = root / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    os.chmod(ping, 0o4755)
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    os.link(ping, root / "usr/bin/ping6")
    os.symlink("usr/bin", root / "bin")
    (root / "etc/hostname").write_text("vm\n")
    os.chown(root / "var/empty", 1000, 1001)
    for index in range(files):
        (root / "etc" / f"f{index:04d}").write_text(f"{index}\n")
    for path in (*root.rglob("*"), root):
        os.utime(path, (MTIME, MTIME), follow_symlinks=False)
    return root


def extracted(source, target):
    """A copy of `source` made now, as a fresh extraction is: new ctimes, and atimes of its own."""
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    now = time.time()
    for path in (*target.rglob("*"), target):
        st = os.lstat(path)
        os.utime(path, ns=(int(now * 1e9), st.st_mtime_ns), follow_symlinks=False)
    return target


def ext4(tree, image, size=16 * MIB):
    filesystems.make_ext4(tree, image, size=size, label="var", fs_uuid=FS_UUID, hash_seed=HASH_SEED, epoch=EPOCH)
    return image


def debugfs(image, request):
    return run("debugfs", "-R", request, str(image))


def test_the_same_tree_extracted_twice_at_different_times_gives_the_same_ext4_bytes(tmp_path):
    source = small_tree(tmp_path / "source", files=2500)
    first = extracted(source, tmp_path / "first")
    time.sleep(1.1)
    second = extracted(source, tmp_path / "second")
    assert os.lstat(first / "etc/hostname").st_ctime_ns != os.lstat(second / "etc/hostname").st_ctime_ns
    a, b = ext4(first, tmp_path / "a.img"), ext4(second, tmp_path / "b.img")
    assert sha256(a) == sha256(b)
    stat = debugfs(a, "stat /etc/f2499")
    for field in ("ctime", " atime", "crtime", "mtime"):  # the file's own time, not the extraction's
        assert f"{field}: 0x{MTIME:08x}" in stat, stat


def test_a_different_uuid_or_seed_gives_different_bytes(tmp_path):
    tree = small_tree(tmp_path / "tree")
    a = ext4(tree, tmp_path / "a.img")
    filesystems.make_ext4(tree, tmp_path / "b.img", size=16 * MIB, label="var", fs_uuid=HASH_SEED,
                          hash_seed=HASH_SEED, epoch=EPOCH)
    assert sha256(a) != sha256(tmp_path / "b.img")
    assert f"Filesystem UUID:          {FS_UUID}" in run("dumpe2fs", "-h", str(a))
    assert "Filesystem volume name:   var" in run("dumpe2fs", "-h", str(a))


def test_owners_modes_file_capabilities_and_hard_links_survive(tmp_path):
    image = ext4(small_tree(tmp_path / "tree"), tmp_path / "fs.img")
    run("e2fsck", "-fn", str(image))  # exit 0: clean
    assert "security.capability (20) = 01 00 00 02 00 20 00 00" in debugfs(image, "ea_list /usr/bin/ping")
    ping, ping6 = debugfs(image, "stat /usr/bin/ping"), debugfs(image, "stat /usr/bin/ping6")
    assert ping.splitlines()[0] == ping6.splitlines()[0]  # "Inode: N ...": one inode, two names
    assert "Links: 2" in ping and "Mode:  04755" in ping
    assert "User:  1000   Group:  1001" in debugfs(image, "stat /var/empty")
    assert "Fast link dest: \"usr/bin\"" in debugfs(image, "stat /bin")
    dumped = tmp_path / "ping"
    debugfs(image, f"dump /usr/bin/ping {dumped}")
    assert dumped.read_bytes() == (tmp_path / "tree/usr/bin/ping").read_bytes()


def test_the_superblock_carries_no_time_or_counter_of_the_build(tmp_path):
    header = run("dumpe2fs", "-h", str(ext4(small_tree(tmp_path / "tree"), tmp_path / "fs.img")))
    stamp = time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(EPOCH))
    for field in ("Filesystem created:", "Last write time:", "Last checked:"):
        assert f"{field}" in header and stamp in next(line for line in header.splitlines() if line.startswith(field))
    assert "Lifetime writes:" not in header or "Lifetime writes:          0 kB" in header


def test_a_tree_larger_than_the_filesystem_is_an_operation_error(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(6 * MIB))
    with pytest.raises(OperationError, match="making the var filesystem: mkfs.ext4 failed"):
        ext4(tree, tmp_path / "fs.img", size=4 * MIB)


def test_fitting_size_holds_the_tree_with_room_to_spare(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(20 * MIB))
    os.link(tree / "big", tree / "same")  # counted once
    size = filesystems.fitting_size(tree, 0)
    assert size % MIB == 0 and 20 * MIB * 1.2 < size < 20 * MIB * 1.2 + 100 * MIB
    assert filesystems.fitting_size(tree, 512 * MIB) == 512 * MIB
    ext4(tree, tmp_path / "fs.img", size=size)


def esp_tree(root):
    (root / "EFI/BOOT").mkdir(parents=True)
    (root / "EFI/BOOT/BOOTX64.EFI").write_bytes(b"MZ" + bytes(range(256)) * 8)
    (root / "loader/entries").mkdir(parents=True)
    (root / "loader/loader.conf").write_text("default bakery.conf\ntimeout 0\neditor no\n")
    (root / "loader/entries/bakery.conf").write_text("title t\nlinux /vmlinuz\n")
    (root / "vmlinuz").write_bytes(os.urandom(300_000))
    return root


def vfat(tree, image, volume_id="a1b2c3d4"):
    filesystems.make_vfat(tree, image, size=40 * MIB, label="esp", volume_id=volume_id, epoch=EPOCH)
    return image


def test_the_same_esp_tree_made_twice_gives_the_same_fat_bytes(tmp_path):
    first = esp_tree(tmp_path / "first")
    second = tmp_path / "second"
    time.sleep(1.1)
    shutil.copytree(first, second)  # other times
    assert sha256(vfat(first, tmp_path / "a.img")) == sha256(vfat(second, tmp_path / "b.img"))


def test_the_esp_holds_the_files_readable_back_with_mtools(tmp_path):
    tree = esp_tree(tmp_path / "tree")
    image = vfat(tree, tmp_path / "esp.img")
    listing = subprocess.run(["mdir", "-i", str(image), "-/", "-b", "::/"], capture_output=True, text=True,
                             check=True, env=MTOOLS).stdout.split()
    assert sorted(listing) == sorted(["::/EFI/", "::/EFI/BOOT/", "::/EFI/BOOT/BOOTX64.EFI", "::/loader/",
                                      "::/loader/entries/", "::/loader/entries/bakery.conf",
                                      "::/loader/loader.conf", "::/vmlinuz"])
    for name in ("loader/loader.conf", "loader/entries/bakery.conf"):
        assert subprocess.run(["mtype", "-i", str(image), f"::/{name}"], capture_output=True, text=True, check=True,
                              env=MTOOLS).stdout == (tree / name).read_text()
    copied = tmp_path / "vmlinuz"
    subprocess.run(["mcopy", "-i", str(image), "::/vmlinuz", str(copied)], check=True, env=MTOOLS)
    assert copied.read_bytes() == (tree / "vmlinuz").read_bytes()
    assert subprocess.run(["fsck.vfat", "-n", str(image)], capture_output=True, check=False).returncode == 0


def test_the_esp_carries_the_volume_id_and_label_it_is_given(tmp_path):
    """The volume id is derived from the version's input digest, like every other identifier of the disk."""
    image = vfat(esp_tree(tmp_path / "tree"), tmp_path / "esp.img", volume_id="a1b2c3d4")
    info = subprocess.run(["minfo", "-i", str(image), "::"], capture_output=True, text=True, check=True,
                          env=MTOOLS).stdout
    assert "serial number: A1B2C3D4" in info  # not mkfs.vfat --invariant's constant 1234ABCD
    assert 'disk label="ESP        "' in info


def test_the_filesystem_s_root_directory_has_the_tree_s_mode_owner_and_time(tmp_path):
    """A partition's root directory is what the mount point shows once mounted: /tmp must stay 1777 (sticky, world
    writable) and /var/log/audit keep its owner and mode, not mkfs's 0755 root:root."""
    tree = tmp_path / "tmp"
    tree.mkdir()
    (tree / ".keep").write_text("")
    os.chown(tree, 0, 4)
    os.chmod(tree, 0o1777)
    os.utime(tree, (MTIME, MTIME))
    stat = debugfs(ext4(tree, tmp_path / "fs.img"), "stat <2>")
    assert "Mode:  01777" in stat and "User:     0   Group:     4" in stat, stat
    assert f"mtime: 0x{MTIME:08x}" in stat
    run("e2fsck", "-fn", str(tmp_path / "fs.img"))


def test_the_esp_is_the_same_bytes_in_every_time_zone(tmp_path, monkeypatch):
    """FAT keeps local times: the build pins UTC, or a laptop and CI in other zones make other disks."""
    tree = tmp_path / "tree"
    (tree / "EFI" / "BOOT").mkdir(parents=True)
    (tree / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(b"MZ" + b"\0" * 100)
    digests = set()
    for zone in ("UTC", "America/New_York", "Asia/Kolkata"):
        monkeypatch.setenv("TZ", zone)
        image = tmp_path / f"esp-{zone.replace('/', '-')}.img"
        vfat(tree, image)
        digests.add(hashlib.sha256(image.read_bytes()).hexdigest())
    assert len(digests) == 1
