"""An AMI's `verify --target aws` result: write-once SSM parameters, one per verification run.

`bake.py verify IMAGE:VERSION --target aws` reads an AMI's root snapshot back,
scans and boots it, and writes its result once (PutParameter without Overwrite)
in the home region at
`/bakery/verifications/<image>/readback/<version>/<region>/<ami-id>/<run-id>`:
the AMI, exactly the snapshots behind it, the sha256 of the disk read back, the
outcome and the digest of its report. Unlike the bake's record, an AMI may be
verified again (after a fix of the verification, or by another environment's
runtime config), so each run is a new leaf and the newest one counts: the one SSM
stored last (its LastModifiedDate, set by SSM), not the one whose written_at (the
writer's word) is latest.

A record counts for an AMI only when it names that AMI, its image and version,
and exactly the snapshots EC2 shows behind it now. A copy `bake.py distribute`
made is vouched for by its copy record (bakery.aws.verification_record) when
the source AMI's newest readback record passed. The gate (environments that
require `aws`) and distribute (before it copies or shares) ask `verdict`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from bakery.aws import amis, tags, verification_record
from bakery.errors import ConfigError, OperationError
from bakery.provenance import utc_now

READBACK = verification_record.READBACK  # the level under an image that holds these records: never a version
FACTS = ("image", "version", "region", "ami", "snapshots")  # what a record must say of the AMI it vouches for


def name(image: str, version: str, region: str, ami: str, run_id: str) -> str:
    """The SSM name of one verification run's record of one AMI."""
    return f"{ami_path(image, version, region, ami)}/{_level('run_id', run_id)}"


def ami_path(image: str, version: str, region: str, ami: str) -> str:
    """The SSM path holding every readback record of one AMI (GetParametersByPath reads them all)."""
    for field, value in (("image", image), ("version", version), ("region", region), ("ami", ami)):
        _level(field, value)
    return f"{verification_record.PREFIX}/{image}/{READBACK}/{version}/{region}/{ami}"


def _level(field: str, value: str) -> str:
    if not verification_record.NAME_PART_RE.match(value or ""):
        raise ConfigError(f"readback record: {field} '{value}' cannot be an SSM parameter name level: use 1-200 "
                          "letters, digits, '_', '.' or '-'")
    return value


def write(ssm, *, image: str, version: str, region: str, ami: str, snapshots: list[str], disk_sha256: str,
          passed: bool, report_sha256: str, summary: str, run_id: str, env: str) -> str:
    """Write one run's result once (ssm: the home region's client); returns the parameter name.

    A second write under the same run id is refused: a result is never replaced.
    """
    parameter = name(image, version, region, ami, run_id)
    record = {"image": image, "version": version, "region": region, "ami": ami, "snapshots": sorted(snapshots),
              "disk_sha256": disk_sha256, "passed": bool(passed), "report_sha256": report_sha256,
              "summary": summary, "run_id": run_id, "env": env, "written_at": utc_now()}
    value = verification_record.fit_summary(record)
    if value is None:
        raise OperationError(f"the readback record of {image}:{version} ({ami} in {region}) is over SSM's "
                             f"{verification_record.MAX_VALUE_BYTES}-byte standard-tier limit even without its "
                             f"summary ({len(snapshots)} snapshots)")
    verification_record.put_once(ssm, parameter, value,
                                 f"bakery verify --target aws of {image}:{version} ({ami} in {region}), written once",
                                 f"a readback record {parameter} already exists; records are written once: run "
                                 "./bake.py verify again (a new run id)")
    return parameter


def records(ssm, image: str, version: str, region: str, ami: str) -> list[dict[str, Any]]:
    """Every readback record of one AMI (GetParametersByPath, every page) with its parameter name and when SSM
    stored it (last_modified, UTC, fixed width: sortable as text); a value that is no JSON object is skipped (not
    bakery's)."""
    found: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"Path": ami_path(image, version, region, ami), "Recursive": False}
    while True:
        page = ssm.get_parameters_by_path(**kwargs)
        for parameter in page.get("Parameters", []):
            try:
                record = json.loads(parameter["Value"])
            except ValueError:
                continue
            if isinstance(record, dict):
                found.append({**record, "parameter": parameter["Name"],
                              "last_modified": _stored_at(parameter.get("LastModifiedDate"))})
        if not page.get("NextToken"):
            return found
        kwargs["NextToken"] = page["NextToken"]


