"""Does the current base lag behind its apt sources? Asked in a throwaway container of the base itself.

The container refreshes the package lists from the base's own sources (what mmdebstrap wrote into it) and
simulates a dist-upgrade: every `Inst` line is an update a new base would have. Packages the roles installed are
not in the base, so the newest version of each image built on it is simulated too, against the same lists: its
image is mounted read-only and apt reads its dpkg status. A new base invalidates every layer, so the next build
re-runs the roles and their apt installs get those updates too. Holds are ignored (and the update marked held):
a new base and a rebake would not keep the old version either. An update is a security one when its candidate
comes from a -security suite (or an origin or label saying so). The container carries the build labels, so a
bakery killed while it runs leaves a container that the next bake (or gc) removes.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from bakery import podman
from bakery.base_image import BaseImage
from bakery.base_settings import BaseSettings
from bakery.errors import OperationError
from bakery.gc import leftovers

CHECK_TIMEOUT = 600
IMAGES_DIR = "/bakery-images"
# apt's --error-on=any: a source that cannot be fetched fails the check instead of hiding updates. An image whose
# simulation fails fails the check too (named), rather than be skipped.
CHECK_SCRIPT = f"""
apt-get update -q --error-on=any -o Acquire::Languages=none >/tmp/apt-update.log 2>&1 || {{
  grep -E '^(E|W|Err):' /tmp/apt-update.log | tail -n 1 >&2; exit 100; }}
printf '@@checked %s\\n' "$(dpkg-query -W -f '${{db:Status-Abbrev}}\\n' | grep -c '^ii')"
apt-get -s -q -o Debug::NoLocking=1 --ignore-hold dist-upgrade || exit $?
for image in {IMAGES_DIR}/*; do
  [ -d "$image" ] || continue
  printf '@@image %s\\n' "${{image##*/}}"
  apt-get -s -q -o Debug::NoLocking=1 -o Dir::State::status="$image/var/lib/dpkg/status" --ignore-hold \\
    dist-upgrade 2>/tmp/image.err || {{
    printf 'image %s: ' "${{image##*/}}" >&2; tail -n 1 /tmp/image.err >&2; exit 101; }}
done
"""
# Inst NAME [INSTALLED] (CANDIDATE ORIGIN:VERSION/SUITE, ... [ARCH])
INST_LINE = re.compile(r"^Inst (?P<name>\S+) (?:\[(?P<installed>[^\]]+)\] )?\((?P<candidate>\S+)(?P<origins>.*?)\)")
HELD_HEADER = "The following held packages will be changed:"


@dataclass
class Update:
    name: str
    installed: str | None  # None: a package the upgrade adds
    candidate: str
    security: bool
    origin: str = ""
    held: bool = False  # apt-mark hold: apt's own upgrade would have kept it back
    images: list[str] = field(default_factory=list)  # IMAGE:VERSION with this package; [] when the base has it

    def text(self) -> str:
        was = self.installed or "(new)"
        marks = (" [security]" if self.security else "") + (" [held]" if self.held else "")
        where = f" (in {', '.join(self.images)})" if self.images else ""
        return f"{self.name} {was} -> {self.candidate}{marks}{where}"


@dataclass
class UpdateCheck:
    base: str
    checked: int
    updates: list[Update] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # IMAGE:VERSION whose packages were checked too
    unchecked: list[str] = field(default_factory=list)  # on this base, but the image is no longer in podman

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_simulation(text: str, images: list[str] | tuple[str, ...] = ()) -> tuple[int, list[Update]]:
    """The package count and the updates from the check script's output, security ones first.

    The base's section comes first; an `@@image N` line starts the simulation of images[N]. An image's update the
    base has too is the base's; one several images share is listed once, naming them."""
    checked, section, held = 0, None, False
    found: dict[tuple[str, str | None, str], Update] = {}
    held_names: dict[int | None, set[str]] = {None: set()}
    for line in text.splitlines():
        if line.startswith("@@checked "):
            checked = int(line.split()[1])
        elif line.startswith("@@image "):
            section = int(line.split()[1])
            held_names[section] = set()
        elif line == HELD_HEADER:
            held = True
        elif held and line.startswith("  "):
            held_names[section].update(line.split())
        else:
            held = False
            match = INST_LINE.match(line)
            if match:
                _add(found, match, section, images, held_names[section])
    return checked, sorted(found.values(), key=lambda u: (not u.security, bool(u.images), u.name))


def _add(found: dict, match: re.Match, section: int | None, images, held: set[str]) -> None:
    name, installed, candidate = match.group("name"), match.group("installed"), match.group("candidate")
    if section is not None and any(k[0] == name and k[2] == candidate and not u.images for k, u in found.items()):
        return  # the base's update: the new base carries it
    key = (name, installed, candidate)
    if key not in found:
        origins = re.sub(r"\s*\[[^\]]*\]\s*$", "", match.group("origins")).strip()
        found[key] = Update(name, installed, candidate, security="security" in origins.lower(), origin=origins,
                            held=name in held)
    found[key].held = found[key].held or name in held
    if section is not None:
        found[key].images.append(images[section] if section < len(images) else f"image {section}")


def images_on_base(catalog: Any, base: BaseImage) -> list[tuple[str, str]]:
    """(IMAGE:VERSION, image ref) of each image whose newest ready version was baked on this base.

    An image whose newest version is on an older base is left out: the next build re-bakes it anyway."""
    digest = base.digest.removeprefix("sha256:")
    newest: dict[str, dict[str, Any]] = {}
    for row in catalog.versions():  # newest first per image
        newest.setdefault(row["image"], row)
    found = []
    for image, row in sorted(newest.items()):
        record = catalog.version(image, row["version"]) or {}
        if str(record.get("provenance", {}).get("base_digest", "")).removeprefix("sha256:") == digest:
            found.append((f"{image}:{row['version']}", row["image_ref"]))
    return found


def check_updates(base: BaseImage, settings: BaseSettings, images: list[tuple[str, str]] | None = None) -> UpdateCheck:
    """Run the check in a throwaway container of the base; it is removed on every way out (Ctrl-C included)."""
    name = f"bakery-base-check-{os.getpid()}-{secrets.token_hex(3)}"
    mounts: list[str] = []
    labels: list[str] = []
    unchecked: list[str] = []
    for path in settings.file_paths():
        mounts += ["-v", f"{path}:{path}:ro"]
    for label, ref in images or []:
        if not ref or podman.image_id(ref) is None:
            unchecked.append(label)
            continue
        mounts += ["--mount", f"type=image,source={ref},destination={IMAGES_DIR}/{len(labels)}"]
        labels.append(label)
    try:
        proc = podman.run("run", "--rm", "--name", name, "--label", f"{leftovers.BUILD_LABEL}=1",
                          "--label", f"{leftovers.PID_LABEL}={os.getpid()}", *mounts,
                          base.ref, "sh", "-c", CHECK_SCRIPT, check=False, timeout=CHECK_TIMEOUT)
    finally:
        podman.remove_container(name)
    if proc.returncode != 0:
        last = ((proc.stderr or "").strip().splitlines() or ["no output"])[-1]
        last = re.sub(r"^image (\d+):", lambda m: f"image {labels[int(m.group(1))]}:" if int(m.group(1)) < len(
            labels) else m.group(0), last)
        raise OperationError(f"base {base.ref}: checking for updates failed (apt exit {proc.returncode}): {last}")
    checked, updates = parse_simulation(proc.stdout, labels)
    return UpdateCheck(base=base.ref, checked=checked, updates=updates, images=labels, unchecked=unchecked)
