"""How big a rendered IAM policy is as IAM counts it, and how to split one over IAM's managed policy limit.

IAM's size limits count characters without white space (IAM User Guide, "IAM and AWS STS quotas"); a role may have
several managed policies, and an explicit Deny holds in whichever of them it is.
"""

from __future__ import annotations

import json
from typing import Any

MANAGED_POLICY_LIMIT = 6144  # one managed policy
INLINE_POLICIES_LIMIT = 10240  # all inline policies of one role together


def policy_size(policy: dict[str, Any]) -> int:
    """The policy's length as IAM counts it against its limits: without white space (none is inside bakery's values)."""
    return len(json.dumps(policy, separators=(",", ":")))


def split_policy(policy: dict[str, Any], limit: int = MANAGED_POLICY_LIMIT) -> list[dict[str, Any]]:
    """The statements, in order, in as few policies of at most `limit` characters as fit them (for managed
    policies: a role may have several; an explicit Deny holds whichever of them it is in)."""
    parts: list[list[dict[str, Any]]] = [[]]
    for statement in policy["Statement"]:
        if parts[-1] and policy_size({**policy, "Statement": [*parts[-1], statement]}) > limit:
            parts.append([])
        parts[-1].append(statement)
    return [{**policy, "Statement": statements} for statements in parts]


def size_note(policy: dict[str, Any]) -> str:
    """'' when the policy fits a managed policy; else one line saying how to attach it."""
    size = policy_size(policy)
    if size <= MANAGED_POLICY_LIMIT:
        return ""
    parts = len(split_policy(policy))
    where = (f"attach it inline (aws iam put-role-policy: {INLINE_POLICIES_LIMIT:,} for all of a role's inline "
             "policies) or as " if size <= INLINE_POLICIES_LIMIT else "attach it as ")
    return (f"the policy has {size:,} characters without white space, over the {MANAGED_POLICY_LIMIT:,} of a "
            f"managed policy: {where}{parts} managed policies, printed by --part 1 to --part {parts}")
