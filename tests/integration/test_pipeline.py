"""bake.py pipeline end to end: real bakes, verifications, HAProxy and instances, and resuming after a failure.

The happy path uses the session's example project and its webapp image (tests/integration/conftest.py
`webapp_image`): the pipeline finds that version by its input digest instead of baking it again. When
tests/integration/test_deploy.py ran first, that version carries a recorded verification and the
pipeline reuses it; otherwise its verify stage verifies it. The failure path bakes the fixture
project's small `badunit` image, whose unit fails at boot, so verify fails fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bakery.catalog import open_catalog
from tests.conftest import bake
from tests.integration.test_deploy import env_containers, force_clean, get, write_env

pytestmark = pytest.mark.integration


def stages(summary: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["stages"]}


def fixture_env(project: Path, name: str, image: str, **settings) -> None:
    """An environment of the fixture project (write_env writes one for the example image)."""
    write_env(project, name, instances=1, **settings)
    deploy_file = project / "inventories" / name / "group_vars" / "all" / "deploy.yml"
    deploy_file.write_text(deploy_file.read_text().replace("image: webapp", f"image: {image}"))


def pipeline(project: Path, *args: str):
    started = time.monotonic()
    out = bake(project, "pipeline", *args, "--json", timeout=1200)
    return out, time.monotonic() - started


@pytest.fixture
def pipe_env(example_project):
    """One environment of the example project, taken down afterwards even when the test fails."""
    name = "t7pipe"
    port = write_env(example_project, name, instances=2, require_verified=True, min_healthy_percentage=50,
                     max_healthy_percentage=150)
    yield name, port
    bake(example_project, "down", "--env", name, timeout=300)
    force_clean(example_project, name)
    assert not env_containers(example_project, name)


def test_pipeline_deploys_then_a_rerun_changes_nothing(example_project, webapp_image, pipe_env):
    name, port = pipe_env
    first, first_seconds = pipeline(example_project, "webapp", "--env", name)
    assert first.rc == 0, first.stderr
    summary = first.json
    assert summary["status"] == "succeeded" and summary["version"] == webapp_image["version"]
    assert stages(summary) == {"build-app": "reused", "build": "reused", "verify": stages(summary)["verify"],
                               "deploy": "done", "promote": "skipped"}
    assert stages(summary)["verify"] in ("done", "reused")
    assert summary["image_ref"] == webapp_image["ref"] and summary["artifacts"]["webapp"]["sha256"]
    status, body = get(port, "/version")
    assert status == 200 and json.loads(body)["image_version"] == webapp_image["version"]
    assert json.loads(body)["environment"] == name
    state = json.loads((example_project / ".bakery" / "pipelines" / f"webapp.{name}.json").read_text())
    assert state["status"] == "succeeded" and state["release"] == summary["release"] is not None
    assert (example_project / ".bakery" / "runs" / summary["run_id"] / "result.json").is_file()

    instances = sorted(env_containers(example_project, name))
    releases = len(open_catalog(example_project / ".bakery").releases(name))
    second, second_seconds = pipeline(example_project, "webapp", "--env", name)
    assert second.rc == 0, second.stderr
    assert stages(second.json) == {"build-app": "reused", "build": "reused", "verify": "reused", "deploy": "unchanged",
                                   "promote": "skipped"}
    assert second.json["release"] == summary["release"]
    assert sorted(env_containers(example_project, name)) == instances, "nothing was replaced"
    assert len(open_catalog(example_project / ".bakery").releases(name)) == releases, "no release was recorded"
    assert second_seconds < 0.6 * first_seconds, (first_seconds, second_seconds)
    print(f"pipeline first run {first_seconds:.1f} s, second run {second_seconds:.1f} s")


def test_failed_verify_exits_1_and_a_rerun_resumes_there(project):
    fixture_env(project, "t7fail", "badunit")

    first, _ = pipeline(project, "badunit", "--env", "t7fail")
    assert first.rc == 1, first.stderr
    assert "stage verify failed" in first.stderr and "broken-at-boot.service" in first.stderr
    assert first.stderr.strip().splitlines()[-1].startswith(
        "bake.py: error: pipeline badunit -> t7fail: stage verify failed")
    assert stages(first.json) == {"build-app": "skipped", "build": "done", "verify": "failed", "deploy": "not-run",
                                  "promote": "not-run"}
    assert first.json["failed_stage"] == "verify" and first.json["exit_code"] == 1

    again, _ = pipeline(project, "badunit", "--env", "t7fail")
    assert again.rc == 1
    assert stages(again.json)["build"] == "reused" and again.json["version"] == first.json["version"]
    assert again.json["resumed_from"] == "verify" and stages(again.json)["verify"] == "failed"
    assert "stopped at stage verify" in again.stderr
    verifications = open_catalog(project / ".bakery").verifications("badunit", first.json["version"])
    assert [v["passed"] for v in verifications] == [False, False], "a failed verification is repeated, never reused"
    assert env_containers(project, "t7fail") == []


def test_bad_input_exits_2_before_any_stage(project):
    fixture_env(project, "t7bad", "sample")
    out = bake(project, "pipeline", "planted", "--env", "t7bad")
    assert (out.rc == 2 and "deploys image 'sample', not 'planted'" in out.stderr
            and out.stderr.count("\n") == 1), out.stderr
    out = bake(project, "pipeline", "sample", "--env", "t7bad", "--target", "aws")
    assert out.rc == 2 and "runs on target 'local', not 'aws'" in out.stderr, out.stderr
    fixture_env(project, "t7other", "sample")
    fixture_env(project, "t7next", "sample", promote_from="t7other")
    out = bake(project, "pipeline", "sample", "--env", "t7bad", "--promote-to", "t7next")
    assert out.rc == 2 and "is promoted from 't7other' (promote_from), not from 't7bad'" in out.stderr, out.stderr
    out = bake(project, "pipeline", "sample", "--env", "nowhere")
    assert out.rc == 2 and "unknown environment 'nowhere'" in out.stderr
    assert not (project / ".bakery" / "runs").exists() or not list((project / ".bakery" / "runs").glob("*-pipeline-*"))
