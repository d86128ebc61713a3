"""References in runtime config and the names they give, checked before anything reads or writes them.

Rules (docs/environments.md, "Parameters"; the applier on the instance re-checks them, so that it never reads outside
its mount): an SSM name is `/` then segments of letters, digits and `_ . -`, no empty, `.` or `..` segment, at most
1011 characters; ending in `/` it names a group (every parameter directly under it). A Secrets Manager name is 1 to
512 of letters, digits and `/ _ + = . @ -`, no empty, `.` or `..` segment; `#key` after it picks one key of its
JSON. ARNs of both resolve as these forms; anything else (file:/path, plain text) is no reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from bakery.errors import ConfigError
from bakery.runtime_grammar import shown

SSM_RE = re.compile(r"/[A-Za-z0-9_.\-/]*")
SSM_MAX = 1011
SECRET_RE = re.compile(r"[A-Za-z0-9/_+=.@\-]{1,512}")
SSM_ARN_RE = re.compile(r"(arn:aws[a-z-]*:ssm:([a-z0-9-]*):(\d{12}):parameter)(/.*)", re.DOTALL)
SECRET_ARN_RE = re.compile(r"(arn:aws[a-z-]*:secretsmanager:([a-z0-9-]*):(\d{12}):secret:)(.*)", re.DOTALL)
KINDS = ("ssm", "secretsmanager")
TYPES = {"ssm": ("String", "SecureString"), "secretsmanager": ("SecretString",)}


@dataclass(frozen=True)
class Reference:
    """One reference: kind ssm or secretsmanager, the parameter's or secret's name, a group (ssm, ends in /), the
    JSON key of a secret (#key). Written as an ARN it keeps the ARN (without #key), its region and account: the
    instance reads that one, so `param` and the IAM policy must name the same (a secret ARN is the SecretId)."""

    kind: str
    name: str
    group: bool = False
    field: str | None = None
    arn: str | None = None
    region: str | None = None
    account: str | None = None

    def __str__(self) -> str:
        return (self.arn or f"{self.kind}:{self.name}") + (f"#{self.field}" if self.field is not None else "")


def parse_reference(value: str, where: str) -> Reference | None:
    """The reference a runtime value gives, None when it gives none; ConfigError (`where: ...`) when it is malformed."""
    if value.startswith("ssm:"):
        return _ssm(value[4:], where)
    if value.startswith("secretsmanager:"):
        return _secret(value[len("secretsmanager:"):], where)
    arn = SSM_ARN_RE.fullmatch(value)
    if arn:
        return replace(_ssm(arn.group(4), where), arn=value, region=arn.group(2) or None, account=arn.group(3))
    arn = SECRET_ARN_RE.fullmatch(value)
    if arn:
        found = _secret(arn.group(4), where)
        return replace(found, arn=arn.group(1) + found.name, region=arn.group(2) or None, account=arn.group(3))
    return None


def check(ref: Reference, where: str) -> Reference:
    """A Reference made elsewhere (not parsed) checked by the same rules."""
    if ref.kind not in KINDS:
        raise ConfigError(f"{where}: '{shown(ref.kind)}' is no kind of reference (ssm or secretsmanager)")
    checked = _ssm(ref.name, where) if ref.kind == "ssm" else _secret(ref.name, where)
    if checked.name != ref.name or checked.group != ref.group:
        raise ConfigError(f"{where}: '{shown(str(ref))}' is not a valid reference")
    return ref


def _ssm(name: str, where: str) -> Reference:
    what = f"ssm parameter name '{shown(name)}'"
    if not name.startswith("/"):
        raise ConfigError(f"{where}: ssm parameter name must start with '/' (ssm:/path), got '{shown(name)}'")
    if len(name) > SSM_MAX:
        raise ConfigError(f"{where}: ssm parameter name is {len(name)} characters; at most {SSM_MAX}")
    if not SSM_RE.fullmatch(name):
        raise ConfigError(f"{where}: {what} may hold only letters, digits and _ . - / (after ssm:)")
    group = name.endswith("/")
    segments = name.strip("/").split("/") if name.strip("/") else []
    if not segments:
        raise ConfigError(f"{where}: {what} names no parameter: give ssm:/path or a group ssm:/path/")
    _segments(segments, what, where)
    return Reference("ssm", name, group=group)


def _secret(text: str, where: str) -> Reference:
    name, sep, field = text.partition("#")
    what = f"secret name '{shown(name)}'"
    if not SECRET_RE.fullmatch(name):
        raise ConfigError(f"{where}: {what} must be 1 to 512 letters, digits and / _ + = . @ - (after "
                          "secretsmanager:)")
    if sep and not field:
        raise ConfigError(f"{where}: {what} is followed by '#' and an empty JSON key: give secretsmanager:NAME#KEY "
                          "or leave out the '#'")
    _segments(name.split("/"), what, where)  # no empty one: the store keeps a/b and a//b apart
    return Reference("secretsmanager", name, field=field if sep else None)


def _segments(segments: list[str], what: str, where: str) -> None:
    for segment in segments:
        if segment in (".", ".."):
            raise ConfigError(f"{where}: {what} has a '{segment}' segment; name the parameter itself")
        if not segment:
            raise ConfigError(f"{where}: {what} has an empty segment ('//')")


def iam_prefix(ref: Reference, account: str, partition: str) -> str:
    """What an IAM resource of the reference starts with: its ARN's own partition, region and account when written
    as an ARN (a secret ARN carries Secrets Manager's suffix already), else any region of the given account."""
    if ref.arn:
        return ref.arn[:-len(ref.name)] if ref.kind == "secretsmanager" else ref.arn[:ref.arn.index(":parameter/")
                                                                                     + len(":parameter")]
    service = "secretsmanager" if ref.kind == "secretsmanager" else "ssm"
    return f"arn:{partition}:{service}:*:{account}:" + ("secret:" if ref.kind == "secretsmanager" else "parameter")


def member(group: Reference, name: str) -> Reference:
    """The parameter `name` directly under a group, in the group's region and account (an ARN group: an ARN)."""
    arn = group.arn[:group.arn.index(":parameter/") + len(":parameter")] + name if group.arn else None
    return replace(group, name=name, group=False, arn=arn)
