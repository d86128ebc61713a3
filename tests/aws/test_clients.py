"""The shared boto3 client: moto on loopback through the standard chain, readable AccessDenied."""

from __future__ import annotations

import pytest
from botocore.stub import Stubber

from bakery.aws import clients
from bakery.errors import ConfigError

pytestmark = pytest.mark.aws


def test_clients_reach_moto_server_through_the_standard_chain(aws):
    ec2 = clients.client("ec2")
    assert ec2.meta.endpoint_url == aws
    assert ec2.meta.region_name == "us-east-1"
    assert ec2.meta.config.retries["mode"] == "adaptive"
    vpcs = ec2.describe_vpcs()["Vpcs"]  # a real HTTP round trip: moto's default VPC
    assert vpcs and vpcs[0]["IsDefault"]


def test_access_denied_names_the_missing_action(aws):
    ssm = clients.client("ssm")
    with Stubber(ssm) as stub:
        stub.add_client_error("put_parameter", service_error_code="AccessDeniedException",
                              service_message="User is not authorized", http_status_code=400)
        with pytest.raises(clients.AccessDenied) as caught:
            ssm.put_parameter(Name="/bakery/x", Value="y", Type="String")
    assert caught.value.action == "ssm:PutParameter"
    assert "docs/aws-iam-policy.json" in str(caught.value)


def test_missing_region_is_one_clear_line(aws, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    clients._session.cache_clear()
    with pytest.raises(ConfigError, match="no AWS region"):
        clients.client("ec2")
