"""`status` shows each local instance's resolved parameter versions from /run/bakery/params.json (Contract 4), never a
value, and nothing for an instance without the file (an image from before) or with a file it cannot read."""

from __future__ import annotations

import json

import pytest

from bakery.fleets.base import FleetStatus, InstanceStatus
from bakery.params.report import instance_params, params_column

pytestmark = pytest.mark.unit

FILE = {"resolved": "2026-12-03T15:00:00Z", "mode": "local", "keys": {
    "FEATURE_NEW_CHECKOUT": {"ref": "ssm:/webapp/qa/feature-new-checkout", "version": 3, "refresh": 30,
                             "checked": "2026-12-03T15:00:30Z"},
    "DATABASE_PASSWORD": {"ref": "ssm:/webapp/qa/database-password", "version": 1, "value": "hunter2-leaked"}}}


def test_the_versions_are_read_and_nothing_else():
    params = instance_params(json.dumps(FILE))
    assert params == {"FEATURE_NEW_CHECKOUT": {"ref": "ssm:/webapp/qa/feature-new-checkout", "version": 3,
                                               "refresh": 30, "checked": "2026-12-03T15:00:30Z"},
                      "DATABASE_PASSWORD": {"ref": "ssm:/webapp/qa/database-password", "version": 1,
                                            "refresh": None, "checked": None}}
    assert "hunter2" not in json.dumps(params)
    assert params_column(params) == "DATABASE_PASSWORD=1 FEATURE_NEW_CHECKOUT=3"


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"keys": []}', '{"keys": {"A": 3}}', "null",
                                  '{"keys": {"lower": {"version": 1}}}'])
def test_a_missing_old_or_broken_file_shows_nothing(text):
    params = instance_params(text)
    assert not params and params_column(params) == "-"


def test_a_version_that_is_not_a_number_is_shown_as_text_a_secret_s_version_id():
    params = instance_params(json.dumps({"keys": {"DB": {"ref": "secretsmanager:x", "version": "a1b2c3d4-5678"}}}))
    assert params_column(params) == "DB=a1b2c3d4"


def test_the_json_of_status_carries_the_params_per_instance():
    instance = InstanceStatus(name="i", version="v", config_digest="d", state="running", health="UP",
                              lb_state="ready", in_service=True, address=None,
                              params=instance_params(json.dumps(FILE)))
    data = FleetStatus(env="qa", target="local", state="up", endpoint=None, lb_running=True, desired=1,
                       instances=[instance]).to_dict()
    assert data["instances"][0]["params"]["FEATURE_NEW_CHECKOUT"]["version"] == 3
