"""The pipeline's bookkeeping: what the state file says when a stage breaks in an unexpected way."""

from __future__ import annotations

import io
import json

import pytest

from bakery import pipeline
from bakery.catalog import open_catalog
from bakery.config import Project
from bakery.progress import Progress

pytestmark = pytest.mark.unit


def test_an_unexpected_error_in_a_stage_is_recorded_as_that_stages_failure_never_a_success(proj, monkeypatch):
    deploy = proj / "inventories" / "ci" / "group_vars" / "all" / "deploy.yml"
    deploy.parent.mkdir(parents=True)
    deploy.write_text("bakery_deploy:\n  target: local\n  image: sample\n  instances: 1\n  lb_port: 18999\n")

    def broken(p):
        raise RuntimeError("the endpoint went away")

    monkeypatch.setattr(pipeline, "STAGES", (pipeline.Stage("build-app", broken), *pipeline.STAGES[1:]))
    project = Project(proj)
    catalog = open_catalog(project.state_dir)
    try:
        with pytest.raises(RuntimeError, match="the endpoint went away"):
            pipeline.run_pipeline(project, catalog, Progress(io.StringIO()),
                                  pipeline.PipelineRequest(image="sample", env="ci"))
    finally:
        catalog.close()

    state = json.loads(pipeline.state_path(project, "sample", "ci").read_text())
    assert (state["status"], state["failed_stage"], state["exit_code"]) == ("failed", "build-app", 1)
    assert state["error"] == "RuntimeError: the endpoint went away"
    assert [(s["name"], s["status"]) for s in state["stages"]] == [("build-app", "failed")]  # nothing ran after it
