"""An aws environment's parameters: SSM Parameter Store and Secrets Manager in the environment's region.

Writes: SSM PutParameter (Overwrite; a SecureString with the environment's KMS key, the one its volumes use, when
bakery.yml names one, else SSM's default key; the description names who wrote it) and Secrets Manager
PutSecretValue, or CreateSecret (with the KMS key) when the secret does not exist yet. Reads: GetParameterHistory
(type, version, when, who; no decryption) and GetParameter with decryption only for `param get --reveal`;
DescribeSecret, and GetSecretValue only for --reveal. Calls and their IAM permissions: docs/aws.md, "Parameters".
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bakery.aws.clients import client, resolve_region
from bakery.errors import ConfigError, OperationError
from bakery.params import names
from bakery.params.local_store import who

DESCRIPTION = "set by {who} with bake.py param"


def _iso(moment: Any) -> str | None:
    if isinstance(moment, datetime):
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(moment) if moment else None


def _writer(description: str | None, user: str | None) -> str | None:
    prefix, suffix = DESCRIPTION.split("{who}")
    if description and description.startswith(prefix) and description.endswith(suffix):
        return description[len(prefix):len(description) - len(suffix)]
    return user or None


def _code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)


class AwsStore:
    """SSM and Secrets Manager of one region, writing SecureStrings and secrets with one KMS key."""

    def __init__(self, region: str, kms_key: str = "", user: str | None = None):
        self.region, self.kms_key, self.user = region, kms_key, user

    @classmethod
    def for_environment(cls, project, env) -> AwsStore:
        """The environment's region (bakery_deploy.aws.region, else bakery.yml's aws.region, else AWS_REGION) and
        its KMS key (aws.region_kms_key_ids / aws.kms_key_id, as for its volumes); ConfigError without a region."""
        settings = project.aws
        region = resolve_region(env.aws.get("region") or settings.region or None)
        return cls(region, settings.kms_key_for(region, resolve_region(settings.region or None)))

    @cached_property
    def ssm(self):
        return client("ssm", self.region)

    @cached_property
    def secretsmanager(self):
        return client("secretsmanager", self.region)

    @cached_property
    def account(self) -> str:
        return client("sts", self.region).get_caller_identity()["Account"]

    def _ssm_for(self, ref: names.Reference):
        """SSM of the reference's region (an ARN's own), asked by name: GetParameterHistory and PutParameter take no
        ARN (PutParameter would make a parameter named like the ARN), so only an ARN of this account works."""
        if ref.arn and ref.account != self.account:
            raise ConfigError(f"param: {ref} is in account {ref.account}, not {self.account} (these credentials'); "
                              "write it in the account that owns it")
        return client("ssm", ref.region) if ref.region and ref.region != self.region else self.ssm

    def _secrets_for(self, ref: names.Reference):
        if ref.region and ref.region != self.region:
            return client("secretsmanager", ref.region)
        return self.secretsmanager

    def put(self, ref: names.Reference, value: str, kind: str) -> dict[str, Any]:
        by = self.user or who()
        try:
            if ref.kind == "ssm":
                args: dict[str, Any] = {"Name": ref.name, "Value": value, "Type": kind, "Overwrite": True,
                                        "Description": DESCRIPTION.format(who=by)}
                if kind == "SecureString" and self.kms_key and ref.region in (None, self.region):  # a key is regional
                    args["KeyId"] = self.kms_key
                version: Any = self._ssm_for(ref).put_parameter(**args)["Version"]
            else:
                version = self._put_secret(ref, value, by)
        except (ClientError, BotoCoreError) as exc:  # named by its code: an AWS message may quote the value
            raise OperationError(f"writing {ref} in {ref.region or self.region} failed: {_code(exc)}") from None
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"name": ref.name, "type": kind, "version": version, "modified": now, "by": by}

    def _put_secret(self, ref: names.Reference, value: str, by: str) -> str:
        """An ARN is the SecretId (as the instance asks): never a new secret for it, which would get another ARN."""
        sm = self._secrets_for(ref)
        secret_id = ref.arn or ref.name
        try:
            sm.describe_secret(SecretId=secret_id)
        except sm.exceptions.ResourceNotFoundException:
            if ref.arn:
                raise OperationError(f"{ref.region or self.region} has no secret {ref.arn}; create it there (its "
                                     "ARN is made by Secrets Manager), or give secretsmanager:NAME in runtime.yml") \
                    from None
            args: dict[str, Any] = {"Name": ref.name, "SecretString": value,
                                    "Description": DESCRIPTION.format(who=by)}
            if self.kms_key:
                args["KmsKeyId"] = self.kms_key
            return sm.create_secret(**args)["VersionId"]
        return sm.put_secret_value(SecretId=secret_id, SecretString=value)["VersionId"]

    def get(self, ref: names.Reference, reveal: bool = False) -> dict[str, Any] | None:
        """Type, version, when and who; the value of a String, or any value with reveal. None when missing."""
        try:
            return self._ssm_record(ref, reveal) if ref.kind == "ssm" else self._secret_record(ref, reveal)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in ("ParameterNotFound", "ResourceNotFoundException"):
                return None
            raise OperationError(f"reading {ref} in {ref.region or self.region} failed: {_code(exc)}") from None

    def _ssm_record(self, ref: names.Reference, reveal: bool) -> dict[str, Any]:
        ssm, history = self._ssm_for(ref), []
        for page in ssm.get_paginator("get_parameter_history").paginate(Name=ref.name, WithDecryption=False):
            history += page["Parameters"]
        last = max(history, key=lambda h: h["Version"])
        record = {"name": ref.name, "type": last["Type"], "version": last["Version"],
                  "modified": _iso(last.get("LastModifiedDate")),
                  "by": _writer(last.get("Description"), last.get("LastModifiedUser")),
                  "history": [{"version": h["Version"], "modified": _iso(h.get("LastModifiedDate")),
                               "by": _writer(h.get("Description"), h.get("LastModifiedUser"))} for h in history]}
        if reveal:
            record["value"] = ssm.get_parameter(Name=ref.name, WithDecryption=True)["Parameter"]["Value"]
        elif last["Type"] == "String":
            record["value"] = last.get("Value")
        return record

    def _secret_record(self, ref: names.Reference, reveal: bool) -> dict[str, Any]:
        sm = self._secrets_for(ref)
        described = sm.describe_secret(SecretId=ref.arn or ref.name)
        current = next((v for v, stages in (described.get("VersionIdsToStages") or {}).items()
                        if "AWSCURRENT" in stages), None)
        record = {"name": ref.name, "type": "SecretString", "version": current,
                  "modified": _iso(described.get("LastChangedDate") or described.get("CreatedDate")),
                  "by": _writer(described.get("Description"), None)}
        if reveal:
            record["value"] = sm.get_secret_value(SecretId=ref.arn or ref.name)["SecretString"]
        return record

    def list_group(self, ref: names.Reference) -> list[str]:
        """The parameters directly under a group (GetParametersByPath, not recursive, no decryption)."""
        found: list[str] = []
        try:
            for page in self._ssm_for(ref).get_paginator("get_parameters_by_path").paginate(
                    Path=ref.name.rstrip("/"), Recursive=False, WithDecryption=False):
                found += [p["Name"] for p in page["Parameters"]]
        except (ClientError, BotoCoreError) as exc:
            raise OperationError(f"listing {ref} in {ref.region or self.region} failed: {_code(exc)}") from None
        return sorted(found)
