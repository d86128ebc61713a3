"""The verification gate: deploy and promote accept only an image version that passed `bake.py verify`.

The catalog says which version passed. Where the image deployed is found
apart from that row (aws: the AMI carrying the version's tags in the
environment's region), the caller also passes `deployed`, the check that this
image is the one verified. `--force` bypasses both; the bypass is recorded in
the release history by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bakery.catalog import Catalog
from bakery.errors import OperationError


def latest_verification(catalog: Catalog, image: str, version: str) -> dict[str, Any] | None:
    rows = catalog.verifications(image, version)
    return rows[0] if rows else None


def require_verified(catalog: Catalog, image: str, version: str, *, required: bool, force: bool, env: str,
                     deployed: Callable[[], tuple[bool, str]] | None = None) -> bool:
    """Raise unless image:version's newest verification passed (and `deployed()`, when given, says the image
    deployed is the verified one: (passed, why)). Returns True when the gate was forced open."""
    if not required:
        return False
    verification = latest_verification(catalog, image, version)
    if verification and verification["passed"]:
        passed, why = deployed() if deployed is not None else (True, "")
        if passed or force:
            return not passed
        raise OperationError(f"{why}; environment '{env}' requires the image that passed: copy it here with "
                             f"./bake.py distribute {image}:{version}, or bake a new version "
                             "(or deploy with --force, which is recorded)")
    if force:
        return True
    if verification is None:
        raise OperationError(f"{image}:{version} has no verification; environment '{env}' requires one: "
                             f"run ./bake.py verify {image}:{version} (or deploy with --force, which is recorded)")
    raise OperationError(f"{image}:{version} failed its last verification ({verification['summary']}); "
                         f"environment '{env}' requires a pass: fix the image and verify again "
                         f"(or deploy with --force, which is recorded)")
