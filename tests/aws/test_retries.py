"""Throttling is retried by botocore's adaptive mode against the real moto endpoint; AccessDenied names the action.

The throttling answers are injected at the HTTP layer (botocore's `before-send`
event short-cuts the first N requests with a real AWSResponse carrying AWS's
error body), so serialisation, error parsing, the retry handler and the
adaptive rate limiter all run as they would against AWS; request N+1 goes to
moto server for real.
"""

from __future__ import annotations

import io

import pytest
from urllib3.response import HTTPResponse

from bakery.aws import clients

pytestmark = pytest.mark.aws


class FailFirst:
    """A before-send handler: the first `times` requests of `operation` get an AWS error answer, not moto's."""

    def __init__(self, operation: str, code: str, times: int, status: int = 400, message: str = "injected",
                 match: str = ""):
        self.operation, self.code, self.times, self.status, self.message = operation, code, times, status, message
        self.match = match  # only requests whose body contains this (e.g. "ImageId.1=" for look-ups of one AMI)
        self.injected = 0
        self.passed = 0

    def __call__(self, request, **_):
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body or "")
        if f"Action={self.operation}" not in body or self.match not in body:
            return None
        if self.injected >= self.times:
            self.passed += 1
            return None
        self.injected += 1
        from botocore.awsrequest import AWSResponse

        payload = (f"<Response><Errors><Error><Code>{self.code}</Code><Message>{self.message}</Message></Error>"
                   f"</Errors><RequestID>injected-{self.injected}</RequestID></Response>").encode()
        raw = HTTPResponse(body=io.BytesIO(payload), status=self.status, preload_content=False)
        return AWSResponse(request.url, self.status, {"Content-Type": "text/xml"}, raw)

    def attach(self, client) -> FailFirst:
        client.meta.events.register(f"before-send.ec2.{self.operation}", self)
        return self


def test_throttling_is_retried_until_the_call_succeeds(aws):
    ec2 = clients.client("ec2")
    throttle = FailFirst("DescribeImages", "RequestLimitExceeded", times=2, status=503).attach(ec2)
    answer = ec2.describe_images(Owners=["self"])
    assert throttle.injected == 2 and throttle.passed == 1  # two throttled attempts, then the real one reached moto
    assert answer["ResponseMetadata"]["RetryAttempts"] == 2
    assert answer["Images"] == []


def test_access_denied_from_ec2_names_the_action(aws):
    ec2 = clients.client("ec2")
    FailFirst("DeregisterImage", "UnauthorizedOperation", times=1, status=403,
              message="You are not authorized to perform this operation.").attach(ec2)
    with pytest.raises(clients.AccessDenied) as caught:
        ec2.deregister_image(ImageId="ami-12345678")
    assert caught.value.action == "ec2:DeregisterImage"
    assert "grant ec2:DeregisterImage" in str(caught.value)
