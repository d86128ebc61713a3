"""The test IAM evaluator (tests/iam_evaluator.py) against AWS's own documented evaluation examples.

Each test names the IAM User Guide page its policy and expected answers come from. The policies
are the pages' examples (policy variables replaced by literals, which the evaluator refuses), and
every test checks answers that differ, so a wrong evaluator fails it.
"""

from __future__ import annotations

import pytest

from tests.iam_evaluator import PolicyError, evaluate, matching_statements

pytestmark = pytest.mark.unit

ACCOUNT = "111122223333"
ALLOW_ALL = {"Effect": "Allow", "Action": "*", "Resource": "*"}


def policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def test_explicit_deny_overrides_allow_and_unlisted_actions_are_implicitly_denied():
    """ "The difference between explicit and implicit denies": AllowGetList allows iam:Get*/List*,
    DenyReports denies iam:*Report, so iam:CreatePolicy is implicitly denied and a report action is
    explicitly denied even when another policy allows it."""
    doc = policy(
        {"Sid": "AllowGetList", "Effect": "Allow", "Action": ["iam:Get*", "iam:List*"], "Resource": "*"},
        {"Sid": "DenyReports", "Effect": "Deny", "Action": "iam:*Report", "Resource": "*"},
    )
    grant_reports = policy({"Effect": "Allow", "Action": "iam:GenerateCredentialReport", "Resource": "*"})
    assert evaluate([doc], "iam:GetUser", "*", {}) == "allow"
    assert evaluate([doc], "iam:ListRoles", "*", {}) == "allow"
    assert evaluate([doc], "iam:CreatePolicy", "*", {}) == "implicit_deny"
    assert evaluate([doc], "iam:GetOrganizationsAccessReport", "*", {}) == "explicit_deny"
    assert evaluate([doc, grant_reports], "iam:GenerateCredentialReport", "*", {}) == "explicit_deny"
    assert evaluate([grant_reports], "iam:GenerateCredentialReport", "*", {}) == "allow"
    assert evaluate([], "iam:GetUser", "*", {}) == "implicit_deny"


def test_action_names_are_case_insensitive_and_take_wildcards():
    """ "IAM JSON policy elements: Action": "iam:ListAccessKeys is the same as IAM:listaccesskeys", and
    iam:*AccessKey* covers CreateAccessKey, DeleteAccessKey, ListAccessKeys, UpdateAccessKey."""
    exact = policy({"Effect": "Allow", "Action": "iam:ListAccessKeys", "Resource": "*"})
    assert evaluate([exact], "IAM:listaccesskeys", "*", {}) == "allow"
    assert evaluate([exact], "iam:ListAccessKey", "*", {}) == "implicit_deny"
    wildcard = policy({"Effect": "Allow", "Action": "iam:*AccessKey*", "Resource": "*"})
    for action in ("iam:CreateAccessKey", "iam:DeleteAccessKey", "iam:ListAccessKeys", "iam:UpdateAccessKey"):
        assert evaluate([wildcard], action, "*", {}) == "allow", action
    assert evaluate([wildcard], "iam:ListUsers", "*", {}) == "implicit_deny"
    assert evaluate([wildcard], "s3:CreateAccessKey", "*", {}) == "implicit_deny"
    single = policy({"Effect": "Allow", "Action": "ec2:?escribeImages", "Resource": "*"})
    assert evaluate([single], "ec2:DescribeImages", "*", {}) == "allow"
    assert evaluate([single], "ec2:XXDescribeImages", "*", {}) == "implicit_deny"


def test_not_action_with_deny_denies_every_other_action_without_mfa():
    """ "IAM JSON policy elements: NotAction" (NotAction with Deny): DenyAllUsersNotUsingMFA denies
    everything except IAM when aws:MultiFactorAuthPresent is false or absent (BoolIfExists)."""
    deny = policy(
        {
            "Sid": "DenyAllUsersNotUsingMFA",
            "Effect": "Deny",
            "NotAction": "iam:*",
            "Resource": "*",
            "Condition": {"BoolIfExists": {"aws:MultiFactorAuthPresent": "false"}},
        }
    )
    grant = policy(ALLOW_ALL)
    bucket = "arn:aws:s3:::amzn-s3-demo-bucket"
    assert evaluate([deny, grant], "s3:ListBucket", bucket, {}) == "explicit_deny"
    assert evaluate([deny, grant], "s3:ListBucket", bucket, {"aws:MultiFactorAuthPresent": False}) == "explicit_deny"
    assert evaluate([deny, grant], "s3:ListBucket", bucket, {"aws:MultiFactorAuthPresent": True}) == "allow"
    assert evaluate([deny, grant], "iam:ListUsers", "*", {}) == "allow"
    assert evaluate([deny], "iam:ListUsers", "*", {}) == "implicit_deny"  # the Deny grants nothing


