"""ARN references (review M2 of issue 17): `param set|get` reach the very parameter or secret the instance reads
(the ARN's region, the ARN as SecretId, never a new secret), and the instance role's policy names the ARN as
written. Against moto's in-process SSM and Secrets Manager (no network)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from bakery.aws.iam_policy_params import resources
from bakery.errors import ConfigError, OperationError
from bakery.params import names
from bakery.params.aws_store import AwsStore

pytestmark = pytest.mark.unit

OWN = "123456789012"  # moto's account
SSM_ARN = f"arn:aws:ssm:eu-west-1:{OWN}:parameter/webapp/qa/flag"


@pytest.fixture
def aws(monkeypatch, tmp_path):
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    from bakery.aws import clients

    clients._session.cache_clear()
    with mock_aws():
        yield
    clients._session.cache_clear()


def ref(text):
    return names.parse_reference(text, "test")


def test_an_arn_keeps_its_region_account_and_itself():
    secret = ref("arn:aws:secretsmanager:eu-west-1:999999999999:secret:webapp/qa/db-AbCdEf#password")
    assert (secret.name, secret.field, secret.region, secret.account) == ("webapp/qa/db-AbCdEf", "password",
                                                                          "eu-west-1", "999999999999")
    assert secret.arn == "arn:aws:secretsmanager:eu-west-1:999999999999:secret:webapp/qa/db-AbCdEf"
    assert str(secret) == secret.arn + "#password"
    assert (ref(SSM_ARN).name, ref(SSM_ARN).region, str(ref(SSM_ARN))) == ("/webapp/qa/flag", "eu-west-1", SSM_ARN)


def test_the_iam_resources_are_the_arns_as_written():
    secret = "arn:aws:secretsmanager:eu-west-1:999999999999:secret:webapp/qa/db-AbCdEf"
    found = resources([f"{secret}#password", SSM_ARN, f"arn:aws:ssm:eu-west-1:{OWN}:parameter/webapp/qa/g/"], OWN)
    assert found["secrets"] == [secret]
    assert found["parameters"] == [f"arn:aws:ssm:eu-west-1:{OWN}:parameter/webapp/qa/flag",
                                   f"arn:aws:ssm:eu-west-1:{OWN}:parameter/webapp/qa/g/*"]
    assert found["paths"] == [f"arn:aws:ssm:eu-west-1:{OWN}:parameter/webapp/qa/g"]


def test_set_of_a_secret_arn_writes_that_secret_in_its_region(aws):
    sm = boto3.client("secretsmanager", region_name="eu-west-1")
    arn = sm.create_secret(Name="webapp/qa/db", SecretString='{"password": "old"}')["ARN"]
    store = AwsStore("us-east-1", user="me@host")
    record = store.put(ref(f"{arn}#password"), '{"password": "new"}', "SecretString")
    assert sm.get_secret_value(SecretId=arn)["SecretString"] == '{"password": "new"}'
    assert record["version"] == store.get(ref(arn))["version"]
    assert [s["ARN"] for s in sm.list_secrets()["SecretList"]] == [arn]
    assert boto3.client("secretsmanager", region_name="us-east-1").list_secrets()["SecretList"] == []


def test_set_of_a_missing_secret_arn_creates_nothing(aws):
    missing = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:webapp/qa/gone-AbCdEf"
    with pytest.raises(OperationError, match="no secret .*gone-AbCdEf"):
        AwsStore("us-east-1").put(ref(missing), "x", "SecretString")
    for region in ("eu-west-1", "us-east-1"):
        assert boto3.client("secretsmanager", region_name=region).list_secrets()["SecretList"] == []


def test_set_of_an_ssm_arn_writes_the_named_parameter_in_the_arn_s_region(aws):
    ssm = boto3.client("ssm", region_name="eu-west-1")
    ssm.put_parameter(Name="/webapp/qa/flag", Value="on", Type="String")
    store = AwsStore("us-east-1")
    assert store.put(ref(SSM_ARN), "off", "String")["version"] == 2
    assert ssm.get_parameter(Name="/webapp/qa/flag")["Parameter"]["Value"] == "off"
    assert [p["Name"] for p in ssm.describe_parameters()["Parameters"]] == ["/webapp/qa/flag"]
    assert store.get(ref(SSM_ARN))["value"] == "off"


def test_an_ssm_arn_of_another_account_is_refused(aws):
    other = SSM_ARN.replace(OWN, "999999999999")
    with pytest.raises(ConfigError, match="write it in the account that owns it"):
        AwsStore("us-east-1").put(ref(other), "off", "String")
    assert boto3.client("ssm", region_name="eu-west-1").describe_parameters()["Parameters"] == []
