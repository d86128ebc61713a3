"""Images no checkout's catalog lists any more: `bake.py gc --orphans`.

Every image a local bake commits (each cached role layer, and the version on top of them) names the checkout that
baked it (CHECKOUT_LABEL, set on the build container; committed images keep its labels). An image is an orphan
when that checkout's catalog does not list it: the checkout was deleted (a CI runner that bakes in a fresh clone
per job and deletes the clone afterwards), its .bakery was removed, or the catalog forgot it. No `gc --keep`
anywhere removes such an image, and nothing can use it: without this, they stay in podman's storage for good.

A checkout's own catalog is read, never written (SQLite read-only; a catalog that cannot be read keeps all its
images). An image whose bake may still run is never an orphan: while a bake of an image holds the checkout's
layer lock (bakery.builders.layer_lock), its new layers and version may not be in the catalog yet. Orphans go by
id, newest first; podman refuses one a container uses, and it is reported as kept.

A checkout moved or copied elsewhere together with its .bakery still names its old place in the images it baked
before. Run in that checkout, gc keeps what its own catalog lists; run in another one once the old place is gone,
it takes them, rollback targets included (a deploy or rollback to such a version then fails: bake it again).
Images with a name outside bakery's (built or committed from a baked one: they inherit its labels) are never
orphans, nor are those of a catalog this bakery cannot read (a newer schema).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery import podman
from bakery.builders.layer_lock import bake_running
from bakery.catalog_schema import SCHEMA_VERSION

CHECKOUT_LABEL = "io.bakery.checkout"
STATE_DIR = ".bakery"


@dataclass
class Orphans:
    """Images no catalog lists: those that go (or went), and those a container keeps."""

    images: list[dict[str, Any]] = field(default_factory=list)  # {id, names, checkout, why}
    kept: list[dict[str, Any]] = field(default_factory=list)  # {id, names, checkout, why, reason}

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "kept": self.kept}

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would remove" if dry_run else "removed"
        lines = [f"{verb} orphaned image {_name(e)} ({e['why']})" for e in self.images]
        return lines + [f"kept orphaned image {_name(e)} ({e['why']}; {e['reason']})" for e in self.kept]


def _name(entry: dict[str, Any]) -> str:
    return " ".join([entry["id"][:12], *entry["names"]])


def listed_ids(state_dir: Path) -> set[str] | None:
    """The image ids a checkout's catalog lists (versions and cached layers); None when it has none, or one this
    bakery cannot read (newer schema, unreadable file or directory: then nothing of that checkout is an orphan)."""
    path = state_dir / "catalog.db"
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10) as db:
            if db.execute("PRAGMA user_version").fetchone()[0] > SCHEMA_VERSION:
                return None  # its tables may say it elsewhere (bakery.catalog_schema refuses it too)
            rows = db.execute("SELECT image_id FROM versions UNION SELECT image_id FROM layers").fetchall()
    except (sqlite3.Error, OSError):
        return None
    return {podman.bare_id(row[0]) for row in rows if row[0]}


def _gone(state_dir: Path) -> str | None:
    """Why a checkout has no catalog (it is gone, or its .bakery is), or None when it may have one."""
    try:
        if (state_dir / "catalog.db").exists():
            return None
        checkout = state_dir.parent
        return f"{checkout} has no catalog" if checkout.exists() else f"checkout {checkout} is gone"
    except OSError:  # a place this user cannot look into: not known to be gone
        return None


def _bakerys(names: list[str]) -> bool:
    """Only bakery's own names (or none): an image someone built or committed from a baked one inherits its labels,
    and is not bakery's to remove."""
    return all(name.startswith((f"{podman.IMAGE_REPO}/", f"{podman.IMAGE_REPO}-cache/")) for name in names)


def find(keep_ids: Collection[str] = ()) -> Orphans:
    """Every image no catalog lists, newest first; never one `keep_ids` names (what the catalog of the checkout
    gc runs in lists: a moved checkout's images still name its old place), one whose bake may still run, or one
    with a name outside bakery's; those containers use are kept."""
    images = [image for image in json.loads(podman.run("images", "-a", "--filter", f"label={CHECKOUT_LABEL}",
                                                       "--format", "json").stdout or "[]")
              if (image.get("Labels") or {}).get(CHECKOUT_LABEL, "").startswith("/")
              and _bakerys(image.get("Names") or []) and podman.bare_id(image["Id"]) not in keep_ids]
    # The running bakes first, the catalogs after: a bake that records its images and ends in between is read.
    running = {(label, image_name) for label, image_name in
               {(i["Labels"][CHECKOUT_LABEL], i["Labels"].get("io.bakery.image", "")) for i in images}
               if bake_running(Path(label) / STATE_DIR, image_name)}
    catalogs = {label: listed_ids(Path(label) / STATE_DIR) for label in {i["Labels"][CHECKOUT_LABEL] for i in images}}
    found = Orphans()
    for image in sorted(images, key=lambda image: image.get("Created") or 0, reverse=True):
        checkout, image_id = image["Labels"][CHECKOUT_LABEL], podman.bare_id(image["Id"])
        listed = catalogs[checkout]
        if (checkout, image["Labels"].get("io.bakery.image", "")) in running:
            continue
        if listed is not None:
            if image_id in listed:
                continue
            why = f"the catalog of {checkout} does not list it"
        else:
            gone = _gone(Path(checkout) / STATE_DIR)
            if gone is None:
                continue  # a catalog that cannot be read
            why = gone
        entry = {"id": image_id, "names": image.get("Names") or [], "checkout": checkout, "why": why}
        if image.get("Containers"):
            found.kept.append({**entry, "reason": f"{image['Containers']} container(s) use it"})
        else:
            found.images.append(entry)
    return found


def remove(found: Orphans) -> Orphans:
    """`podman rmi` the orphans by id (never --force); what podman kept (a container started to use it meanwhile)
    is reported as kept."""
    done = Orphans(kept=list(found.kept))
    present = podman.remove_images_by_id([entry["id"] for entry in found.images])
    for entry in found.images:
        if entry["id"] in present:
            done.kept.append({**entry, "reason": "podman kept it: a container started to use it"})
        else:
            done.images.append(entry)
    return done
