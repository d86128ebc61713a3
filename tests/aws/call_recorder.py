"""Record every AWS call bakery's own code makes while the aws tests run, so the policy replay
(tests/aws/test_policy_replay.py) can be checked against what bakery really sends.

A botocore handler on 'provide-client-params' (added to botocore's built-in handlers, so every session made
afterwards has it, bakery.aws.clients' included) sees each call before it is sent, moto's and Stubber's alike. A call
counts when the code that called the client is bakery's: the tests' own set-up calls and test doubles do not. Each
call is one JSON line in the file BAKERY_TEST_CALL_LOG names: service, operation, the tags the request sets
(TagSpecifications, Tags, tags, Tagging) and the condition keys the replay models from the parameters. bake.py, run
by the tests as a process of its own, records through the same handler: call_recorder_site/ on PYTHONPATH imports
this module at start-up (sitecustomize) when the variable is set.
"""

from __future__ import annotations

import json
import os
import sys
from functools import cache
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl

REPO = Path(__file__).resolve().parents[2]
BAKERY = str(REPO / "bakery") + os.sep
LOG_ENV = "BAKERY_TEST_CALL_LOG"
SITE = Path(__file__).resolve().parent / "call_recorder_site"
EVENT = "provide-client-params"


@cache
def _library_dirs() -> tuple[str, ...]:
    import boto3
    import botocore

    return tuple(str(Path(module.__file__).parent) + os.sep for module in (botocore, boto3))


def _bakery_caller() -> tuple[str, str] | None:
    """(file:line, file) of bakery's code that made the call and of the outermost frame of bakery/ (the entry the test
    or bake.py called), when the code that called the client is bakery's and not a test's (a test double's)."""
    frame: FrameType | None = sys._getframe(1)
    libraries = (*_library_dirs(), __file__)
    while frame is not None and frame.f_code.co_filename.startswith(libraries):
        frame = frame.f_back
    if frame is None or not frame.f_code.co_filename.startswith(BAKERY):
        return None
    where, entry = f"{frame.f_code.co_filename[len(str(REPO)) + 1:]}:{frame.f_lineno}", ""
    while frame is not None:
        if frame.f_code.co_filename.startswith(BAKERY):
            entry = frame.f_code.co_filename[len(str(REPO)) + 1:]
        frame = frame.f_back
    return where, entry


def request_tags(params: dict[str, Any]) -> dict[str, str] | None:
    """The tags a request sets (every resource type's of TagSpecifications together), or None when it sets none."""
    found: dict[str, str] = {}
    for spec in params.get("TagSpecifications") or []:
        found |= {tag["Key"]: tag.get("Value", "") for tag in spec.get("Tags") or []}
    for name in ("Tags", "tags"):  # EC2/SSM/Auto Scaling: [{Key, Value}]; Image Builder: {key: value}
        tags = params.get(name) or []
        found |= dict(tags) if isinstance(tags, dict) else {t["Key"]: t.get("Value", "") for t in tags if "Key" in t}
    found |= dict(parse_qsl(params.get("Tagging") or ""))  # S3 PutObject
    return found or None


def condition_keys(operation: str, params: dict[str, Any]) -> dict[str, str]:
    """The condition keys the replay models that the parameters decide."""
    if operation == "PutParameter":
        return {"ssm:Overwrite": "true" if params.get("Overwrite") else "false"}
    if operation in ("ModifyImageAttribute", "ModifySnapshotAttribute"):
        given = params.get("Attribute") or next(
            (name for name in ("LaunchPermission", "Description", "ImdsSupport", "CreateVolumePermission")
             if name in params), "")
        return {"ec2:Attribute": given[:1].lower() + given[1:]}
    return {}


def _record(params: dict[str, Any], model: Any, **_: Any) -> None:
    log = os.environ.get(LOG_ENV)
    caller = _bakery_caller() if log else None
    if log is None or caller is None:
        return
    service = model.service_model
    signing_name = service.metadata.get("signingName") or service.service_name
    line = {"service": service.service_name, "signing_name": signing_name, "operation": model.name,
            "request_tags": request_tags(params),
            "context": condition_keys(model.name, params), "where": caller[0], "entry": caller[1]}
    with open(log, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


def install() -> None:
    """Record the calls of every botocore session made from now on (idempotent)."""
    import botocore.handlers

    if (EVENT, _record) not in botocore.handlers.BUILTIN_HANDLERS:
        botocore.handlers.BUILTIN_HANDLERS.append((EVENT, _record))


def read(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
