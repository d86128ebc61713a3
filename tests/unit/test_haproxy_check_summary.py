"""The load balancer's check in messages: HAProxy shows `* L7STS` with code 0 while its next check runs (seen
with haproxy 2.6 on a backend that answers 503 slowly), which bakery printed as `L7STS 0`."""

from __future__ import annotations

import pytest

from bakery.fleets.haproxy import Server

pytestmark = pytest.mark.unit


def server(**fields) -> Server:
    return Server(name="bakery-t-1", address="127.0.0.1", port=19001, op_state=2, admin_state=0, **fields)


@pytest.mark.parametrize("fields, summary", [
    ({"check_status": "L7STS", "check_code": "503", "last_check": "HTTP status check returned code <503>"},
     "L7STS 503"),
    ({"check_status": "L7STS", "check_code": "0", "check_running": True},
     "L7STS (its code is not shown while the next check runs)"),
    ({"check_status": "L4CON", "check_running": True, "last_check": "Connection refused"},
     "L4CON Connection refused"),
    ({"check_status": "L4CON", "check_code": "", "last_check": "Connection refused"}, "L4CON Connection refused"),
    ({}, "no check yet"),
])
def test_the_summary_never_shows_the_code_of_a_check_still_running(fields, summary):
    assert server(**fields).check_summary() == summary
