"""The AWS docs stay true: the CloudFormation example passes cfn-lint, and the IAM policy grants every AWS call
bakery makes.

The calls are found statically: every `x.method(...)` (and `x.get_paginator("method")`) in bakery/ whose name is an
operation of a service bakery creates clients for, resolved to its service by the receiver's name (`ec2`, `self.ssm`,
`client("autoscaling", ...)`) when more than one service has that operation. botocore's own service models say
which method is which API operation, so a new call anywhere in bakery fails this test until the policy grants it.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import subprocess
from collections import defaultdict
from functools import cache
from pathlib import Path

import botocore.session
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.aws

POLICY = REPO / "docs" / "aws-iam-policy.json"
TEMPLATE = REPO / "docs" / "cloudformation" / "environment.yaml"
RECEIVER_ALIASES = {"ib": "imagebuilder", "refresh_client": "autoscaling", "asg": "autoscaling"}
IAM_PREFIX = {"elbv2": "elasticloadbalancing"}
# S3 operations whose IAM action has another name.
S3_ACTIONS = {"HeadObject": "GetObject", "HeadBucket": "ListBucket", "ListObjectsV2": "ListBucket",
              "ListObjects": "ListBucket"}


@cache
def _session():
    return botocore.session.get_session()


@cache
def _client(service: str):
    """A client only for its model (method names, operations); it never makes a request."""
    return _session().create_client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def _services_used(trees: dict[Path, ast.AST]) -> set[str]:
    """Service names given as string arguments to anything called *client* (client("ec2", ...), _clients(p, e,
    "logs"))."""
    known = set(_session().get_available_services())
    used = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if "client" in name.lower():
                    used |= {a.value for a in node.args if isinstance(a, ast.Constant) and a.value in known}
    return used


def _receiver_service(receiver: ast.AST | None, services: set[str]) -> str | None:
    """The service a client expression belongs to: client("svc", ...) or a name like ec2, self.ssm, ib (aliases
    above)."""
    if receiver is None:
        return None
    if isinstance(receiver, ast.Call) and receiver.args and isinstance(receiver.args[0], ast.Constant):
        return receiver.args[0].value if receiver.args[0].value in services else None
    last = ast.unparse(receiver).split(".")[-1].lower()
    last = RECEIVER_ALIASES.get(last, last)
    return next((svc for svc in sorted(services) if svc == last or svc in last), None)


def _names(node: ast.AST, all_methods: set[str]) -> tuple[list[str], ast.AST | None]:
    """The client method names a node refers to, and the receiver expression when there is one.

    `x.describe_images(...)` and `_all(x.list_components, ...)`: the attribute;
    `x.get_paginator("describe_instances")`: the string; `getattr(x, f"create_{kind}_configuration")`: every method
    matching the pattern; a bare string constant naming a method (a lookup table for getattr): that method.
    """
    if isinstance(node, ast.Attribute):
        return [node.attr], node.value
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get_paginator"
            and node.args):
        if isinstance(node.args[0], ast.Constant):
            return [node.args[0].value], node.func.value
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" and len(node.args) >= 2:
        if isinstance(node.args[1], ast.JoinedStr):
            pattern = "".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.args[1].values)
            return fnmatch.filter(sorted(all_methods), pattern), node.args[0]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in all_methods:
        return [node.value], None
    return [], None


def aws_operations() -> tuple[dict[tuple[str, str], set[str]], list[str]]:
    """{(service, Operation): {file:line, ...}} for every AWS call in bakery/, and the references that could not be
    resolved."""
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted((REPO / "bakery").rglob("*.py"))}
    services = _services_used(trees)
    methods = {svc: _client(svc).meta.method_to_api_mapping for svc in services}
    all_methods = set().union(*(set(m) for m in methods.values()))
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    ambiguous = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            names, receiver = _names(node, all_methods)
            hint = _receiver_service(receiver, services)
            for name in names:
                candidates = [hint] if hint else sorted(svc for svc in services if name in methods[svc])
                if not candidates or name not in methods[candidates[0]]:
                    continue  # not an operation of the client it is called on (self.ec2.meta, ec2_ids.append)
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                if len(candidates) > 1:
                    ambiguous.append(f"{where}: {name} could be {', '.join(candidates)}")
                    continue
                found[(candidates[0], methods[candidates[0]][name])].add(where)
    return found, ambiguous


def iam_action(service: str, operation: str, signing_name: str = "") -> str:
    """The IAM action of an operation (tests/aws/test_policy_replay.py maps recorded calls with it too);
    `signing_name`: the service model's, when the caller has it (else read from the model)."""
    if not signing_name:
        model = _client(service).meta.service_model
        signing_name = model.metadata.get("signingName") or model.service_name
    prefix = IAM_PREFIX.get(service, signing_name)
    return f"{prefix}:{S3_ACTIONS.get(operation, operation) if service == 's3' else operation}"