def test_not_action_with_allow_is_scoped_by_resource():
    """ "IAM JSON policy elements: NotAction" (NotAction with Allow): every S3 action on S3 resources
    except s3:DeleteBucket; other services' actions do not apply to S3 resources."""
    doc = policy({"Effect": "Allow", "NotAction": "s3:DeleteBucket", "Resource": "arn:aws:s3:::*"})
    assert evaluate([doc], "s3:PutObject", "arn:aws:s3:::bucket/key", {}) == "allow"
    assert evaluate([doc], "s3:DeleteBucket", "arn:aws:s3:::bucket", {}) == "implicit_deny"
    assert evaluate([doc], "ec2:RunInstances", f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-1", {}) == "implicit_deny"


def test_not_resource_with_deny_denies_everything_but_the_listed_resources():
    """ "IAM JSON policy elements: NotResource": HRPayroll may reach only HRBucket/Payroll; the Deny
    with NotResource denies all other S3 resources and grants nothing itself."""
    deny = policy(
        {
            "Effect": "Deny",
            "Action": "s3:*",
            "NotResource": ["arn:aws:s3:::HRBucket/Payroll", "arn:aws:s3:::HRBucket/Payroll/*"],
        }
    )
    grant = policy({"Effect": "Allow", "Action": "s3:*", "Resource": "*"})
    assert evaluate([deny, grant], "s3:GetObject", "arn:aws:s3:::HRBucket/Payroll/jan.csv", {}) == "allow"
    assert evaluate([deny, grant], "s3:ListBucket", "arn:aws:s3:::HRBucket/Payroll", {}) == "allow"
    assert evaluate([deny, grant], "s3:GetObject", "arn:aws:s3:::HRBucket/Other/x", {}) == "explicit_deny"
    assert evaluate([deny, grant], "s3:GetObject", "arn:aws:s3:::OtherBucket/Payroll/x", {}) == "explicit_deny"
    assert evaluate([deny], "s3:GetObject", "arn:aws:s3:::HRBucket/Payroll/jan.csv", {}) == "implicit_deny"


def test_resource_arns_match_case_sensitively_with_wildcards():
    """ "IAM JSON policy elements: Resource": user/accounting/* covers users under that path; the IAM
    user name is case-sensitive; * and ? match within a colon-separated segment, and a * that ends a
    segment "can expand to match beyond the colon boundaries"."""
    users = policy(
        {"Effect": "Allow", "Action": "iam:GetUser", "Resource": f"arn:aws:iam::{ACCOUNT}:user/accounting/*"}
    )
    assert evaluate([users], "iam:GetUser", f"arn:aws:iam::{ACCOUNT}:user/accounting/bob", {}) == "allow"
    assert evaluate([users], "iam:GetUser", f"arn:aws:iam::{ACCOUNT}:user/accounting/eu/ann", {}) == "allow"
    assert evaluate([users], "iam:GetUser", f"arn:aws:iam::{ACCOUNT}:user/Accounting/bob", {}) == "implicit_deny"
    assert evaluate([users], "iam:GetUser", "arn:aws:iam::999999999999:user/accounting/bob", {}) == "implicit_deny"
    bob = policy({"Effect": "Allow", "Action": "iam:GetUser", "Resource": f"arn:aws:iam::{ACCOUNT}:user/Bo?"})
    assert evaluate([bob], "iam:GetUser", f"arn:aws:iam::{ACCOUNT}:user/Bob", {}) == "allow"
    assert evaluate([bob], "iam:GetUser", f"arn:aws:iam::{ACCOUNT}:user/Bobby", {}) == "implicit_deny"
    logs = policy(
        {"Effect": "Allow", "Action": "logs:*", "Resource": f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/bakery/*"}
    )
    stream = f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/bakery/web:log-stream:i-1"
    assert evaluate([logs], "logs:GetLogEvents", stream, {}) == "allow"
    mid = policy({"Effect": "Allow", "Action": "ec2:*", "Resource": f"arn:aws:ec2:us-*-1:{ACCOUNT}:image/*"})
    assert evaluate([mid], "ec2:DescribeImages", f"arn:aws:ec2:us-east-1:{ACCOUNT}:image/ami-1", {}) == "allow"
    crossing = f"arn:aws:ec2:us-east:x-1:{ACCOUNT}:image/ami-1"
    assert evaluate([mid], "ec2:DescribeImages", crossing, {}) == "implicit_deny"
    assert evaluate([mid], "ec2:DescribeImages", "*", {}) == "implicit_deny"  # an ARN never matches "*"


def test_string_like_wildcards_and_if_exists():
    """ "IAM JSON policy elements: Condition operators" (...IfExists): StringLike on ec2:InstanceType
    fails for RunInstances' other resources (no such key), so THISPOLICYDOESNOTWORK allows nothing;
    StringLikeIfExists checks the key only where it exists. StringLike is case-sensitive."""
    types = ["t1.*", "t2.*", "m3.*"]
    broken = policy(
        {
            "Sid": "THISPOLICYDOESNOTWORK",
            "Effect": "Allow",
            "Action": "ec2:RunInstances",
            "Resource": "*",
            "Condition": {"StringLike": {"ec2:InstanceType": types}},
        }
    )
    fixed = policy(
        {
            "Sid": "RunInstance",
            "Effect": "Allow",
            "Action": "ec2:RunInstances",
            "Resource": "*",
            "Condition": {"StringLikeIfExists": {"ec2:InstanceType": types}},
        }
    )
    image = "arn:aws:ec2:us-east-1::image/ami-1"
    instance = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/*"
    assert evaluate([broken], "ec2:RunInstances", image, {}) == "implicit_deny"
    assert evaluate([broken], "ec2:RunInstances", instance, {"ec2:InstanceType": "t2.micro"}) == "allow"
    assert evaluate([fixed], "ec2:RunInstances", image, {}) == "allow"
    assert evaluate([fixed], "ec2:RunInstances", instance, {"ec2:InstanceType": "m3.large"}) == "allow"
    assert evaluate([fixed], "ec2:RunInstances", instance, {"ec2:InstanceType": "m5.large"}) == "implicit_deny"
    assert evaluate([fixed], "ec2:RunInstances", instance, {"ec2:InstanceType": "T2.micro"}) == "implicit_deny"
    assert evaluate([fixed], "ec2:RunInstances", instance, {"ec2:InstanceType": "t2"}) == "implicit_deny"


def test_missing_key_is_false_except_for_negated_operators():
    """ "IAM JSON policy elements: Condition operators" (Important): a key missing from the request
    context makes the condition false, but true for an operator requiring the key NOT to match
    (StringNotLike, ArnNotLike); "...IfExists": a Deny with StringNotEqualsIfExists still denies when
    the tag is missing."""

    def allow(operator: str) -> dict:
        condition = {operator: {"aws:ResourceTag/env": "prod*"}}
        return policy({"Effect": "Allow", "Action": "ec2:*", "Resource": "*", "Condition": condition})

    assert evaluate([allow("StringLike")], "ec2:StopInstances", "*", {}) == "implicit_deny"
    assert evaluate([allow("StringNotLike")], "ec2:StopInstances", "*", {}) == "allow"
    assert evaluate([allow("StringNotLike")], "ec2:StopInstances", "*", {"aws:ResourceTag/env": "prod-1"}) == (
        "implicit_deny"
    )
    arn_not = policy(
        {
            "Effect": "Allow",
            "Action": "sqs:SendMessage",
            "Resource": "*",
            "Condition": {"ArnNotLike": {"aws:SourceArn": f"arn:aws:sns:*:{ACCOUNT}:*"}},
        }
    )
    assert evaluate([arn_not], "sqs:SendMessage", "*", {}) == "allow"
    deny = policy(
        ALLOW_ALL,
        {
            "Effect": "Deny",
            "Action": "ec2:TerminateInstances",
            "Resource": "*",
            "Condition": {"StringNotEqualsIfExists": {"aws:ResourceTag/team": "web"}},
        },
    )
    assert evaluate([deny], "ec2:TerminateInstances", "*", {}) == "explicit_deny"
    assert evaluate([deny], "ec2:TerminateInstances", "*", {"aws:ResourceTag/team": "db"}) == "explicit_deny"
    assert evaluate([deny], "ec2:TerminateInstances", "*", {"aws:ResourceTag/team": "web"}) == "allow"


def test_for_all_values_tag_keys_passes_a_request_without_tags():
    """ "Controlling access to AWS resources using tags" (Controlling tag keys): ForAllValues:StringEquals
    on aws:TagKeys allows only the keys environment and cost-center; "Single-valued vs. multivalued
    context keys": ForAllValues also returns true when the request has no such key (or an empty set)."""
    doc = policy(
        {
            "Effect": "Allow",
            "Action": ["secretsmanager:CreateSecret", "secretsmanager:TagResource"],
            "Resource": "*",
            "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["environment", "cost-center"]}},
        }
    )
    assert evaluate([doc], "secretsmanager:CreateSecret", "*", {}) == "allow"
    assert evaluate([doc], "secretsmanager:CreateSecret", "*", {"aws:TagKeys": []}) == "allow"
    assert evaluate([doc], "secretsmanager:TagResource", "*", {"aws:TagKeys": ["environment"]}) == "allow"
    assert evaluate([doc], "secretsmanager:TagResource", "*", {"aws:TagKeys": ["cost-center", "environment"]}) == (
        "allow"
    )
    assert evaluate([doc], "secretsmanager:TagResource", "*", {"aws:TagKeys": ["environment", "owner"]}) == (
        "implicit_deny"
    )
    assert evaluate([doc], "secretsmanager:TagResource", "*", {"aws:TagKeys": ["Environment"]}) == "implicit_deny"


def test_request_tag_values_ored_and_tag_keys_restricted():
    """ "Controlling access to AWS resources using tags" (Controlling access during requests): CreateTags
    only with environment=preprod or production, and ForAllValues on aws:TagKeys admits no other key."""
    doc = policy(
        {
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": "arn:aws:ec2:*:*:instance/*",
            "Condition": {
                "StringEquals": {"aws:RequestTag/environment": ["preprod", "production"]},
                "ForAllValues:StringEquals": {"aws:TagKeys": "environment"},
            },
        }
    )
    instance = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-1"

    def tags(**values: str) -> dict:
        context: dict = {f"aws:RequestTag/{k}": v for k, v in values.items()}
        return context | {"aws:TagKeys": list(values)}

    assert evaluate([doc], "ec2:CreateTags", instance, tags(environment="preprod")) == "allow"
    assert evaluate([doc], "ec2:CreateTags", instance, tags(environment="production")) == "allow"
    assert evaluate([doc], "ec2:CreateTags", instance, tags(environment="dev")) == "implicit_deny"
    assert evaluate([doc], "ec2:CreateTags", instance, tags(environment="preprod", owner="x")) == "implicit_deny"
    assert evaluate([doc], "ec2:CreateTags", instance, {}) == "implicit_deny"


def test_for_all_values_requires_every_request_value_listed():
    """ "Single-valued vs. multivalued context keys" (ForAllValues; the DynamoDB Thread example of the
    former "Creating a condition with multiple keys or values"): PostDateTime+Message are allowed,
    PostDateTime+UserName are not, because UserName matches no policy value."""
    doc = policy(
        {
            "Effect": "Allow",
            "Action": "dynamodb:GetItem",
            "Resource": f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/Thread",
            "Condition": {
                "ForAllValues:StringLike": {"dynamodb:requestedAttributes": ["PostDateTime", "Message", "Tags"]}
            },
        }
    )
    table = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/Thread"
    ok = {"dynamodb:requestedAttributes": ["PostDateTime", "Message"]}
    bad = {"dynamodb:requestedAttributes": ["PostDateTime", "UserName"]}
    assert evaluate([doc], "dynamodb:GetItem", table, ok) == "allow"
    assert evaluate([doc], "dynamodb:GetItem", table, bad) == "implicit_deny"


def test_for_any_value_matches_when_one_request_value_is_listed():
    """ "Single-valued vs. multivalued context keys" (ForAnyValue; the DynamoDB PutItem Deny example):
    UserName, Message, PostDateTime is denied (PostDateTime is listed); UserName alone is not; and
    ForAnyValue is false when the key is missing."""
    deny = policy(
        ALLOW_ALL,
        {
            "Effect": "Deny",
            "Action": "dynamodb:PutItem",
            "Resource": f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/Thread",
            "Condition": {"ForAnyValue:StringLike": {"dynamodb:requestedAttributes": ["ID", "PostDateTime"]}},
        },
    )
    table = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/Thread"
    three = {"dynamodb:requestedAttributes": ["UserName", "Message", "PostDateTime"]}
    assert evaluate([deny], "dynamodb:PutItem", table, three) == "explicit_deny"
    assert evaluate([deny], "dynamodb:PutItem", table, {"dynamodb:requestedAttributes": ["UserName"]}) == "allow"
    assert evaluate([deny], "dynamodb:PutItem", table, {"dynamodb:requestedAttributes": []}) == "allow"
    assert evaluate([deny], "dynamodb:PutItem", table, {}) == "allow"


def test_null_checks_whether_the_key_is_present():
    """ "IAM JSON policy elements: Condition operators" (Condition operator to check existence of
    condition keys): Null aws:TokenIssueTime true allows EC2 only without temporary credentials."""
    doc = {
        "Version": "2012-10-17",
        "Statement": {
            "Action": "ec2:*",
            "Effect": "Allow",
            "Resource": "*",
            "Condition": {"Null": {"aws:TokenIssueTime": "true"}},
        },
    }
    assert evaluate([doc], "ec2:DescribeImages", "*", {}) == "allow"
    assert evaluate([doc], "ec2:DescribeImages", "*", {"aws:TokenIssueTime": "2024-01-01T00:00:00Z"}) == (
        "implicit_deny"
    )
    present = {"Effect": "Allow", "Action": "ec2:*", "Resource": "*", "Condition": {"Null": {"aws:TagKeys": "false"}}}
    assert evaluate([policy(present)], "ec2:CreateTags", "*", {"aws:TagKeys": ["a"]}) == "allow"
    assert evaluate([policy(present)], "ec2:CreateTags", "*", {}) == "implicit_deny"


def test_an_empty_list_is_an_absent_key():
    """Evaluator convention (a request without tags has no aws:TagKeys): [] behaves as a missing key for
    every operator, which for set operators is what "Single-valued vs. multivalued context keys" says
    of an empty set (ForAllValues true, ForAnyValue false)."""

    def doc(operator: str, value: str) -> dict:
        condition = {operator: {"aws:TagKeys": value}}
        return policy({"Effect": "Allow", "Action": "ec2:*", "Resource": "*", "Condition": condition})

    empty = {"aws:TagKeys": []}
    assert evaluate([doc("Null", "false")], "ec2:CreateTags", "*", empty) == "implicit_deny"
    assert evaluate([doc("Null", "true")], "ec2:CreateTags", "*", empty) == "allow"
    assert evaluate([doc("StringNotEquals", "a")], "ec2:CreateTags", "*", empty) == "allow"
    assert evaluate([doc("StringEquals", "a")], "ec2:CreateTags", "*", empty) == "implicit_deny"
    assert evaluate([doc("ForAnyValue:StringEqualsIfExists", "a")], "ec2:CreateTags", "*", empty) == "allow"


def test_bool_secure_transport_denies_plain_http():
    """ "IAM JSON policy elements: Condition operators" (Boolean condition operators): BooleanExample
    denies S3 on the bucket and its contents when aws:SecureTransport is false."""
    deny = policy(
        {
            "Sid": "BooleanExample",
            "Action": "s3:*",
            "Effect": "Deny",
            "Resource": ["arn:aws:s3:::DOC-EXAMPLE-BUCKET", "arn:aws:s3:::DOC-EXAMPLE-BUCKET/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    )
    grant = policy(ALLOW_ALL)
    obj = "arn:aws:s3:::DOC-EXAMPLE-BUCKET/report.csv"
    assert evaluate([deny, grant], "s3:GetObject", obj, {"aws:SecureTransport": False}) == "explicit_deny"
    assert evaluate([deny, grant], "s3:GetObject", obj, {"aws:SecureTransport": "false"}) == "explicit_deny"
    assert evaluate([deny, grant], "s3:GetObject", obj, {"aws:SecureTransport": True}) == "allow"
    assert evaluate([deny, grant], "s3:GetObject", "arn:aws:s3:::other/x", {"aws:SecureTransport": False}) == "allow"
    assert evaluate([deny], "s3:GetObject", obj, {"aws:SecureTransport": True}) == "implicit_deny"


def test_arn_like_matches_segment_by_segment_unlike_string_like():
    """ "IAM JSON policy elements: Condition operators" (ARN condition operators): for the pattern
    arn:aws:someservice:*:111122223333:finance/* and a value with colons in its resource part,
    StringLike matches but ArnLike does not; ArnEquals on aws:SourceArn (the SQS/SNS example)."""
    pattern = f"arn:aws:someservice:*:{ACCOUNT}:finance/*"
    value = f"arn:aws:someservice:us-east-2:999999999999:store/abc:{ACCOUNT}:finance/document.txt"

    def doc(operator: str, wanted: str) -> dict:
        condition = {operator: {"aws:SourceArn": wanted}}
        return policy({"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*", "Condition": condition})

    assert evaluate([doc("StringLike", pattern)], "sqs:SendMessage", "*", {"aws:SourceArn": value}) == "allow"
    assert evaluate([doc("ArnLike", pattern)], "sqs:SendMessage", "*", {"aws:SourceArn": value}) == "implicit_deny"
    ok = f"arn:aws:someservice:us-east-2:{ACCOUNT}:finance/document.txt"
    assert evaluate([doc("ArnLike", pattern)], "sqs:SendMessage", "*", {"aws:SourceArn": ok}) == "allow"
    topic = f"arn:aws:sns:us-east-2:{ACCOUNT}:TOPIC-ID"
    assert evaluate([doc("ArnEquals", topic)], "sqs:SendMessage", "*", {"aws:SourceArn": topic}) == "allow"
    other = f"arn:aws:sns:us-east-2:{ACCOUNT}:OTHER"
    assert evaluate([doc("ArnEquals", topic)], "sqs:SendMessage", "*", {"aws:SourceArn": other}) == "implicit_deny"
    assert evaluate([doc("ArnNotEquals", topic)], "sqs:SendMessage", "*", {"aws:SourceArn": other}) == "allow"


def test_values_of_one_key_are_ored_and_keys_and_operators_anded():
    """ "Conditions with multiple context keys or values": operators are ANDed, keys under one operator
    ANDed, values of one key ORed (the department/role principal-tag and aws:PrincipalArn example)."""
    doc = policy(
        {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": "*",
            "Condition": {
                "StringEquals": {
                    "aws:PrincipalTag/department": ["finance", "hr", "legal"],
                    "aws:PrincipalTag/role": ["audit", "security"],
                },
                "ArnLike": {
                    "aws:PrincipalArn": [f"arn:aws:iam::{ACCOUNT}:user/Ana", f"arn:aws:iam::{ACCOUNT}:user/Mary"]
                },
            },
        }
    )
    mary = {
        "aws:PrincipalTag/department": "hr",
        "aws:PrincipalTag/role": "security",
        "aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:user/Mary",
    }
    assert evaluate([doc], "s3:GetObject", "*", mary) == "allow"
    assert evaluate([doc], "s3:GetObject", "*", mary | {"aws:PrincipalTag/department": "sales"}) == "implicit_deny"
    assert evaluate([doc], "s3:GetObject", "*", mary | {"aws:PrincipalTag/role": "admin"}) == "implicit_deny"
    assert evaluate([doc], "s3:GetObject", "*", {k: v for k, v in mary.items() if "role" not in k}) == "implicit_deny"
    other = mary | {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:user/Bob"}
    assert evaluate([doc], "s3:GetObject", "*", other) == "implicit_deny"


def test_negated_operator_with_several_values_is_a_nor():
    """ "Conditions with multiple context keys or values" (negated matching operators): the values of
    one key under StringNotEquals are evaluated with a logical NOR."""
    doc = policy(
        {
            "Effect": "Allow",
            "Action": "ec2:*",
            "Resource": "*",
            "Condition": {"StringNotEquals": {"aws:RequestedRegion": ["us-east-1", "eu-west-1"]}},
        }
    )
    assert evaluate([doc], "ec2:DescribeImages", "*", {"aws:RequestedRegion": "us-east-1"}) == "implicit_deny"
    assert evaluate([doc], "ec2:DescribeImages", "*", {"aws:RequestedRegion": "eu-west-1"}) == "implicit_deny"
    assert evaluate([doc], "ec2:DescribeImages", "*", {"aws:RequestedRegion": "ap-south-1"}) == "allow"


def test_condition_key_names_are_case_insensitive_values_are_not():
    """ "IAM JSON policy elements: Condition": key names are not case-sensitive (aws:SourceIP equals
    AWS:SourceIp; a ResourceTag key Owner matches a tag owner); StringEquals johndoe does not match
    JohnDoe, StringEqualsIgnoreCase does."""
    owner = policy(
        {
            "Effect": "Allow",
            "Action": ["ec2:StartInstances", "ec2:StopInstances"],
            "Resource": "arn:aws:ec2:*:*:instance/*",
            "Condition": {"StringEquals": {"ec2:ResourceTag/Owner": "richard-roe"}},
        }
    )
    instance = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-1"
    assert evaluate([owner], "ec2:StartInstances", instance, {"ec2:ResourceTag/owner": "richard-roe"}) == "allow"
    assert evaluate([owner], "ec2:StartInstances", instance, {"EC2:RESOURCETAG/OWNER": "richard-roe"}) == "allow"
    assert evaluate([owner], "ec2:StartInstances", instance, {"ec2:ResourceTag/Owner": "Richard-Roe"}) == (
        "implicit_deny"
    )

    def user(operator: str) -> dict:
        condition = {operator: {"aws:username": "johndoe"}}
        return policy({"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Condition": condition})

    assert evaluate([user("StringEquals")], "s3:GetObject", "*", {"aws:username": "johndoe"}) == "allow"
    assert evaluate([user("StringEquals")], "s3:GetObject", "*", {"aws:username": "JohnDoe"}) == "implicit_deny"
    assert evaluate([user("StringEqualsIgnoreCase")], "s3:GetObject", "*", {"aws:username": "JohnDoe"}) == "allow"
    assert evaluate([user("StringNotEqualsIgnoreCase")], "s3:GetObject", "*", {"aws:username": "JohnDoe"}) == (
        "implicit_deny"
    )
    ip = policy(
        {
            "Effect": "Allow",
            "Action": "s3:*",
            "Resource": "*",
            "Condition": {"IpAddress": {"aws:SourceIP": "203.0.113.0/24"}},
        }
    )
    assert evaluate([ip], "s3:GetObject", "*", {"AWS:SourceIp": "203.0.113.7"}) == "allow"
    assert evaluate([ip], "s3:GetObject", "*", {"AWS:SourceIp": "198.51.100.7"}) == "implicit_deny"


def test_numeric_and_date_operators():
    """ "IAM JSON policy elements: Condition operators" (Numeric and Date condition operators):
    s3:max-keys NumericLessThanEquals 10; aws:TokenIssueTime DateGreaterThan 2020-01-01T00:00:01Z."""
    numeric = policy(
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": "arn:aws:s3:::example_bucket",
            "Condition": {"NumericLessThanEquals": {"s3:max-keys": "10"}},
        }
    )
    bucket = "arn:aws:s3:::example_bucket"
    assert evaluate([numeric], "s3:ListBucket", bucket, {"s3:max-keys": 10}) == "allow"
    assert evaluate([numeric], "s3:ListBucket", bucket, {"s3:max-keys": "9"}) == "allow"
    assert evaluate([numeric], "s3:ListBucket", bucket, {"s3:max-keys": 11}) == "implicit_deny"
    assert evaluate([numeric], "s3:ListBucket", bucket, {}) == "implicit_deny"
    dated = policy(
        {
            "Effect": "Allow",
            "Action": "iam:*AccessKey*",
            "Resource": f"arn:aws:iam::{ACCOUNT}:user/*",
            "Condition": {"DateGreaterThan": {"aws:TokenIssueTime": "2020-01-01T00:00:01Z"}},
        }
    )
    user = f"arn:aws:iam::{ACCOUNT}:user/bob"
    assert evaluate([dated], "iam:ListAccessKeys", user, {"aws:TokenIssueTime": "2020-06-01T00:00:00Z"}) == "allow"
    assert evaluate([dated], "iam:ListAccessKeys", user, {"aws:TokenIssueTime": "2019-12-31T23:59:59Z"}) == (
        "implicit_deny"
    )
    assert evaluate([dated], "iam:ListAccessKeys", user, {}) == "implicit_deny"


@pytest.mark.parametrize(
    ("statement", "context", "error"),
    [
        # "IAM policy elements: Variables and tags": not evaluated here, so refused, never matched literally.
        ({"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/home/${aws:username}/*"}, {}, PolicyError),
        (
            {
                "Effect": "Allow",
                "Action": "s3:*",
                "Resource": "*",
                "Condition": {"StringEquals": {"k": "${aws:username}"}},
            },
            {},
            PolicyError,
        ),
        (
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Condition": {"BinaryEquals": {"k": "QQ=="}}},
            {},
            NotImplementedError,
        ),
        (
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Condition": {"StringEqual": {"k": "v"}}},
            {},
            NotImplementedError,
        ),
        (
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Condition": {"NullIfExists": {"k": "true"}}},
            {},
            PolicyError,
        ),
        # A list-valued key under an operator without ForAllValues/ForAnyValue: AWS defines no result.
        (
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Condition": {"StringEquals": {"aws:TagKeys": "a"}}},
            {"aws:TagKeys": ["a", "b"]},
            PolicyError,
        ),
        ({"Effect": "Allow", "Principal": "*", "Action": "s3:*", "Resource": "*"}, {}, PolicyError),
        ({"Effect": "Allow", "Action": "s3:*", "NotAction": "s3:Get*", "Resource": "*"}, {}, PolicyError),
        ({"Effect": "Allow", "Action": "s3:*"}, {}, PolicyError),
        ({"Effect": "allow", "Action": "s3:*", "Resource": "*"}, {}, PolicyError),
        ({"Effect": "Allow", "Action": "GetItem", "Resource": "*"}, {}, PolicyError),
    ],
)
def test_what_the_evaluator_cannot_decide_is_refused(statement, context, error):
    """The evaluator raises instead of guessing (policy variables, operators it lacks, undefined
    multivalued use, malformed statements), so a replay test can never pass on a silent match."""
    with pytest.raises(error):
        evaluate([policy(statement)], "s3:GetObject", "arn:aws:s3:::b/home/x/y", context)


def test_refusals_surface_even_where_the_statement_does_not_apply():
    """A broken statement for another action still raises: the replay test must not depend on which
    calls happen to reach it."""
    doc = policy(
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
        {"Effect": "Allow", "Action": "ec2:*", "Resource": "*", "Condition": {"StringEqualsX": {"k": "v"}}},
    )
    with pytest.raises(NotImplementedError, match="StringEqualsX"):
        evaluate([doc], "s3:GetObject", "arn:aws:s3:::b/k", {})


def test_context_keys_that_differ_only_in_case_are_refused():
    """ "IAM JSON policy elements: Condition": a condition on tag key Foo "matches both tags, but only
    one value" when foo and Foo both exist, so such a context is ambiguous and refused."""
    doc = policy(ALLOW_ALL)
    with pytest.raises(PolicyError, match="case"):
        evaluate([doc], "ec2:StartInstances", "*", {"aws:ResourceTag/foo": "bar1", "aws:ResourceTag/Foo": "bar2"})


def test_matching_statements_names_what_decided():
    """Failure messages of the replay test name the deciding statements by Sid (or position)."""
    doc = policy(
        {"Sid": "AllowGetList", "Effect": "Allow", "Action": ["iam:Get*", "iam:List*"], "Resource": "*"},
        {"Effect": "Deny", "Action": "iam:*Report", "Resource": "*"},
    )
    assert matching_statements([doc], "iam:GetUser", "*", {}) == [("Allow", "AllowGetList")]
    assert matching_statements([doc], "iam:GetOrganizationsAccessReport", "*", {}) == [
        ("Allow", "AllowGetList"),
        ("Deny", "#0.1"),
    ]
    assert matching_statements([doc], "iam:CreatePolicy", "*", {}) == []
