"""Parameters resolved on the instance in aws mode (issue 17): the real applier as a process, on the venv's python
(Debian's image has python3-botocore), against moto server's SSM and Secrets Manager. The region comes from
bakery's own IMDSv2 endpoint (bakery/disks/imds.py, meta-data/placement/region) as on EC2, the endpoint from
BAKERY_AWS_ENDPOINT_URL (Debian's botocore 1.29 ignores AWS_ENDPOINT_URL, so the test leaves that out), the
credentials from the environment as botocore's own chain finds them.

The applier is not bakery's library code, so tests/aws/call_recorder.py records none of its calls: its permissions
(ssm:GetParameter, ssm:GetParametersByPath, secretsmanager:GetSecretValue, kms:Decrypt through SSM) are the
instance role's, documented with it, not the policy replay's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from bakery.disks.imds import ImdsEndpoint
from tests.aws.conftest import REGION
from tests.conftest import REPO

pytestmark = pytest.mark.aws

APPLIER = REPO / "roles" / "base" / "files" / "bakery-runtime-config"
SECRET = "s3cret-Only-In-SSM-4711"
LAUNCH = ('BAKERY_PARAMS="aws"\nBAKERY_REFRESH="FEATURE_NEW_CHECKOUT=5"\n'
          'DATABASE_PASSWORD="ssm:/webapp/cloud/database-password"\n'
          'DB="ssm:/webapp/cloud/db/"\n'
          'DB_PASSWORD="secretsmanager:webapp/cloud/db#password"\n'
          'API_TOKEN="{token_arn}"\n'
          'FEATURE_NEW_CHECKOUT="ssm:/webapp/cloud/feature-new-checkout"\n'
          f'GREETING="arn:aws:ssm:{REGION}:123456789012:parameter/webapp/cloud/greeting"\n'
          'ENVIRONMENT="cloud"\n')


@pytest.fixture
def stored(aws):
    """What bake.py param set would have put into the environment's SSM path and Secrets Manager."""
    ssm = boto3.client("ssm", region_name=REGION)
    ssm.put_parameter(Name="/webapp/cloud/database-password", Value=SECRET, Type="SecureString")
    ssm.put_parameter(Name="/webapp/cloud/feature-new-checkout", Value="true", Type="String")
    ssm.put_parameter(Name="/webapp/cloud/greeting", Value="hello", Type="String")
    ssm.put_parameter(Name="/webapp/cloud/db/host", Value="db.internal", Type="String")
    ssm.put_parameter(Name="/webapp/cloud/db/read-only.port", Value="5433", Type="String")
    ssm.put_parameter(Name="/webapp/cloud/db/deeper/x", Value="not in the group", Type="String")
    secrets = boto3.client("secretsmanager", region_name=REGION)
    secrets.create_secret(Name="webapp/cloud/db", SecretString=json.dumps({"user": "app", "password": SECRET}))
    token = secrets.create_secret(Name="webapp/cloud/api-token", SecretString=SECRET)["ARN"]
    return ssm, token


