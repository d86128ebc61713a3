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
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bakery import podman
from bakery.base_settings import BaseSettings
from bakery.errors import ConfigError, OperationError

log = logging.getLogger("bakery.base")

BASE_REPO = "localhost/bakery/base"
RELEASE_LABEL = "io.bakery.base.release"
FLAVOUR_LABEL = "io.bakery.base.flavour"  # absent on a plain base (no bakery.yml base: settings)
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


def find_base(release: str, settings: BaseSettings | None = None) -> BaseImage | None:
    """The newest bakery base of a release (made with these base settings) that podman has, if any."""
    flavour = (settings or BaseSettings()).flavour
    images = _images_with_label(f"{RELEASE_LABEL}={release}")
    candidates = []
    for image in images:
        if (image.get("Labels") or {}).get(FLAVOUR_LABEL, "") != flavour:
            continue
        names = [n for n in image.get("Names") or [] if n.startswith(f"{BASE_REPO}:{release}-")]
        if names:
            candidates.append((image.get("Created", 0), sorted(names)[-1], image))
    if not candidates:
        return None
    _, ref, image = max(candidates, key=lambda c: (c[0], c[1]))
    return BaseImage(ref=ref, digest="sha256:" + image["Id"].removeprefix("sha256:"), release=release,
                     created=str(image.get("CreatedAt", "")), reused=True)


def _images_with_label(label: str, attempts: int = 3) -> list[dict]:
    """`podman images` fails when another process removes a listed image meanwhile (gc, a test's cleanup): ask again."""
    for attempt in range(attempts):
        try:
            return podman.images_with_label(label)
        except OperationError as exc:
            if "image not known" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.5)
    return []


def resolve_base(spec: str, settings: BaseSettings | None = None) -> BaseImage:
    """Turn an image definition's `base:` (a release name or any local image) into an image and digest."""
    if "/" in spec or ":" in spec:
        digest = podman.image_id(spec)
        if digest is None:
            raise ConfigError(f"base image '{spec}' not found in podman; build it or change 'base' in bakery.yml")
        return BaseImage(ref=spec, digest=digest, release=None, created="", reused=True)
    base = find_base(spec, settings)
    if base is None:
        raise ConfigError(f"no base image for release '{spec}'; create it with: ./bake.py base --release {spec}")
    return base


def build_base(release: str, work_dir: Path, rebuild: bool = False, settings: BaseSettings | None = None) -> BaseImage:
    """Make (or reuse) the base for a release: mmdebstrap, then podman import."""
    settings = settings or BaseSettings()
    if release not in KNOWN_RELEASES:
        raise ConfigError(f"--release '{release}' is not a Debian release bakery knows "
                          f"({', '.join(sorted(KNOWN_RELEASES))})")
    if not rebuild:
        existing = find_base(release, settings)
        if existing:
            if not settings.flavour:
                tag_alias(existing)
            return existing
    if shutil.which("mmdebstrap") is None:
        raise ConfigError("mmdebstrap is not installed; run: make setup")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    ref = f"{BASE_REPO}:{release}-{settings.flavour + '-' if settings.flavour else ''}{stamp}"
    packages = BASE_PACKAGES + [p for p in settings.extra_packages if p not in BASE_PACKAGES]
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}",
               # a container has no kernel of its own: keep its machine-id empty so systemd makes one at boot
               "--customize-hook=truncate -s 0 \"$1/etc/machine-id\"",
               release, str(tarball), *base_sources(release, settings)]
        log.info("making base: %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or ["unknown error"]
            # the first error says why; the last one only that mmdebstrap failed
            first = next((line for line in lines if line.startswith(("E: ", "dpkg: error"))), lines[-1])
            raise OperationError(f"mmdebstrap failed for {release}: {first[:300]}")
        flavour = ["--change", f"LABEL {FLAVOUR_LABEL}={settings.flavour}"] if settings.flavour else []
        podman.run("import", "--change", "CMD=/sbin/init",
                   "--change", f"LABEL {RELEASE_LABEL}={release}", *flavour,
                   "--change", "LABEL io.bakery.base.packages=" + podman.dockerfile_quote(" ".join(packages)),
                   str(tarball), ref, timeout=900)
    digest = podman.image_id(ref)
    if digest is None:
        raise OperationError(f"podman import did not produce {ref}")
    base = BaseImage(ref=ref, digest=digest, release=release, created=stamp)
    if not settings.flavour:  # the alias (Molecule's platform image) stays bakery's plain base
        tag_alias(base)
    return base


def alias_ref(release: str) -> str:
    """A stable name for the newest base of a release, for tools that need one (Molecule platforms)."""
    return f"{BASE_REPO}:{release}"


def tag_alias(base: BaseImage) -> None:
    if base.release and podman.image_id(alias_ref(base.release)) != base.digest:
        podman.run("tag", base.ref, alias_ref(base.release))


def base_sources(release: str, settings: BaseSettings) -> list[str]:
    """mmdebstrap's sources: the machine's (or Debian's mirror), then bakery.yml's extra ones.

    Given any source, mmdebstrap uses only what it is given: Debian's own mirror is named when the host's
    sources do not fit the release."""
    sources = host_sources(release)
    if settings.extra_sources and not sources:
        sources = [f"deb http://deb.debian.org/debian {release} main",
                   f"deb http://deb.debian.org/debian {release}-updates main",
                   f"deb http://deb.debian.org/debian-security {release}-security main"]
    return sources + list(settings.extra_sources)


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
