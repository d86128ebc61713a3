"""boto3 clients the way every aws command needs them.

Credentials and region come from the standard AWS chain (environment, profile,
SSO, instance role); `aws.region` in bakery.yml only overrides the region. The
endpoint, too, is boto3's own: `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_<SERVICE>`)
points every client elsewhere, which is how the tests reach moto server on
loopback. Retries are botocore's adaptive mode (throttling backs off with a
client-side rate limiter). An AccessDenied answer becomes one line naming the
IAM action that is missing.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import NoCredentialsError, NoRegionError, ProfileNotFound

from bakery.errors import ConfigError, OperationError

RETRIES = {"mode": "adaptive", "max_attempts": 10}
DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess", "AuthFailure",
                "InvalidClientTokenId", "UnrecognizedClientException", "ExpiredToken", "ExpiredTokenException"}
POLICY_DOC = "docs/aws-iam-policy.json"


class AccessDenied(OperationError):
    """AWS refused a call: the message names the IAM action to grant."""

    def __init__(self, action: str, code: str, message: str):
        self.action = action
        super().__init__(f"AWS denied {action} ({code}: {message}); grant {action} to the caller "
                         f"({POLICY_DOC} lists every permission bakery needs)")


def _refuse_denied(http_response: Any = None, parsed: Any = None, model: Any = None, **_: Any) -> None:
    """after-call hook: turn an authorisation failure into AccessDenied before botocore raises ClientError."""
    error = (parsed or {}).get("Error") or {}
    code = error.get("Code", "")
    if code in DENIED_CODES and model is not None:
        prefix = model.service_model.metadata.get("signingName") or model.service_model.service_name
        raise AccessDenied(f"{prefix}:{model.name}", code, error.get("Message", ""))


@cache
def _session(profile: str | None) -> boto3.session.Session:
    try:
        return boto3.session.Session(profile_name=profile)
    except ProfileNotFound as exc:
        raise ConfigError(f"AWS profile '{profile}' not found; set AWS_PROFILE to a profile in ~/.aws/config") from exc


def resolve_region(region: str | None = None, profile: str | None = None) -> str:
    """The region given, else the chain's (AWS_REGION, AWS_DEFAULT_REGION, the profile)."""
    found = region or _session(profile).region_name
    if not found:
        raise ConfigError("no AWS region: set aws.region in bakery.yml or AWS_REGION in the environment")
    return found


def client(service: str, region: str | None = None, profile: str | None = None):
    """A boto3 client with adaptive retries and readable AccessDenied errors."""
    name = resolve_region(region, profile)
    try:
        made = _session(profile).client(service, region_name=name,
                                        config=Config(retries=RETRIES, user_agent_extra="bakery"))
    except NoRegionError as exc:
        raise ConfigError("no AWS region: set aws.region in bakery.yml or AWS_REGION in the environment") from exc
    made.meta.events.register(f"after-call.{made.meta.service_model.service_id.hyphenize()}", _refuse_denied)
    return made


def check_credentials(profile: str | None = None) -> None:
    """Fail with one line when the chain has no credentials at all (before any long operation starts)."""
    try:
        if _session(profile).get_credentials() is None:
            raise NoCredentialsError()
    except NoCredentialsError as exc:
        raise ConfigError("no AWS credentials found: configure the standard chain (AWS_PROFILE, aws sso login, "
                          "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an instance role)") from exc
