"""The verification gate: deploy and promote accept only an image version that passed `bake.py verify`.

`--force` bypasses it; the bypass is recorded in the release history by the caller.
"""

from __future__ import annotations

from typing import Any

from bakery.catalog import Catalog
from bakery.errors import OperationError


def latest_verification(catalog: Catalog, image: str, version: str) -> dict[str, Any] | None:
    rows = catalog.verifications(image, version)
    return rows[0] if rows else None


def require_verified(catalog: Catalog, image: str, version: str, *, required: bool, force: bool, env: str) -> bool:
    """Raise unless image:version's newest verification passed. Returns True when the gate was forced open."""
    if not required:
        return False
    verification = latest_verification(catalog, image, version)
    if verification and verification["passed"]:
        return False
    if force:
        return True
    if verification is None:
        raise OperationError(f"{image}:{version} has no verification; environment '{env}' requires one: "
                             f"run ./bake.py verify {image}:{version} (or deploy with --force, which is recorded)")
    raise OperationError(f"{image}:{version} failed its last verification ({verification['summary']}); "
                         f"environment '{env}' requires a pass: fix the image and verify again "
                         f"(or deploy with --force, which is recorded)")
