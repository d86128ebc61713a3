"""The verification gate: deploy and promote accept only an image version that passed `bake.py verify`.

The catalog says which version passed its container and VM verifications.
Where the image deployed is found apart from that row (aws: the AMI carrying
the version's tags in the environment's region), the caller also passes
`deployed`, the check that this image is the one verified. The aws kind
(`bake.py verify --target aws`) is a verification of one AMI, judged from its
write-once records in SSM (bakery.aws.readback_record), not from the catalog:
the caller passes `aws`, the verdict on the AMI it chose. `--force` bypasses
every check; the bypass is recorded in the release history by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bakery.catalog import Catalog
from bakery.errors import OperationError

KINDS = ("container", "vm", "aws")
CATALOG_KINDS = ("container", "vm")  # the kinds the catalog's rows decide (and `deployed` ties to the image)


@dataclass(frozen=True)
class AwsVerdict:
    """What the records say of the AMI chosen: passed None when no aws verification vouches for it."""

    where: str  # "AMI ami-... in eu-west-1"
    passed: bool | None
    summary: str = ""


def latest_verification(catalog: Catalog, image: str, version: str, kind: str | None = None) -> dict[str, Any] | None:
    """The newest verification of the version (of `kind` when given: container or vm)."""
    rows = [r for r in catalog.verifications(image, version) if kind is None or r.get("kind", "container") == kind]
    return rows[0] if rows else None


def _disk_changed(catalog: Catalog, image: str, version: str, verification: dict[str, Any]) -> str:
    """Why a passed VM verification no longer vouches for the version's disk ('' while it does): it booted other
    bytes than the disk the catalog lists now (rebuilt since, or gone)."""
    disk = getattr(catalog, "disk", None)
    passed = (verification.get("reports") or {}).get("disk_sha256")
    current = disk(image, version, "raw") if disk is not None else None
    if current is None:
        return f"{image}:{version} has no disk any more (its VM verification booted sha256 {passed})"
    if passed != current["sha256"]:
        return (f"{image}:{version}'s disk is sha256 {current['sha256']} now, not the {passed} its VM verification "
                "booted")
    return ""


def require_verified(catalog: Catalog, image: str, version: str, *, required: bool | tuple[str, ...], force: bool,
                     env: str, deployed: Callable[[], tuple[bool, str]] | None = None,
                     aws: Callable[[], AwsVerdict] | None = None) -> bool:
    """Raise unless, for every kind `required` names (True: container), image:version's newest verification of
    that kind passed (and `deployed()`, when given, says the image deployed is the one the catalog's kinds are
    about: (passed, why)). The aws kind is judged by `aws()` on the AMI chosen; without it (no AMI chosen yet) it
    is left to the call that has one. Returns True when the gate was forced open."""
    kinds = ("container",) if required is True else tuple(required or ())
    for kind in kinds:
        if kind == "aws":
            if aws is not None and not _aws_passed(aws(), image, version, force=force, env=env):
                return True
            continue
        verification = latest_verification(catalog, image, version, kind)
        if verification and verification["passed"]:
            stale = _disk_changed(catalog, image, version, verification) if kind == "vm" else ""
            if not stale:
                continue
            if force:
                return True
            raise OperationError(f"{stale}; environment '{env}' requires the disk that passed: run "
                                 f"./bake.py verify {image}:{version} --vm again (or deploy with --force, which is "
                                 "recorded)")
        if force:
            return True
        how = f"./bake.py verify {image}:{version}" + (" --vm" if kind == "vm" else "")
        named = "" if kind == "container" else f"{kind} "  # the container verification is the verification
        if verification is None:
            raise OperationError(f"{image}:{version} has no {named}verification; environment '{env}' requires one: "
                                 f"run {how} (or deploy with --force, which is recorded)")
        raise OperationError(f"{image}:{version} failed its last {named}verification ({verification['summary']}); "
                             f"environment '{env}' requires a pass: fix the image and run {how} again "
                             f"(or deploy with --force, which is recorded)")
    if deployed is None or not any(kind in CATALOG_KINDS for kind in kinds):
        return False
    passed, why = deployed()
    if passed or force:
        return not passed
    raise OperationError(f"{why}; environment '{env}' requires the image that passed: copy it here with "
                         f"./bake.py distribute {image}:{version}, or bake a new version "
                         "(or deploy with --force, which is recorded)")


def _aws_passed(verdict: AwsVerdict, image: str, version: str, *, force: bool, env: str) -> bool:
    """True when the AMI passed its newest aws verification; False when it did not and `force` opens the gate."""
    if verdict.passed or force:
        return bool(verdict.passed)
    how = f"./bake.py verify {image}:{version} --target aws"
    if verdict.passed is None:
        raise OperationError(f"{image}:{version} ({verdict.where}) has no aws verification; environment '{env}' "
                             f"requires one: run {how} (or deploy with --force, which is recorded)")
    raise OperationError(f"{image}:{version} ({verdict.where}) failed its last aws verification ({verdict.summary}); "
                         f"environment '{env}' requires a pass: fix the image and run {how} again "
                         "(or deploy with --force, which is recorded)")
