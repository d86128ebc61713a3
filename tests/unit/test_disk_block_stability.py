"""Two versions whose trees differ only in the app's files give ext4 images that differ in few 512 KiB blocks (what
an incremental EBS snapshot uploads), while the same tree still gives the same bytes and everything survives."""

import hashlib
import os
import random
import subprocess

import pytest

from bakery.disks import filesystems, late_files

pytestmark = pytest.mark.unit

MIB = 1024 * 1024
BLOCK = 512 * 1024
MTIME = 1_600_000_000
CSUM_SEED = "2c6b5a1e-4b7b-4c1a-9d38-1d2f6a2f0c11"
HASH_SEED = "1b6b5a1e-4b7b-4c1a-9d38-1d2f6a2f0c11"
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def app_tree(root, app_bytes):
    """An early-walked app (/app, walked before /usr) of `app_bytes`, 24 MiB of libraries and 600 small files
    walked after it, a hard link, a symlink, a file capability and an owner other than root among the app's files."""
    (root / "app/bin").mkdir(parents=True)
    (root / "app/bin/server").write_bytes(random.Random(app_bytes).randbytes(app_bytes))
    os.chmod(root / "app/bin/server", 0o4750)
    os.setxattr(root / "app/bin/server", "security.capability", CAP_NET_RAW)
    os.link(root / "app/bin/server", root / "app/bin/server-alias")
    os.symlink("bin/server", root / "app/current")
    os.chown(root / "app/bin", 1000, 1001)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/share/doc").mkdir(parents=True)
    rng = random.Random(7)
    for index in range(48):
        (root / f"usr/lib/lib{index:02d}.so").write_bytes(rng.randbytes(BLOCK))
    for index in range(600):
        (root / f"usr/share/doc/note{index:03d}").write_text(f"note {index}\n" * (index % 7 + 1))
    for path in (*root.rglob("*"), root):
        os.utime(path, (MTIME, MTIME), follow_symlinks=False)
    return root


def ext4(tree, image, version, size=64 * MIB):
    """A version's filesystem: its own UUID and time (they differ per version), the image's seeds (they do not)."""
    digest = hashlib.sha256(version.encode()).hexdigest()
    fs_uuid = f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"
    filesystems.make_ext4(tree, image, size=size, label="root", fs_uuid=fs_uuid, hash_seed=HASH_SEED,
                          epoch=MTIME + 100 * len(version), csum_seed=CSUM_SEED, late={"app", "app/bin",
                                                                                        "app/bin/server",
                                                                                        "app/bin/server-alias",
                                                                                        "app/current"})
    return image


def blocks(image):
    data = image.read_bytes()
    return [data[i:i + BLOCK] for i in range(0, len(data), BLOCK)]


def changed(a, b):
    zero = bytes(BLOCK)
    return sum(1 for x, y in zip(blocks(a), blocks(b), strict=True) if x != y and (x != zero or y != zero))


def test_an_app_file_of_another_size_walked_first_changes_few_blocks(tmp_path):
    one = ext4(app_tree(tmp_path / "one", 100_000), tmp_path / "one.img", "1.0")
    two = ext4(app_tree(tmp_path / "two", 1_300_000), tmp_path / "two.img", "1.1")
    used = sum(1 for block in blocks(two) if block != bytes(BLOCK))
    assert used > 50
    # the app's own blocks, the superblock and its backup, the inode table and bitmaps: not the 24 MiB after it
    assert changed(one, two) <= 8, (changed(one, two), used)


def test_late_files_keep_owner_mode_links_xattrs_and_times(tmp_path):
    tree = app_tree(tmp_path / "tree", 100_000)
    image = ext4(tree, tmp_path / "fs.img", "1.0")
    run("e2fsck", "-fn", str(image))  # exit 0: clean, link counts included
    server = run("debugfs", "-R", "stat /app/bin/server", str(image))
    assert "Mode:  04750" in server and "Links: 2" in server, server
    assert f"mtime: 0x{MTIME:08x}" in server and f"ctime: 0x{MTIME:08x}" in server
    assert server.splitlines()[0] == run("debugfs", "-R", "stat /app/bin/server-alias", str(image)).splitlines()[0]
    assert "security.capability (20) = 01 00 00 02 00 20 00 00" in run("debugfs", "-R", "ea_list /app/bin/server",
                                                                        str(image))
    assert "User:  1000   Group:  1001" in run("debugfs", "-R", "stat /app/bin", str(image))
    assert 'Fast link dest: "bin/server"' in run("debugfs", "-R", "stat /app/current", str(image))
    dumped = tmp_path / "server"
    run("debugfs", "-R", f"dump /app/bin/server {dumped}", str(image))
    assert dumped.read_bytes() == (tree / "app/bin/server").read_bytes()
    assert sorted(p.name for p in (tree / "app/bin").iterdir()) == ["server", "server-alias"]  # put back
    assert os.lstat(tree / "app").st_mtime == MTIME


def test_the_same_tree_gives_the_same_bytes_with_late_files(tmp_path):
    tree = app_tree(tmp_path / "tree", 100_000)
    first = ext4(tree, tmp_path / "a.img", "1.0").read_bytes()
    assert first == ext4(tree, tmp_path / "b.img", "1.0").read_bytes()


def test_the_uuid_is_the_version_s_and_the_checksum_seed_the_image_s(tmp_path):
    image = ext4(app_tree(tmp_path / "tree", 1000), tmp_path / "fs.img", "1.0")
    header = run("dumpe2fs", "-h", str(image))
    assert "metadata_csum_seed" in header
    assert "Filesystem UUID:          " in header and CSUM_SEED not in header.split("Filesystem UUID:")[1][:60]


def test_the_first_boot_s_fsck_finds_the_filesystem_clean_and_checks_nothing(tmp_path):
    """systemd-fsck runs e2fsck -p on the root at boot; a backup superblock whose UUID differs from the primary's
    forces a full check that rewrites it, and on the mounted root that means a reboot (a VM verify saw it)."""
    image = ext4(app_tree(tmp_path / "tree", 1000), tmp_path / "fs.img", "1.0", size=256 * MIB)  # 2 groups
    proc = subprocess.run(["e2fsck", "-p", str(image)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and ": clean," in proc.stdout, proc.stdout + proc.stderr


def test_a_name_debugfs_cannot_take_sets_nothing_aside(tmp_path):
    tree = tmp_path / "tree"
    (tree / "app").mkdir(parents=True)
    (tree / "app" / 'say "hi"').write_text("x")
    assert late_files.set_aside(tree, {"app", 'app/say "hi"'}, tmp_path / "holding") is None
    assert (tree / "app" / 'say "hi"').is_file()


def test_a_directory_with_entries_of_lower_layers_stays_and_only_its_late_entries_move(tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc/systemd").mkdir(parents=True)
    (tree / "etc/passwd").write_text("root\n")
    (tree / "etc/systemd/app.service").write_text("[Unit]\n")
    chosen = late_files.choose(tree, {"etc", "etc/systemd", "etc/systemd/app.service", "gone"})
    assert chosen == ["etc/systemd"]