def newest(ssm, image: str, version: str, region: str, ami: str,
           snapshots: list[str] | None = None) -> dict[str, Any] | None:
    """The AMI's readback record SSM stored last (its parameter name breaks a tie), or None.

    `snapshots`: the snapshots EC2 shows behind the AMI now; given, only a record
    that names the AMI and exactly them counts.
    """
    counted = [r for r in records(ssm, image, version, region, ami)
               if snapshots is None or not mismatch(r, image, version, region, ami, snapshots)]
    return max(counted, key=lambda r: (r["last_modified"], r["parameter"]), default=None)


def _stored_at(value: Any) -> str:
    """SSM's LastModifiedDate as UTC text of fixed width ('' when absent: oldest)."""
    if not isinstance(value, datetime):
        return ""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def mismatch(record: dict[str, Any], image: str, version: str, region: str, ami: str, snapshots: list[str]) -> str:
    """Why the record does not describe this AMI and exactly its snapshots ('' when it does)."""
    claimed = {key: record.get(key) for key in FACTS}
    actual = {"image": image, "version": version, "region": region, "ami": ami, "snapshots": sorted(snapshots)}
    if not snapshots:
        return f"{ami} has no snapshots"
    wrong = [key for key in FACTS if (sorted(claimed[key] or []) if key == "snapshots" else claimed[key])
             != actual[key]]
    return f"the record {record.get('parameter', '')} names another {', '.join(wrong)}" if wrong else ""


def verdict(ssm, ami: dict[str, Any], region: str) -> tuple[bool | None, str]:
    """(passed, summary) of the AMI (a describe_images entry in `region`): its own newest readback record, else, for
    a copy distribute made and recorded, its source AMI's. passed None: no record vouches for it."""
    facts = tags.from_tag_list(ami.get("Tags"))
    image, version, ami_id = facts.get(tags.IMAGE, ""), facts.get(tags.VERSION, ""), ami.get("ImageId", "")
    try:
        own = newest(ssm, image, version, region, ami_id, amis.snapshot_ids(ami))
    except ConfigError:  # tags no record name can be made of: no record vouches for it
        return None, ""
    if own is not None:
        return own.get("passed") is True, str(own.get("summary") or "")
    source = _copy_source(ssm, ami, region, image, version)
    if source is None:
        return None, ""
    found = newest(ssm, image, version, *source)
    if found is None:
        return None, ""
    summary = f"{found.get('summary') or ''} (on the source {source[1]} in {source[0]})".strip()
    return found.get("passed") is True, summary


def require_passed(ssm, ami: dict[str, Any], region: str) -> None:
    """Refuse (OperationError naming the AMI and the command that verifies it) an AMI `verdict` does not pass."""
    passed, summary = verdict(ssm, ami, region)
    if passed:
        return
    facts = tags.from_tag_list(ami.get("Tags"))
    named = f"{facts.get(tags.IMAGE, '?')}:{facts.get(tags.VERSION, '?')}"
    failed = f" (its last one failed: {summary})" if passed is False else ""
    raise OperationError(f"{named} (AMI {ami.get('ImageId')} in {region}) has not passed verify --target aws{failed}; "
                         f"run ./bake.py verify {named} --target aws first")


def _copy_source(ssm, ami: dict[str, Any], region: str, image: str,
                 version: str) -> tuple[str, str, list[str]] | None:
    """(region, AMI, snapshots) of the source of a copy distribute made and recorded, per the version's bake
    record; None when the AMI is no such copy."""
    copy = verification_record.read_copy_record(ssm, image, version, region, ami.get("ImageId", ""))
    if copy is None:
        return None
    bake = verification_record.read_record(ssm, image, version)
    if not verification_record.check_copy_record(copy, bake, ami, region)[0] or bake is None:
        return None
    source_region, source_ami = copy["source_region"], copy["source_ami"]
    return source_region, source_ami, list((bake.get("snapshots") or {}).get(source_region) or [])