def run(tmp_path: Path, moto: str, imds_url: str, *args: str, launch: str | None = None):
    launch_file, target = tmp_path / "launch.env", tmp_path / "run" / "runtime.env"
    if launch is not None:
        launch_file.write_text(launch, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")}
    env.update(BAKERY_LAUNCH_FILE=str(launch_file), BAKERY_RUNTIME_FILE=str(target), BAKERY_IMDS_URL=imds_url,
               BAKERY_IMDS_RETRY_SECONDS="2", BAKERY_AWS_ENDPOINT_URL=moto,
               BAKERY_SYSTEMCTL=str(tmp_path / "systemctl"), BAKERY_PARAMS_DIR=str(tmp_path / "no-store"))
    proc = subprocess.run([sys.executable, str(APPLIER), *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and len(out.splitlines()) <= 1 and SECRET not in out, out
    return proc.returncode, out, target


def values(target: Path) -> dict[str, str]:
    return {k: v[1:-1] for k, _, v in (line.partition("=") for line in target.read_text().splitlines())}


def test_references_resolve_with_the_instance_identity_and_refresh_live(stored, aws, tmp_path):
    ssm, token = stored
    (tmp_path / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\n')
    (tmp_path / "systemctl").chmod(0o755)
    with ImdsEndpoint(None, "i-0123456789abcdef0", REGION, "ami-1") as imds:
        rc, out, target = run(tmp_path, aws, imds.url, launch=LAUNCH.replace("{token_arn}", token))
        asked = [path for _, path, _ in imds.requests]
    assert rc == 0, out
    assert values(target) == {
        "API_TOKEN": SECRET, "DATABASE_PASSWORD": SECRET, "DB_HOST": "db.internal", "DB_READ_ONLY_PORT": "5433",
        "DB_PASSWORD": SECRET, "ENVIRONMENT": "cloud", "FEATURE_NEW_CHECKOUT": "true", "GREETING": "hello"}
    assert "/latest/meta-data/placement/region" in asked
    assert "resolved 6 references (aws)" in out
    state = json.loads((tmp_path / "run" / "params.json").read_text())
    assert SECRET not in json.dumps(state) and state["mode"] == "aws" and state["region"] == REGION
    assert state["keys"]["FEATURE_NEW_CHECKOUT"]["version"] == 1
    assert state["keys"]["DB"]["members"]["DB_HOST"] == {"name": "/webapp/cloud/db/host", "version": 1}

    ssm.put_parameter(Name="/webapp/cloud/feature-new-checkout", Value="false", Type="String", Overwrite=True)
    state["keys"]["FEATURE_NEW_CHECKOUT"]["monotonic"] = 0
    (tmp_path / "run" / "params.json").write_text(json.dumps(state))
    # IMDS is gone: the region of the boot run is reused, never asked for every 5 s
    rc, out, target = run(tmp_path, aws, "http://127.0.0.1:9/latest", "--refresh")
    assert (rc, out) == (0, "bakery-runtime-config: refresh: changed: FEATURE_NEW_CHECKOUT\n")
    assert values(target)["FEATURE_NEW_CHECKOUT"] == "false" and values(target)["DATABASE_PASSWORD"] == SECRET
    assert (tmp_path / "calls").read_text() == "reload --no-block bakery-runtime-config.service\n"
    assert json.loads((tmp_path / "run" / "params.json").read_text())["keys"]["FEATURE_NEW_CHECKOUT"]["version"] == 2


@pytest.mark.parametrize("ref", ["ssm:/webapp/cloud/missing", "secretsmanager:webapp/cloud/missing",
                                 "secretsmanager:webapp/cloud/db#missing", "ssm:/webapp/cloud/empty/"])
def test_a_missing_parameter_fails_the_unit_naming_key_and_reference(stored, aws, tmp_path, ref):
    with ImdsEndpoint(None, "i-0123456789abcdef0", REGION, "ami-1") as imds:
        rc, out, target = run(tmp_path, aws, imds.url, launch=f'BAKERY_PARAMS="aws"\nDATABASE_PASSWORD="{ref}"\n')
    assert rc == 1 and out.startswith(f"bakery-runtime-config: cannot resolve DATABASE_PASSWORD ({ref}): "), out
    assert not target.exists() and not (tmp_path / "run" / "params.json").exists()


def test_without_credentials_the_unit_fails_in_one_line(stored, aws, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    with ImdsEndpoint(None, "i-0123456789abcdef0", REGION, "ami-1") as imds:
        rc, out, target = run(tmp_path, aws, imds.url, launch='BAKERY_PARAMS="aws"\nA="ssm:/webapp/cloud/greeting"\n')
    assert rc == 1 and "cannot resolve A (ssm:/webapp/cloud/greeting): cannot reach ssm: NoCredentialsError" in out
    assert not target.exists()