def policy_actions() -> list[str]:
    """The actions the Allow statements grant (Deny statements only narrow them), of the policy and of the same
    settings with aws.builder imagebuilder and disk (each builder's statements are rendered only for it), and of
    `bake.py param` on an environment's parameter and secret (rendered for a project's references only)."""
    from bakery.aws.iam_policy_params import operator_statements

    policy = json.loads(POLICY.read_text(encoding="utf-8"))
    assert policy["Version"] == "2012-10-17"
    actions = []
    others = [s for builder in ("imagebuilder", "disk") for s in _example_rendering(builder=builder)["Statement"]]
    others += operator_statements({"qa": ["ssm:/x", "secretsmanager:y"]}, EXAMPLE_ACCOUNT)
    for statement in policy["Statement"] + others:
        assert statement["Effect"] in ("Allow", "Deny") and statement.get("Resource") and statement.get("Sid")
        listed = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        actions += listed if statement["Effect"] == "Allow" else []
    return actions


def test_the_iam_policy_grants_every_aws_call_bakery_makes():
    found, ambiguous = aws_operations()
    assert not ambiguous, ("name the client variable after its service so the call can be checked: "
                           + "; ".join(ambiguous))
    assert {svc for svc, _ in found} >= {"ec2", "autoscaling", "ssm"}  # the scan sees the calls at all
    granted = policy_actions()
    missing = {iam_action(svc, op): sorted(where)[0] for (svc, op), where in found.items()
               if not any(fnmatch.fnmatchcase(iam_action(svc, op), pattern) for pattern in granted)}
    assert not missing, (f"{POLICY.relative_to(REPO)} lacks: "
                         + ", ".join(f"{a} (called at {w})" for a, w in sorted(missing.items())))


def test_the_cloudformation_example_passes_cfn_lint():
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "cfn-lint"), "--", str(TEMPLATE)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_settings_examples_in_the_aws_docs_load(proj):
    """docs/aws.md's `aws:` block and its environment deploy.yml pass the real validation."""
    import re

    import yaml

    from bakery.aws.settings import load_aws_settings
    from bakery.config import Project
    from bakery.environments import load_environment

    text = (REPO / "docs" / "aws.md").read_text(encoding="utf-8")
    settings = re.search(r"### `bakery.yml`: `aws:`\n\n```yaml\n(.*?)```", text, re.S).group(1)
    assert load_aws_settings(yaml.safe_load(settings)["aws"]).regions == ["eu-west-1", "eu-central-1"]
    deploy = re.search(r"`inventories/<env>/group_vars/all/deploy.yml`:\n\n```yaml\n(.*?)```", text, re.S).group(1)
    (proj / "playbooks" / "webapp.yml").write_text((proj / "playbooks" / "sample.yml").read_text())
    for env, body in (("qa", deploy),
                      ("dev", "bakery_deploy: {target: aws, image: webapp, "
                              "aws: {auto_scaling_group: g, launch_template: t}}\n")):
        (proj / "inventories" / env / "group_vars" / "all").mkdir(parents=True)
        (proj / "inventories" / env / "group_vars" / "all" / "deploy.yml").write_text(body)
    env = load_environment(Project(proj), "qa")
    assert (env.target == "aws" and env.aws["auto_scaling_group"] == "bakery-qa"
            and env.refresh.max_healthy_percentage == 150)


DESTRUCTIVE = {"ec2:DeregisterImage", "ec2:DeleteSnapshot", "ec2:ModifyImageAttribute", "ec2:ModifySnapshotAttribute",
               "ec2:TerminateInstances", "ec2:StopInstances"}


