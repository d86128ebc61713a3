"""`bake.py param set|get|list` on an aws environment, against moto server's SSM, Secrets Manager and KMS: a
SecureString written with the environment's KMS key, who and when read back, values shown only with --reveal."""

from __future__ import annotations

import json
import subprocess
import sys

import boto3
import pytest

from tests.aws.conftest import REGION
from tests.conftest import BAKE, REPO, Outcome

pytestmark = pytest.mark.aws

SECRET = "s3cret-Only-In-SSM-4711"
RUNTIME = """bakery_runtime:
  FEATURE_NEW_CHECKOUT: {value: ssm:/webapp/cloud/feature-new-checkout, refresh: 30s}
  DATABASE_PASSWORD: ssm:/webapp/cloud/database-password
  DB: secretsmanager:webapp/cloud/db#password
  FLAGS: ssm:/webapp/cloud/flags/
"""


@pytest.fixture
def project(aws, tmp_path):
    key = boto3.client("kms", region_name=REGION).create_key(Description="bakery test")["KeyMetadata"]["KeyId"]
    root = tmp_path / "p"
    root.mkdir()
    text = (REPO / "bakery.yml").read_text(encoding="utf-8")
    (root / "bakery.yml").write_text(text + f"aws:\n  region: {REGION}\n  kms_key_id: {key}\n", encoding="utf-8")
    folder = root / "inventories" / "cloud" / "group_vars" / "all"
    folder.mkdir(parents=True)
    (folder / "deploy.yml").write_text("bakery_deploy: {target: aws, image: webapp, aws: {auto_scaling_group: "
                                       "bakery-cloud, launch_template: bakery-cloud}}\n")
    (folder / "runtime.yml").write_text(RUNTIME)
    return root, key


def param(root, *args, stdin: str = "") -> Outcome:
    """bake.py param as a real process; the value on stdin, as an operator keeps a secret out of the history."""
    proc = subprocess.run([sys.executable, str(BAKE), "--project", str(root), "param", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def test_a_secure_string_is_written_with_the_environment_s_key_and_never_printed(project):
    root, key = project
    first = param(root, "set", "--env", "cloud", "DATABASE_PASSWORD", stdin=SECRET + "\n")
    assert first.rc == 0, first.stderr
    assert SECRET not in first.stdout + first.stderr and "version 1 written (SecureString" in first.stdout
    ssm = boto3.client("ssm", region_name=REGION)
    stored = ssm.get_parameter(Name="/webapp/cloud/database-password", WithDecryption=True)["Parameter"]
    assert stored["Value"] == SECRET and stored["Type"] == "SecureString"
    history = ssm.get_parameter_history(Name="/webapp/cloud/database-password")["Parameters"]
    assert history[-1]["KeyId"].endswith(key) and history[-1]["Description"].startswith("set by ")
    assert param(root, "set", "--env", "cloud", "DATABASE_PASSWORD", stdin="second-value").rc == 0
    shown = param(root, "get", "--env", "cloud", "DATABASE_PASSWORD", "--json")
    data = json.loads(shown.stdout)
    assert shown.rc == 0 and data["version"] == 2 and "value" not in data and "@" in data["by"]
    revealed = param(root, "get", "--env", "cloud", "DATABASE_PASSWORD", "--reveal", "--json")
    assert json.loads(revealed.stdout)["value"] == "second-value"


def test_a_string_a_group_member_and_a_secret_and_the_list(project):
    root, _ = project
    assert param(root, "set", "--env", "cloud", "FEATURE_NEW_CHECKOUT", "true", "--type", "String").rc == 0
    assert param(root, "set", "--env", "cloud", "ssm:/webapp/cloud/flags/beta", "on").rc == 0
    for value in ('{"password": "p1"}', '{"password": "p2"}'):  # created, then a new version
        out = param(root, "set", "--env", "cloud", "DB", stdin=value)
        assert out.rc == 0 and "p1" not in out.stdout + out.stderr, out.stderr
    secret = boto3.client("secretsmanager", region_name=REGION).get_secret_value(SecretId="webapp/cloud/db")
    assert json.loads(secret["SecretString"]) == {"password": "p2"}
    shown = json.loads(param(root, "get", "--env", "cloud", "FEATURE_NEW_CHECKOUT", "--json").stdout)
    assert shown["value"] == "true" and shown["type"] == "String"
    listed = param(root, "list", "--env", "cloud", "--json")
    rows = {r["reference"]: r for r in json.loads(listed.stdout)}
    assert listed.rc == 0 and "p2" not in listed.stdout
    assert rows["ssm:/webapp/cloud/feature-new-checkout"]["refresh"] == 30
    assert rows["ssm:/webapp/cloud/database-password"]["version"] is None  # MISSING
    assert rows["ssm:/webapp/cloud/flags/beta"]["version"] == 1
    assert rows["secretsmanager:webapp/cloud/db#password"]["version"]
    text = param(root, "list", "--env", "cloud")
    assert "MISSING" in text.stdout and "p2" not in text.stdout


def test_get_of_a_missing_parameter_is_exit_1(project):
    root, _ = project
    out = param(root, "get", "--env", "cloud", "DATABASE_PASSWORD")
    assert out.rc == 1 and "has no value yet" in out.stderr and out.stderr.count("\n") == 1
