"""AWS tests talk to moto server on loopback: a real HTTP endpoint, never AWS.

boto3 reaches it through AWS_ENDPOINT_URL, so bakery's own clients (and bake.py
run as a subprocess) need no test switch. Each test starts from an empty moto
state. botocore's Stubber is used only for the APIs moto lacks (Image Builder,
instance refresh), in the tests that need them.
"""

from __future__ import annotations

import os
import urllib.request

import pytest

from tests.aws import call_recorder
from tests.conftest import free_port

call_recorder.install()  # before any botocore session exists: bakery's sessions are made in the tests

REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto server per test session, on a free loopback port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_endpoint, monkeypatch, tmp_path):
    """A clean moto state and an environment where every boto3 client (ours and bake.py's) goes to it."""
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance metadata service
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    from bakery.aws import clients

    clients._session.cache_clear()  # sessions read the environment once
    yield moto_endpoint
    clients._session.cache_clear()


@pytest.fixture(autouse=True)
def replayed_calls(request, monkeypatch, tmp_path_factory):
    """Every AWS call bakery makes in the test (bake.py's too) is modelled by the policy replay of the test's flows.

    Checked when each test ends, not by a test that runs last: it holds whatever pytest runs, in whatever order, and
    names the test that made the call (tests/aws/call_recorder.py records; test_policy_replay.unmodelled checks)."""
    log = tmp_path_factory.mktemp(f"calls-{request.node.path.stem}") / "calls.jsonl"
    monkeypatch.setenv(call_recorder.LOG_ENV, str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(call_recorder.SITE),
                                                                    os.environ.get("PYTHONPATH")])))
    yield log
    recorded = call_recorder.read(log)
    if recorded:
        from tests.aws.test_policy_replay import unmodelled

        missing = unmodelled(request.node.path.stem, recorded)
        if missing:
            pytest.fail("the policy replay (tests/aws/test_policy_replay.py) lacks calls bakery made:\n"
                        + "\n".join(missing), pytrace=False)
