"""A release to an empty Auto Scaling group survives kill -9 between pinning the group and saving its state.

Pinning an empty group to the new launch template version (and giving it its capacity) makes AWS launch instances
with the new UserData at once: refresh.json must say so before that call, or a bake.py killed right after it leaves
an in_progress release with nothing saved, which the next command marks abandoned (and a config set's journal then
restores the old runtime.yml while the group runs the new one). With the state saved first, the next command
re-attaches, pins again (the same call: harmless when it had been made), and closes the release by its outcome.

moto cannot launch instances from a launch template version with UserData (it asserts on the type it stored), so
the pin itself is answered here, as AWS would answer it, and recorded; everything else is moto's.
"""

from __future__ import annotations

import types

import pytest

from bakery.aws import clients
from bakery.fleets import aws, operations
from tests.aws.test_fleet_aws import described, refresh, world  # noqa: F401

pytestmark = pytest.mark.aws


class Killed(BaseException):
    """kill -9 of bake.py (no handler of bakery's runs)."""


def test_a_kill_at_the_pin_of_an_empty_group_leaves_the_release_for_the_next_command(world, refresh,  # noqa: F811
                                                                                    monkeypatch):
    described(refresh, "web-qa")
    operations.down(world.session, world.env("qa"))
    saved = world.project.state_dir / "envs" / "qa" / "refresh.json"
    sent: list[dict] = []
    pins: list[tuple[dict, bool]] = []  # each pin to the new version, and whether refresh.json existed then

    def remember(params, **_):
        sent.append(params)

    def pin(**_):
        if (sent[-1].get("LaunchTemplate") or {}).get("Version") in (None, "1"):
            return None  # moto answers
        pins.append((sent[-1], saved.is_file()))
        if len(pins) == 1:
            raise Killed  # the request may or may not have reached AWS: bake.py is gone either way
        return types.SimpleNamespace(status_code=200, headers={}), {"ResponseMetadata": {"HTTPStatusCode": 200}}

    events = clients._session(None).events  # the fleet's clients, made from now on, carry these hooks
    events.register("before-parameter-build.auto-scaling.UpdateAutoScalingGroup", remember)
    events.register("before-call.auto-scaling.UpdateAutoScalingGroup", pin)
    described(refresh, "web-qa")  # deploy looks for a refresh running at AWS first

    with pytest.raises(Killed):
        operations.deploy(world.session, world.env("qa"), "webapp", world.versions[1])

    release = world.catalog.releases("qa", limit=1)[0]
    assert release["kind"] == "deploy" and release["status"] == "in_progress"
    assert pins[0][1], "refresh.json was written after the group was pinned: a kill there loses the release"

    monkeypatch.setattr(aws, "CAPACITY_TIMEOUT", 0.0)  # the pin is answered above: no instance ever launches
    described(refresh, "web-qa")  # status looks at the group's refreshes once the release is closed
    status = operations.status(world.session, world.env("qa"))

    assert len(pins) == 2 and pins[1][0] == pins[0][0]  # pinned again, the same call
    assert pins[0][0]["DesiredCapacity"] == 2
    assert [r["result"] for r in status["resumed"]] == ["failed"]  # closed by its outcome, not abandoned
    assert world.catalog.releases("qa", limit=1)[0]["status"] == "failed"
    assert not saved.exists()
