"""One key's reference into the values it sets: one key, or a group's members. Every value must pass the runtime
grammar's value rule and every member key its key rule (the applier's, passed in as `host`), or the key fails;
messages name the key, the reference and the parameter, never a value."""

import os
from dataclasses import dataclass

from bakery_runtime.aws import AwsStore
from bakery_runtime.references import member_key
from bakery_runtime.stores import LocalStore, Missing, Unusable, field_of


class Unresolved(Exception):
    def __init__(self, key, ref, reason):
        super().__init__(f"{key} ({ref}): {reason}")


@dataclass
class Resolved:
    values: dict  # key -> value: what runtime.env gets
    version: object  # the parameter's or secret's version; None for a group
    members: dict | None = None  # a group's keys: {"name": ..., "version": ...} each


def imds_region(host):
    """The instance's region (IMDSv2 meta-data/placement/region, asked as the applier asks for UserData)."""
    region = host.from_imds("meta-data/placement/region", "the region")
    if not region:
        raise host.Unreadable("cannot read the region from IMDS: no instance metadata here; set BAKERY_PARAMS")
    return region.decode("ascii", "replace").strip()


def open_store(host, mode, region=None):
    """BAKERY_AWS_REGION and BAKERY_AWS_ENDPOINT_URL are for tests (moto); on EC2 neither is set."""
    if mode == "local":
        return LocalStore(host.PARAMS_DIR)
    region = region or os.environ.get("BAKERY_AWS_REGION") or imds_region(host)
    return AwsStore(region, os.environ.get("BAKERY_AWS_ENDPOINT_URL") or None)


def checked_value(host, key, ref, value):
    refused = host.refused_character(value)
    if refused:
        position, escaped, kind = refused
        raise Unresolved(key, ref.text, f"its value has '{escaped}' ({kind}) at character {position}; a runtime "
                                        "config value is one line without control characters, quotes or backslashes")
    return value


def group_values(host, key, ref, members, taken):
    values, names = {}, {}
    for name, value, version in members:
        member = member_key(key, name)
        if host.reserved(member):
            raise Unresolved(key, ref.text, f"{member} (from {name}) is reserved ({host.reserved(member)})")
        if member in names or member in taken:
            also = f"from {names[member]}" if member in names else "in the runtime config"
            raise Unresolved(key, ref.text, f"{member} (from {name}) is given twice (also {also})")
        values[member] = checked_value(host, key, ref, value)
        names[member] = {"name": name, "version": version}
    return Resolved(values, None, names)


def resolve_key(host, store, key, ref, taken):
    """`taken`: the other keys runtime.env will hold, which a group member may not repeat."""
    try:
        if ref.kind == "group":
            return group_values(host, key, ref, store.group(ref), taken)
        value, version = store.parameter(ref) if ref.kind == "ssm" else store.secret(ref)
        if ref.field is not None:
            value = field_of(value, ref.field)
        return Resolved({key: checked_value(host, key, ref, value)}, version)
    except (Missing, Unusable) as error:
        raise Unresolved(key, ref.text, str(error)) from None
