"""ARN references: bakery keeps an ARN's region, account and the ARN itself, and the instance role's policy names
the ARN as written (the writes: tests/aws/test_params_arn_aws.py, against moto server)."""

from __future__ import annotations

import pytest

from bakery.aws.iam_policy_params import resources
from bakery.params import names

pytestmark = pytest.mark.unit

OWN = "123456789012"  # moto's account
SSM_ARN = f"arn:aws:ssm:eu-west-1:{OWN}:parameter/webapp/qa/flag"


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
