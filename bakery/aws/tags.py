"""The tags bakery puts on AMIs and snapshots: the AWS side of the catalog.

Every aws module reads and writes these names from here, so the builder that
tags an AMI, the fleet that launches it and the clean-up that deregisters it
agree. Values are sanitised to AWS's tag rules (256 characters, a restricted
character set) by bakery.provenance.sanitize_tag_value.
"""

from __future__ import annotations

from typing import Any

from bakery.provenance import TAG_VALUE_MAX, Provenance, sanitize_tag_value

MANAGED = "bakery:managed"  # "true" on everything this tool creates; gc touches nothing without it
IMAGE = "bakery:image"
VERSION = "bakery:version"
INPUT_DIGEST = "bakery:input-digest"
GIT_COMMIT = "bakery:git-commit"
GIT_MESSAGE = "bakery:git-message"
GIT_BRANCH = "bakery:git-branch"
GIT_DIRTY = "bakery:git-dirty"
BUILD_TIME = "bakery:build-time"
BASE_IMAGE = "bakery:base-image"
BAKERY_VERSION = "bakery:tool-version"
ROLES = "bakery:roles"
ARTIFACTS = "bakery:artifacts"
REQUIREMENTS = "bakery:requirements"  # requirements.lock's versions, "name=version ..." (digests: the label and file)
# "passed" or "failed": the builder's test run, so any checkout (or CI job) can apply the gate
VERIFIED = "bakery:verified"
VERIFICATION = "bakery:verification"  # its one-line summary
RUN = "bakery:run"  # the bake's run id: a failed bake removes only what its own run registered
# the disk builder's AMIs and snapshots (bakery.builders.disk): the sha256 (hex) of the raw disk they hold, which
# builder made them ("disk"), and the local verifications that passed on exactly those bytes (one line)
DISK_SHA256 = "bakery:disk-sha256"
BUILDER = "bakery:builder"
LOCAL_VERIFICATION = "bakery:local-verification"
ENVIRONMENT = "bakery:environment"  # on instances and volumes launched for an environment
# an environment's data volumes (bakery.fleets.aws_volumes): deploy.yml's data_volume name, the instance slot the
# volume belongs to (0, 1, ...), and while a hand-over runs which instance it is leaving or going to
# ("detach:i-..." / "attach:i-...": the next command finishes it from there)
DATA_VOLUME = "bakery:volume"
SLOT = "bakery:slot"
HANDOVER = "bakery:handover"


def provenance_tags(p: Provenance) -> dict[str, str]:
    """Every provenance fact as an AMI/snapshot tag (Name too, for the console)."""
    raw = {
        "Name": f"{p.image}-{p.version}",
        MANAGED: "true",
        IMAGE: p.image,
        VERSION: p.version,
        INPUT_DIGEST: p.input_digest,
        GIT_COMMIT: p.git_commit,
        GIT_MESSAGE: p.git_message,
        GIT_BRANCH: p.git_branch,
        GIT_DIRTY: str(p.git_dirty).lower(),
        BUILD_TIME: p.build_time,
        BASE_IMAGE: p.base_image,
        BAKERY_VERSION: p.bakery_version,
        ROLES: " ".join(f"{k}={v[:19]}" for k, v in p.roles.items()),
        ARTIFACTS: " ".join(f"{k}={v}" for k, v in p.artifacts.items()),
    }
    tags = {key: sanitize_tag_value(value) for key, value in raw.items()}
    if p.requirements:  # only with a requirements.yml: an AMI has room for 50 tags
        tags[REQUIREMENTS] = requirements_tag(p.requirements)
    return tags


def requirements_tag(requirements: dict[str, str]) -> str:
    """`name=version[@commit] ...` (the digests are in the image's label and file), cut at a whole entry."""
    words = [sanitize_tag_value(f"{name}={(value.split() or [''])[0]}", 4096) for name, value in requirements.items()]
    text = ""
    for word in words:
        if len(text) + len(word) + bool(text) > TAG_VALUE_MAX:
            break
        text = f"{text} {word}" if text else word
    return text or (words[0][:TAG_VALUE_MAX] if words else "")


def as_tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def from_tag_list(tags: list[dict[str, Any]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}