def test_the_policy_lets_bakery_change_only_what_it_tagged_as_its_own():
    """Deleting, sharing and tagging need a condition: a role that could tag anything bakery:managed could then delete
    or publish it. No AMI or snapshot without bakery:managed is removed unless claimed first (Packer makes no
    intermediate AMI any more: bakery copies, tagged on creation)."""
    policy = json.loads(POLICY.read_text(encoding="utf-8"))
    granting = defaultdict(list)  # action -> the Condition of every statement that grants it (through a wildcard too)
    for statement in (s for s in policy["Statement"] if s["Effect"] == "Allow"):
        patterns = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in DESTRUCTIVE | {"ec2:CreateTags", "ec2:CopyImage"}:
            if any(fnmatch.fnmatchcase(action, pattern) for pattern in patterns):
                granting[action].append(statement.get("Condition") or {})
    assert set(granting) == DESTRUCTIVE | {"ec2:CreateTags", "ec2:CopyImage"}
    for action in DESTRUCTIVE:
        assert all(c.get("StringEquals", {}).get("aws:ResourceTag/bakery:managed") == "true"
                   for c in granting[action]), action
    assert granting["ec2:CopyImage"] == [{"StringEquals": {"aws:RequestTag/bakery:managed": "true"}}]
    own_keys = {"ForAllValues:StringLike": {"aws:TagKeys": ["bakery:*", "Name"]}}
    for condition in granting["ec2:CreateTags"]:
        equals = condition.get("StringEquals", {})
        # at launch any keys (a launch template's own tag specifications; a data volume's CreateVolume decides its
        # own); on copies only bakery's; on bakery's volumes and instances the hand-over mark only
        launching = equals.get("ec2:CreateAction") in ("RunInstances", ["RunInstances", "CreateVolume"])
        handing_over = (equals.get("aws:ResourceTag/bakery:managed") == "true"
                        and condition.get("ForAllValues:StringEquals") == {"aws:TagKeys": "bakery:handover"})
        copying = equals.get("ec2:CreateAction") == "CopyImage" and condition.items() >= own_keys.items()
        on_its_own = equals.get("aws:ResourceTag/bakery:managed") == "true" and condition.items() >= own_keys.items()
        marking_new = equals.get("aws:RequestTag/bakery:managed") == "true" and condition.items() >= own_keys.items()
        assert launching or copying or on_its_own or marking_new or handing_over, condition
    buckets = [s for s in _example_rendering(builder="imagebuilder")["Statement"] if s["Action"] == "s3:ListBucket"]
    assert [s["Condition"] for s in buckets] == [{"StringLikeIfExists": {"s3:prefix": "bundles/*"}}]


def test_the_disk_builder_writes_and_registers_only_what_is_tagged_as_bakery_s():
    """aws.builder disk: every EBS direct write and read and RegisterImage needs bakery:managed=true, on the snapshot
    it acts on, or in the request for what it creates (with bakery's tag keys only); ListChangedBlocks is never
    granted. The same read-back statement is in every building role (verify --target aws)."""
    own_keys = {"ForAllValues:StringLike": {"aws:TagKeys": ["bakery:*", "Name"]}}
    granting = defaultdict(list)  # action -> (Resource, Condition) of every Allow granting it
    for statement in (s for s in _example_rendering(builder="disk")["Statement"] if s["Effect"] == "Allow"):
        patterns = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in ("ebs:StartSnapshot", "ebs:PutSnapshotBlock", "ebs:CompleteSnapshot", "ebs:GetSnapshotBlock",
                       "ebs:ListSnapshotBlocks", "ebs:ListChangedBlocks", "ec2:RegisterImage"):
            if any(fnmatch.fnmatchcase(action, pattern) for pattern in patterns):
                granting[action].append((statement["Resource"], statement.get("Condition") or {}))
    creating = {"StringEquals": {"aws:RequestTag/bakery:managed": "true"}, **own_keys}
    owned = {"StringEquals": {"aws:ResourceTag/bakery:managed": "true"}}
    snapshots, images = "arn:aws:ec2:*::snapshot/*", "arn:aws:ec2:*::image/*"
    assert granting.pop("ebs:StartSnapshot") == [(snapshots, creating)]
    assert sorted(granting.pop("ec2:RegisterImage")) == sorted([(images, creating), (snapshots, owned)])
    assert "ebs:ListChangedBlocks" not in granting
    assert granting == {action: [(snapshots, owned)] for action in granting} and len(granting) == 4
    policy = json.loads(POLICY.read_text(encoding="utf-8"))
    assert [s for s in policy["Statement"] if s["Sid"] == "ReadBackOwnSnapshots"] == [
        s for s in _example_rendering(builder="disk")["Statement"] if s["Sid"] == "ReadBackOwnSnapshots"]


