"""IAM for parameters (issue 17): what `bake.py param` needs on an aws environment's references, and the read
policy of the environment's instance role, which resolves them at boot and on refresh.

Both are scoped to the references the environment's runtime config holds, never to a prefix of the account: an SSM
parameter by its name, a group (ssm:/path/) by its path (GetParametersByPath) and what lies under it, a secret by
its name and the six characters Secrets Manager appends to every secret's ARN. KMS only through SSM and Secrets
Manager (kms:ViaService): the role can decrypt nothing with the key directly. Pure: no AWS call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bakery.errors import ConfigError
from bakery.params import names

Statement = dict[str, Any]
VIA = ["ssm.*.amazonaws.com", "secretsmanager.*.amazonaws.com"]
OPERATOR_SSM = ["ssm:GetParameter", "ssm:GetParameterHistory", "ssm:GetParametersByPath", "ssm:PutParameter"]
OPERATOR_SECRETS = ["secretsmanager:CreateSecret", "secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue",
                    "secretsmanager:PutSecretValue"]


def resources(references: Iterable[str], account: str, partition: str = "aws") -> dict[str, list[str]]:
    """The ARNs of references: 'parameters' (names and what lies under a group), 'paths' (the groups themselves, for
    GetParametersByPath) and 'secrets'. Regions stay '*': the environment's region is where they are looked up."""
    parameters, paths, secrets = set(), set(), set()
    for text in references:
        ref = names.parse_reference(text, "iam-policy")
        if ref is None:
            continue
        prefix = names.iam_prefix(ref, account, partition)  # an ARN reference: its ARN as written
        if ref.kind == "secretsmanager":
            secrets.add(f"{prefix}{ref.name}" + ("" if ref.arn else "-??????"))
        elif ref.group:
            path = ref.name.rstrip("/")
            paths.add(f"{prefix}{path}")
            parameters.add(f"{prefix}{path}/*")
        else:
            parameters.add(f"{prefix}{ref.name}")
    return {"parameters": sorted(parameters), "paths": sorted(paths), "secrets": sorted(secrets)}


def _kms(actions: list[str], account: str, partition: str, sid: str) -> Statement:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": f"arn:{partition}:kms:*:{account}:key/*",
            "Condition": {"StringLike": {"kms:ViaService": VIA}}}


def operator_statements(parameters: Mapping[str, Sequence[str]], account: str,
                        partition: str = "aws") -> list[Statement]:
    """`bake.py param set|get|list` on the references of these environments (environment -> references)."""
    found = resources([ref for refs in parameters.values() for ref in refs], account, partition)
    statements: list[Statement] = []
    if found["parameters"] or found["paths"]:
        statements.append({"Sid": "EnvironmentParameters", "Effect": "Allow", "Action": OPERATOR_SSM,
                           "Resource": found["paths"] + found["parameters"]})
    if found["secrets"]:
        statements.append({"Sid": "EnvironmentSecrets", "Effect": "Allow", "Action": OPERATOR_SECRETS,
                           "Resource": found["secrets"]})
    if statements:
        statements.append(_kms(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"], account, partition,
                               "KmsThroughSsmAndSecretsManager"))
    return statements


def render_instance_read_policy(env: str, references: Sequence[str], account: str,
                                partition: str = "aws") -> dict[str, Any]:
    """The read policy of environment `env`'s instance role: exactly its references, decrypted through the
    services only. ConfigError when the environment references nothing (the role then needs no such policy)."""
    found = resources(references, account, partition)
    statements: list[Statement] = []
    if found["parameters"]:
        statements.append({"Sid": "ReadTheEnvironmentsParameters", "Effect": "Allow",
                           "Action": ["ssm:GetParameter", "ssm:GetParameters"], "Resource": found["parameters"]})
    if found["paths"]:
        statements.append({"Sid": "ReadTheEnvironmentsParameterGroups", "Effect": "Allow",
                           "Action": "ssm:GetParametersByPath", "Resource": found["paths"]})
    if found["secrets"]:
        statements.append({"Sid": "ReadTheEnvironmentsSecrets", "Effect": "Allow",
                           "Action": "secretsmanager:GetSecretValue", "Resource": found["secrets"]})
    if not statements:
        raise ConfigError(f"environment '{env}' references no parameter or secret in its runtime config: its instance "
                          "role needs no read policy")
    statements.append(_kms(["kms:Decrypt"], account, partition, "DecryptThroughSsmAndSecretsManager"))
    return {"Version": "2012-10-17", "Statement": statements}
