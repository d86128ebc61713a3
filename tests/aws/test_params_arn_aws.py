"""ARN references against moto server: `param set|get` reach the very parameter or secret the instance reads
(the ARN's region, the ARN as SecretId, never a new secret; another account's ARN refused)."""

from __future__ import annotations

import boto3
import pytest

from bakery.errors import ConfigError, OperationError
from bakery.params import names
from bakery.params.aws_store import AwsStore

pytestmark = pytest.mark.aws

OWN = "123456789012"  # moto's account
SSM_ARN = f"arn:aws:ssm:eu-west-1:{OWN}:parameter/webapp/qa/flag"


def ref(text):
    return names.parse_reference(text, "test")


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