EXAMPLE_SETTINGS = REPO / "docs" / "aws-iam-policy.example.yml"
EXAMPLE_ACCOUNT = "111122223333"


def _example_rendering(**changes) -> dict:
    """The example settings' policy with changes (aws.builder set after loading, as the replay does)."""
    from dataclasses import replace

    import yaml

    from bakery.aws.iam_policy import render_policy
    from bakery.aws.settings import load_aws_settings

    builder = changes.pop("builder", "")
    settings = load_aws_settings({**yaml.safe_load(EXAMPLE_SETTINGS.read_text(encoding="utf-8"))["aws"], **changes},
                                 str(EXAMPLE_SETTINGS))
    return render_policy(replace(settings, builder=builder) if builder else settings, EXAMPLE_ACCOUNT)


def test_the_checked_in_policy_is_the_rendering_of_the_example_settings():
    """docs/aws-iam-policy.json cannot drift from bakery.aws.iam_policy: regenerate it with the command in the
    example file's header."""
    assert json.loads(POLICY.read_text(encoding="utf-8")) == _example_rendering(), (
        "regenerate: ./bake.py iam-policy --settings docs/aws-iam-policy.example.yml --account 111122223333 "
        "> docs/aws-iam-policy.json")


def test_the_rendered_policy_fits_an_inline_role_policy():
    """IAM counts a policy's characters without white space: 10,240 for all inline policies of a role."""
    size = len(json.dumps(_example_rendering(), separators=(",", ":")))
    assert size <= 10240 - 960, f"{size} characters leave too little room for longer names"


def test_the_policy_names_no_other_account_bucket_or_role():
    """Least privilege: no wildcard where the settings name the thing (bucket, roles, log groups, accounts)."""
    text = POLICY.read_text(encoding="utf-8")
    assert "arn:aws:s3:::*" not in text and ":role/*" not in text.replace("aws-service-role/imagebuilder", "")
    assert "log-group:*" not in text and "arn:aws:iam::*" not in text
    assert "444455556666" in text and "role/bakery-build" in text and "sg-0123456789abcdef0" in text
    assert "example-bakery-artifacts" in json.dumps(_example_rendering(builder="imagebuilder"))


def test_the_iam_policy_command_prints_the_rendering(capsys):
    from bakery.cli import main

    code = main(["iam-policy", "--settings", str(EXAMPLE_SETTINGS), "--account", EXAMPLE_ACCOUNT])
    assert code == 0 and json.loads(capsys.readouterr().out) == _example_rendering()
    assert main(["iam-policy", "--settings", str(EXAMPLE_SETTINGS), "--account", "12345"]) == 2
    assert "--account '12345' is not a 12-digit AWS account id" in capsys.readouterr().err


def test_parliament_finds_nothing_but_the_split_ec2_statements():
    """make lint runs parliament with RESOURCE_MISMATCH muted (docs/aws-iam-policy.parliament.yml says why); here the
    finding may name only the EC2 actions whose statements are split per resource type."""
    from parliament import analyze_policy_string

    findings = analyze_policy_string(POLICY.read_text(encoding="utf-8")).findings
    assert findings, "parliament reports the split RunInstances/CreateImage statements: it runs at all"
    for finding in findings:
        assert finding.issue == "RESOURCE_MISMATCH", (finding.issue, finding.detail)
        assert {d["action"] for d in finding.detail} <= {"ec2:RunInstances", "ec2:CreateImage"}, finding.detail
    # the disk builder's RegisterImage is split likewise: the new image by request tags, its snapshot by its tags
    for finding in analyze_policy_string(json.dumps(_example_rendering(builder="disk"))).findings:
        assert finding.issue == "RESOURCE_MISMATCH", (finding.issue, finding.detail)
        assert {d["action"] for d in finding.detail} <= {"ec2:RunInstances", "ec2:RegisterImage"}, finding.detail
