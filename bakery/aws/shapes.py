"""Requests made from describe answers: keep only what botocore's request shape has, at every depth.

A describe answer's structures carry members the matching create request lacks
(DescribeLaunchTemplateVersions' MetadataOptions.State, DescribeImages' Ebs.OutpostArn
and AvailabilityZone), and botocore refuses such a request before it is sent
("Unknown parameter"). moto answers with what it was given, so only the shapes show
it: a value copied from an answer into a request goes through request_only.
"""

from __future__ import annotations

from typing import Any


def request_only(value: Any, shape: Any) -> Any:
    """`value` with every structure member the botocore `shape` (a request's) does not have left out, recursively."""
    if shape.type_name == "structure" and isinstance(value, dict):
        return {key: request_only(item, shape.members[key]) for key, item in value.items() if key in shape.members}
    if shape.type_name == "list" and isinstance(value, list):
        return [request_only(item, shape.member) for item in value]
    if shape.type_name == "map" and isinstance(value, dict):
        return {key: request_only(item, shape.value) for key, item in value.items()}
    return value


def request_member(client: Any, operation: str, member: str) -> Any:
    """The shape of one top-level member of an operation's request (e.g. CreateLaunchTemplateVersion's
    LaunchTemplateData)."""
    return client.meta.service_model.operation_model(operation).input_shape.members[member]
