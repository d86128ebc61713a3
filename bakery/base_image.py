"""Base images for the local target: a minimal Debian root filesystem made with mmdebstrap.

No image can be pulled on the machines this runs on, so the base is made from
the machine's own apt sources and imported into podman as
`localhost/bakery/base:<release>-<date>`. Podman's labels are the record of
which bases exist; the catalog keeps their digests for provenance.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bakery import podman
from bakery.errors import ConfigError, OperationError

log = logging.getLogger("bakery.base")

BASE_REPO = "localhost/bakery/base"
RELEASE_LABEL = "io.bakery.base.release"
# systemd as init so handlers and services behave as on a real server; python3-apt
# so Ansible's apt module works without installing anything first.
BASE_PACKAGES = ["systemd", "systemd-sysv", "python3", "python3-apt", "dbus", "iproute2"]
KNOWN_RELEASES = {"bookworm", "trixie", "bullseye"}


@dataclass
class BaseImage:
    ref: str
    digest: str
    release: str | None
    created: str
    reused: bool = False


def find_base(release: str) -> BaseImage | None:
    """The newest bakery base of a release that podman has, if any."""
    images = podman.images_with_label(f"{RELEASE_LABEL}={release}")
    candidates = []
    for image in images:
        names = [n for n in image.get("Names") or [] if n.startswith(f"{BASE_REPO}:{release}-")]
        if names:
            candidates.append((image.get("Created", 0), sorted(names)[-1], image))
    if not candidates:
        return None
    _, ref, image = max(candidates, key=lambda c: (c[0], c[1]))
    return BaseImage(ref=ref, digest="sha256:" + image["Id"].removeprefix("sha256:"), release=release,
                     created=str(image.get("CreatedAt", "")), reused=True)


def resolve_base(spec: str) -> BaseImage:
    """Turn an image definition's `base:` (a release name or any local image) into an image and digest."""
    if "/" in spec or ":" in spec:
        digest = podman.image_id(spec)
        if digest is None:
            raise ConfigError(f"base image '{spec}' not found in podman; build it or change 'base' in bakery.yml")
        return BaseImage(ref=spec, digest=digest, release=None, created="", reused=True)
    base = find_base(spec)
    if base is None:
        raise ConfigError(f"no base image for release '{spec}'; create it with: ./bake.py base --release {spec}")
    return base


def build_base(release: str, work_dir: Path, rebuild: bool = False) -> BaseImage:
    """Make (or reuse) the base for a release: mmdebstrap, then podman import."""
    if release not in KNOWN_RELEASES:
        raise ConfigError(f"--release '{release}' is not a Debian release bakery knows "
                          f"({', '.join(sorted(KNOWN_RELEASES))})")
    if not rebuild:
        existing = find_base(release)
        if existing:
            tag_alias(existing)
            return existing
    if shutil.which("mmdebstrap") is None:
        raise ConfigError("mmdebstrap is not installed; run: make setup")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    ref = f"{BASE_REPO}:{release}-{stamp}"
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
               # a container has no kernel of its own: keep its machine-id empty so systemd makes one at boot
               "--customize-hook=truncate -s 0 \"$1/etc/machine-id\"",
               release, str(tarball), *host_sources(release)]
        log.info("making base: %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise OperationError(f"mmdebstrap failed for {release}: {last}")
        podman.run("import", "--change", "CMD=/sbin/init",
                   "--change", f"LABEL {RELEASE_LABEL}={release}",
                   "--change", "LABEL io.bakery.base.packages=" + podman.dockerfile_quote(" ".join(BASE_PACKAGES)),
                   str(tarball), ref, timeout=900)
    digest = podman.image_id(ref)
    if digest is None:
        raise OperationError(f"podman import did not produce {ref}")
    base = BaseImage(ref=ref, digest=digest, release=release, created=stamp)
    tag_alias(base)
    return base


def alias_ref(release: str) -> str:
    """A stable name for the newest base of a release, for tools that need one (Molecule platforms)."""
    return f"{BASE_REPO}:{release}"


def tag_alias(base: BaseImage) -> None:
    if base.release and podman.image_id(alias_ref(base.release)) != base.digest:
        podman.run("tag", base.ref, alias_ref(base.release))


def host_sources(release: str) -> list[str]:
    """The machine's own apt source files when the host runs the same release; else mmdebstrap's default mirror."""
    os_release = Path("/etc/os-release")
    codename = ""
    if os_release.is_file():
        for line in os_release.read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                codename = line.split("=", 1)[1].strip().strip('"')
    if codename != release:
        return []
    files = []
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file() and any(line.strip().startswith("deb ") for line in legacy.read_text().splitlines()):
        files.append(str(legacy))
    extra = [p for p in sorted(Path("/etc/apt/sources.list.d").glob("*"))
             if p.suffix in (".list", ".sources") and release in p.read_text()]
    # Prefer the distribution's own source files over third-party repositories.
    preferred = [p for p in extra if p.name.startswith("debian")]
    return files + [str(p) for p in (preferred or extra)]
