"""The EFI system partition's contents, taken from the image itself: its systemd-boot, kernel and initramfs.

UEFI firmware (OVMF here, the Nitro/Xen UEFI on EC2) starts EFI/BOOT/BOOTX64.EFI, the removable-media path, so
nothing has to be registered in NVRAM. systemd-boot boots the one entry at once (timeout 0) and its editor is
off, so nobody at the console can change the kernel command line. The command line is the root by PARTUUID
plus the image's fragments in /etc/bakery/kernel-cmdline.d/ (each role that needs a kernel argument ships one).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from bakery.errors import ConfigError

CMDLINE_DIR = "etc/bakery/kernel-cmdline.d"
SYSTEMD_BOOT = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
ARG_RE = re.compile(r"^[A-Za-z0-9_.,:=/+-]+\Z")


def in_image(root: Path, relative: str, where: str) -> Path:
    """root/relative, refused when it or a directory on the way is a symbolic link: the image's files are read on
    the build host, where an absolute link would name the host's own file (its kernel, its secrets)."""
    path = root
    for part in Path(relative).parts:
        path = path / part
        if path.is_symlink():
            raise ConfigError(f"{where}: /{path.relative_to(root).as_posix()} is a symbolic link: the disk builder "
                              "takes boot files only as regular files and directories of the image")
    return path


def kernel_cmdline(root: Path, root_uuid: str, where: str) -> str:
    """root=PARTUUID=... ro, then every fragment's arguments in file-name order."""
    args = [f"root=PARTUUID={root_uuid}", "ro"]
    directory = in_image(root, CMDLINE_DIR, where)
    for fragment in sorted(directory.glob("*.conf")) if directory.is_dir() else []:
        in_image(root, f"{CMDLINE_DIR}/{fragment.name}", where)
        for arg in fragment.read_text(encoding="utf-8", errors="replace").split():
            if not ARG_RE.match(arg):
                raise ConfigError(f"{where}: /{CMDLINE_DIR}/{fragment.name} holds the kernel argument {arg!r}, "
                                  "which a boot entry cannot carry: use letters, digits and _.,:=/+-")
            if arg.startswith("root="):
                raise ConfigError(f"{where}: /{CMDLINE_DIR}/{fragment.name} sets {arg}: the disk builder sets "
                                  "root= to the disk's root partition; remove it from the fragment")
            args.append(arg)
    return " ".join(args)


def _only(root: Path, pattern: str, what: str, where: str) -> Path:
    found = sorted(in_image(root, "boot", where).glob(pattern))
    if len(found) != 1:
        raise ConfigError(f"{where} has {len(found)} {what} in /boot ({', '.join(p.name for p in found) or 'none'}): "
                          "a bootable image needs exactly one; list the boot role in the image's playbook")
    return in_image(root, f"boot/{found[0].name}", where)


def build(root: Path, esp: Path, root_uuid: str, where: str) -> str:
    """Fill `esp` from the image under `root`; returns the kernel command line used."""
    loader = in_image(root, SYSTEMD_BOOT, where)
    if not loader.is_file():
        raise ConfigError(f"{where} has no /{SYSTEMD_BOOT}: list the boot role in the image's playbook "
                          "(it installs the kernel and the systemd-boot EFI binary)")
    kernel = _only(root, "vmlinuz-*", "kernels", where)
    initrd = _only(root, "initrd.img-*", "initramfs images", where)
    cmdline = kernel_cmdline(root, root_uuid, where)
    links = sorted(p.relative_to(esp).as_posix() for p in esp.rglob("*") if p.is_symlink())
    if links:
        raise ConfigError(f"{where}: /boot/efi/{links[0]} is a symbolic link: the EFI system partition is FAT, "
                          "which has none; put a copy of the file there instead")
    (esp / "EFI" / "BOOT").mkdir(parents=True, exist_ok=True)  # a role may have left files in /boot/efi
    (esp / "loader" / "entries").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(loader, esp / "EFI" / "BOOT" / "BOOTX64.EFI")
    shutil.copyfile(kernel, esp / "vmlinuz")
    shutil.copyfile(initrd, esp / "initrd.img")
    (esp / "loader" / "loader.conf").write_text("default bakery.conf\ntimeout 0\neditor no\n", encoding="utf-8")
    (esp / "loader" / "entries" / "bakery.conf").write_text(
        f"title {kernel.name.removeprefix('vmlinuz-')}\nlinux /vmlinuz\ninitrd /initrd.img\noptions {cmdline}\n",
        encoding="utf-8")
    return cmdline
