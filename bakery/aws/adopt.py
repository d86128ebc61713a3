"""Adopt a version baked elsewhere (CI, another laptop) into this checkout's catalog, from its AMI's tags.

On AWS the AMI tags are the source of truth and the local SQLite catalog is a
cache of them: a fresh CI container knows no version. Adoption records the AMI
as a ready version and, when the builder tagged its test result on the AMI
(tags.VERIFIED / tags.VERIFICATION), that result as the version's verification,
so the gate (bakery/verify/gate.py) and the pipeline's verify stage accept it there too.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from bakery.aws import amis, tags
from bakery.catalog import Catalog
from bakery.provenance import utc_now

log = logging.getLogger("bakery.aws.adopt")


def find_version_ami(ec2, image: str, version: str) -> dict[str, Any] | None:
    """The newest available AMI bakery made for image:version in this region (a pending or failed one is no version)."""
    return amis.newest_available(ec2, {tags.MANAGED: "true", tags.IMAGE: image, tags.VERSION: version})


def adopt_ami(catalog: Catalog, ami: dict[str, Any], region: str, run_id: str) -> dict[str, Any]:
    """Record `ami` (a describe_images entry) as its version unless the catalog knows it; returns the catalog row.

    The verification is recorded only by the call that adopted the version, so
    repeated or concurrent adoptions never add a second row.
    """
    facts = tags.from_tag_list(ami.get("Tags"))
    image, version, ami_id = facts[tags.IMAGE], facts.get(tags.VERSION, ""), ami["ImageId"]
    row = catalog.version(image, version)
    if row is not None:
        return row
    digest = facts.get(tags.INPUT_DIGEST, "")
    provenance = {"image": image, "version": version, "input_digest": digest,
                  "git_commit": facts.get(tags.GIT_COMMIT, ""), "tags": facts, "amis": {region: ami_id}}
    adopted = catalog.adopt_version(image, version, run_id=run_id, pid=os.getpid(), image_ref=ami_id, image_id=ami_id,
                                    input_digest=digest, provenance=provenance)
    if adopted:
        log.info("recorded %s:%s (%s in %s) in the catalog: it was baked elsewhere", image, version, ami_id, region)
        result = facts.get(tags.VERIFIED)
        if result:
            summary = facts.get(tags.VERIFICATION) or f"{tags.VERIFIED}={result} on {ami_id}"
            catalog.record_verification(image, version, env=None, started=utc_now(), seconds=0.0,
                                        passed=result == "passed", run_id=run_id, summary=summary,
                                        reports={"ami": ami_id})
    return catalog.version(image, version) or {}


def adopt_version(catalog: Catalog, ec2, image: str, version: str, region: str,
                  run_id: str) -> dict[str, Any] | None:
    """image:version's catalog row, adopted from its AMI's tags when the catalog lacks it; None if there is no AMI."""
    row = catalog.version(image, version)
    if row is not None:
        return row
    ami = find_version_ami(ec2, image, version)
    return adopt_ami(catalog, ami, region, run_id) if ami else None
