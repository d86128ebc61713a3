"""The released version of each environment on AWS, in SSM Parameter Store.

`/bakery/<image>/<env>/ami-id` and `/bakery/<image>/<env>/version` (String,
overwritten) name what an environment runs. They are written only after an
instance refresh ended Successful, so they never point at a version that rolled
back. The previous release (a rollback target, kept by gc) is the previous
distinct value in the parameter's history.
"""

from __future__ import annotations

from typing import Any

AMI_ID = "ami-id"
VERSION = "version"


def parameter(image: str, env: str, what: str) -> str:
    return f"/bakery/{image}/{env}/{what}"


def record_release(ssm: Any, image: str, env: str, ami_id: str, version: str) -> None:
    """Write both parameters (the AMI id first: a reader that finds the version finds its AMI too)."""
    for what, value in ((AMI_ID, ami_id), (VERSION, version)):
        ssm.put_parameter(Name=parameter(image, env, what), Value=value, Type="String", Overwrite=True,
                          Description=f"bakery: the {what} released to environment {env} of image {image}")


def released(ssm: Any, image: str, env: str) -> dict[str, str] | None:
    """{'ami_id': ..., 'version': ...} of the environment's current release; None before its first successful
    refresh."""
    names = [parameter(image, env, AMI_ID), parameter(image, env, VERSION)]
    found = {p["Name"]: p["Value"] for p in ssm.get_parameters(Names=names)["Parameters"]}
    if len(found) < 2:
        return None
    return {"ami_id": found[names[0]], "version": found[names[1]]}


def history(ssm: Any, image: str, env: str, what: str = VERSION) -> list[str]:
    """Distinct values of one release parameter, newest first (a repeated release counts once)."""
    values: list[str] = []
    paginator = ssm.get_paginator("get_parameter_history")
    try:
        for page in paginator.paginate(Name=parameter(image, env, what)):
            values.extend(p["Value"] for p in page["Parameters"])
    except ssm.exceptions.ParameterNotFound:
        return []
    newest_first: list[str] = []
    for value in reversed(values):  # the history comes oldest first
        if not newest_first or newest_first[-1] != value:
            newest_first.append(value)
    return list(dict.fromkeys(newest_first))


def previous_release(ssm: Any, image: str, env: str, what: str = VERSION) -> str | None:
    """The value before the current one: what a rollback returns to."""
    values = history(ssm, image, env, what)
    return values[1] if len(values) > 1 else None
