"""Follow one EC2 Image Builder image build to its end: progress per state, the failing phase and its logs if it fails.

Image Builder has no waiter: the build is polled with `get_image`, backing off
from a short first interval to a longer one, and every state change (PENDING,
CREATING, BUILDING, TESTING, DISTRIBUTING, INTEGRATING, AVAILABLE) is one
progress line. FAILED or CANCELLED becomes an ImageBuildFailed naming the phase
(from the failure context Image Builder reports, else the last state seen) and
where its logs are: the S3 prefix of the infrastructure configuration's logging
and the CloudWatch log group.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bakery.aws.amis import backoff
from bakery.errors import OperationError
from bakery.progress import Progress

AVAILABLE = "AVAILABLE"
FAILED_STATES = {"FAILED", "CANCELLED", "DEPRECATED", "DELETED", "DISABLED"}
# The phase a build is in while Image Builder shows this state.
PHASE_OF_STATE = {"PENDING": "start", "CREATING": "launch", "BUILDING": "build", "TESTING": "test",
                  "DISTRIBUTING": "distribution", "INTEGRATING": "integration"}


class ImageBuildFailed(OperationError):
    """The build ended in a failed state (nothing left to cancel)."""


def log_locations(image: dict[str, Any]) -> str:
    """Where the build's logs are: S3 (when the infrastructure configuration logs there) and CloudWatch."""
    places = []
    s3 = ((image.get("infrastructureConfiguration") or {}).get("logging") or {}).get("s3Logs") or {}
    if s3.get("s3BucketName"):
        prefix = s3.get("s3KeyPrefix", "").strip("/")
        places.append(f"s3://{s3['s3BucketName']}/{prefix + '/' if prefix else ''}")
    group = (image.get("loggingConfiguration") or {}).get("logGroupName")
    recipe = (image.get("imageRecipe") or {}).get("name") or image.get("name", "")
    places.append(f"CloudWatch log group {group or f'/aws/imagebuilder/{recipe}'}")
    return ", ".join(places)


def describe_failure(image: dict[str, Any], last_state: str) -> str:
    state = image.get("state") or {}
    context = state.get("failureContext") or {}
    component = context.get("componentFailure") or {}
    phase = (component.get("phaseName") or PHASE_OF_STATE.get(context.get("imageStatus", ""), "")
             or PHASE_OF_STATE.get(last_state, last_state.lower()))
    step = component.get("stepName") or context.get("failedStep")
    reason = (component.get("errorMessage") or (context.get("distributionFailure") or {}).get("errorMessage")
              or state.get("reason"))
    reason = " ".join((reason or "no reason given").split())[:400]
    where = f"phase '{phase}'" + (f", step '{step}'" if step else "")
    return (f"Image Builder build {image.get('arn', '')} {state.get('status', 'FAILED')} in {where}: {reason} "
            f"(logs: {log_locations(image)})")


def wait_for_image(ib, arn: str, progress: Progress, label: str, *, first: float, limit: float, timeout: float,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll until the build is AVAILABLE (returns the image) or fails (raises ImageBuildFailed)."""
    started = time.monotonic()
    shown, active = "", "PENDING"
    for delay in backoff(first, limit):
        image = ib.get_image(imageBuildVersionArn=arn)["image"]
        status = (image.get("state") or {}).get("status", "PENDING")
        if status != shown:
            progress.note(f"{label}: Image Builder {status} ({time.monotonic() - started:.0f} s)")
            shown = status
        if status == AVAILABLE:
            return image
        if status in FAILED_STATES:
            raise ImageBuildFailed(describe_failure(image, active))
        active = status
        if time.monotonic() - started + delay > timeout:
            raise OperationError(f"Image Builder build {arn} is still {status} after {timeout:.0f} s; it was cancelled "
                                 f"(logs: {log_locations(image)})")
        sleep(delay)
    raise AssertionError("unreachable")
