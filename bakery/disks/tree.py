"""The image version's filesystem, unpacked and cut into one directory per partition.

`podman export` of a container created (never started) from exactly the version's image is the tree; GNU tar
keeps owners, modes, xattrs (file capabilities) and hard links. Each separate partition's directory is moved
out of the root tree, deepest first, and an empty mount point with the same owner, mode and time is left in its
place; the parent's time is put back, so that the cut leaves no trace in the bytes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bakery import podman
from bakery.disks.layout import Layout, Partition
from bakery.errors import OperationError


def unpack(image_ref: str, root: Path) -> None:
    """The version's files under `root` (which must not exist), as the image holds them."""
    root.mkdir(parents=True)
    # labelled like a build container: gc removes it when this process dies before it does
    container = podman.run("create", "--pull=never", "--label", "io.bakery.build=1",
                           "--label", f"io.bakery.build.pid={os.getpid()}", image_ref, "/bin/true").stdout.strip()
    try:
        export = subprocess.Popen(["podman", "export", container], stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "--numeric-owner", "--same-owner", "--same-permissions",
                                "--xattrs", "--xattrs-include=*", "-C", str(root)],
                               stdin=export.stdout, capture_output=True, text=True, check=False)
        if export.stdout is not None:
            export.stdout.close()
        exported = export.wait()
    finally:
        podman.remove_container(container)
    if exported != 0 or untar.returncode != 0:
        raise OperationError(f"unpacking {image_ref} failed: {(untar.stderr or 'podman export failed').strip()}")


def late_paths(image_ref: str, under_ref: str = "") -> set[str]:
    """Paths (relative to /) the image's last role and its final layer added or changed: podman's diff between
    the version's image and the layer under its last role (`under_ref`, the cached layer the catalog names: a cold
    bake folds several roles into one image layer, so the image's own history would put them all last; without
    it, the history: final layer, last role, the one under it). These go into the filesystems last, so an
    app-only change moves few blocks of the disk."""
    if not under_ref:
        history = podman.run("history", "-q", "--no-trunc", image_ref).stdout.split()
        if len(history) < 3 or history[2] == "<missing>":  # an image not baked by bakery: nothing is late
            return set()
        under_ref = history[2]
    diff = podman.run("diff", image_ref, under_ref).stdout.splitlines()
    return {line[2:].lstrip("/") for line in diff if line[:2] in ("A ", "C ") and line[2:].lstrip("/")}


def late_under(late: set[str], mount: str, mounts: list[str]) -> set[str]:
    """The late paths inside the filesystem mounted at `mount`, relative to it: not those of a deeper partition
    cut out of it, nor its mount points."""
    prefix = mount.strip("/") + "/" if mount.strip("/") else ""
    inner = [m.strip("/") for m in mounts if m.strip("/").startswith(prefix) and m.strip("/") != mount.strip("/")]
    return {p[len(prefix):] for p in late if p.startswith(prefix)
            and not any(p == m or p.startswith(m + "/") for m in inner)}


def _keep_times(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_atime_ns, st.st_mtime_ns


def cut(root: Path, layout: Layout, staging: Path, epoch: int) -> dict[str, Path]:
    """Move each separate partition's directory out of `root`; return partition name -> its directory."""
    trees: dict[str, Path] = {}
    for part in sorted(layout.all, key=lambda p: p.mount.count("/"), reverse=True):
        trees[part.name] = _cut_one(root, part, staging / f"part-{part.name}", epoch)
    return trees


def _no_link_on_the_way(root: Path, relative: str) -> None:
    """Refuse a path of the image that runs through a symbolic link: the tree is on the build host, where an
    absolute link (/var -> /srv) names the host's own directory, which the build would move or overwrite."""
    path = root
    for name in Path(relative).parts[:-1]:
        path = path / name
        if path.is_symlink():
            raise OperationError(f"/{path.relative_to(root).as_posix()} is a symbolic link in the image: the disk "
                                 f"builder does not follow it to /{relative}; make it a directory")


def _cut_one(root: Path, part: Partition, target: Path, epoch: int) -> Path:
    _no_link_on_the_way(root, part.mount.lstrip("/"))
    source = root / part.mount.lstrip("/")
    parent = source.parent
    if not parent.is_dir() or parent.is_symlink():
        raise OperationError(f"the image has no directory {parent.relative_to(root).as_posix() or '/'} for the "
                             f"partition mounted at {part.mount}")
    parent_times = _keep_times(parent)
    if source.is_symlink() or (source.exists() and not source.is_dir()):
        raise OperationError(f"{part.mount} is not a directory in the image: it cannot be a separate partition")
    if source.is_dir():
        st = os.lstat(source)
        os.rename(source, target)
        source.mkdir()
        os.chown(source, st.st_uid, st.st_gid)
        os.chmod(source, st.st_mode & 0o7777)
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:  # e.g. /boot/efi: not in the image; the mount point and the partition's root are made
        target.mkdir(mode=0o700)
        source.mkdir(mode=0o700)
        os.utime(source, (epoch, epoch))
        os.utime(target, (epoch, epoch))  # the partition's root directory: its time goes into the filesystem
    os.utime(parent, ns=parent_times)
    return target


def write_file(root: Path, relative: str, text: str, epoch: int, mode: int = 0o644) -> None:
    """A file the disk builder owns (e.g. /etc/fstab), written with a fixed time, the directory's time kept."""
    _no_link_on_the_way(root, relative)
    path = root / relative
    parent_times = _keep_times(path.parent)
    path.unlink(missing_ok=True)
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    os.chown(path, 0, 0)
    os.utime(path, (epoch, epoch))
    os.utime(path.parent, ns=parent_times)


RESOLVED = ("usr/lib/systemd/systemd-resolved", "lib/systemd/systemd-resolved")
STUB_RESOLV_CONF = "../run/systemd/resolve/stub-resolv.conf"


def link_resolver(root: Path, epoch: int) -> bool:
    """On a VM, names resolve through systemd-resolved when the image has it (the boot role installs it): its
    /etc/resolv.conf is then the stub's. During the bake podman bind-mounts that file, so only the disk can
    carry the link; without resolved the image's own file stays."""
    if not any((root / candidate).is_file() for candidate in RESOLVED):
        return False
    _no_link_on_the_way(root, "etc/resolv.conf")
    path = root / "etc" / "resolv.conf"
    parent_times = _keep_times(path.parent)
    path.unlink(missing_ok=True)
    path.symlink_to(STUB_RESOLV_CONF)
    os.utime(path, (epoch, epoch), follow_symlinks=False)
    os.utime(path.parent, ns=parent_times)
    return True
