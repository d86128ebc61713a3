"""What `bake.py gc` says: the local and aws reports as lines and JSON, and a dry run that changes nothing."""

from __future__ import annotations

import pytest

from bakery.errors import OperationError
from bakery.gc import leftovers
from bakery.gc import local as gc_local
from bakery.gc.aws import AwsGcReport, AwsPlan
from bakery.gc.local import GcResult, LocalGcReport
from bakery.gc.plan import LocalPlan

pytestmark = pytest.mark.unit


def version(n: int, reason: str = "older than the newest 1 and not in use") -> dict:
    return {"image": "web", "version": f"20260101.00{n}", "image_ref": f"localhost/bakery/web:20260101.00{n}",
            "reason": reason}


def test_local_dry_run_lists_what_would_go_and_why_the_rest_stays():
    found = leftovers.Leftovers(containers=["bakery-build-1"], pending_versions=["web:20260101.004"])
    planned = LocalPlan(keep=1, delete=[version(1)], kept=[{**version(3), "reasons": ["one of the newest 1"]}],
                        artifacts=[{"name": "app", "version": "1.0", "sha256": "s", "reason": "stale"}])
    report = LocalGcReport(True, 1, found, planned, GcResult(removed=list(planned.delete),
                                                             artifacts=list(planned.artifacts)))
    assert report.lines() == ["would remove container bakery-build-1", "would remove pending version web:20260101.004",
                              "would remove version web:20260101.001 (older than the newest 1 and not in use)",
                              "would remove artifact app 1.0 (stale)",
                              "keep version web:20260101.003: one of the newest 1"]
    data = report.to_dict()
    assert data["dry_run"] is True and data["keep"] == 1 and data["versions"] == [version(1)]
    assert data["kept"] == planned.kept and data["playbooks"] == [] and data["failed"] == data["skipped"] == []
    report.raise_for_failures()


def test_local_report_without_anything_to_remove_and_with_a_refused_rmi():
    nothing = LocalGcReport(False, None, leftovers.Leftovers(), None, GcResult())
    assert nothing.lines() == ["nothing to remove"] and nothing.to_dict()["kept"] == []
    refused = LocalGcReport(False, 1, leftovers.Leftovers(), LocalPlan(keep=1),
                            GcResult(failed=[version(2)], skipped=[version(1, "container x started to use it")]))
    assert refused.lines() == ["kept version web:20260101.001 (container x started to use it)"]
    with pytest.raises(OperationError, match=r"podman did not remove web:20260101.002 \(a container may have started"):
        refused.raise_for_failures()


def test_collect_local_dry_run_takes_no_lock_and_removes_nothing(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run changes nothing")

    found = leftovers.Leftovers(playbooks=["/p/.bakery-1-x.yml"])
    planned = LocalPlan(keep=2, delete=[version(1)])
    monkeypatch.setattr(gc_local, "environment_locks", refuse)
    monkeypatch.setattr(gc_local, "apply", refuse)
    monkeypatch.setattr(leftovers, "remove", refuse)
    monkeypatch.setattr(leftovers, "find", lambda project, catalog: found)
    monkeypatch.setattr(gc_local, "plan", lambda project, catalog, keep: planned)
    report = gc_local.collect_local(object(), object(), 2, dry_run=True)
    assert report.found is found and report.planned is planned and report.result.removed == [version(1)]
    assert report.lines()[0] == "would remove playbook /p/.bakery-1-x.yml"


def aws_plan() -> AwsPlan:
    planned = AwsPlan(keep=1, regions=["us-east-1", "eu-west-1"])
    planned.delete = [{"image": "web", "version": "20260101.001",
                       "reason": "older than the newest 1 and in use nowhere",
                       "amis": [{"ami_id": "ami-1", "region": "eu-west-1", "snapshots": ["snap-1"]},
                                {"ami_id": "ami-2", "region": "us-east-1", "snapshots": ["snap-2"]}]}]
    planned.kept = [{"image": "web", "version": "20260101.002", "amis": [], "reasons": ["one of the newest 1"]}]
    return planned


def test_aws_report_lists_every_copy_on_a_dry_run_and_only_the_deleted_ones_otherwise():
    planned = aws_plan()
    dry = AwsGcReport(True, planned)
    assert dry.lines() == ["would delete web:20260101.001: ami-1 in eu-west-1 (1 snapshots), ami-2 in us-east-1 "
                           "(1 snapshots) (older than the newest 1 and in use nowhere)",
                           "keep web:20260101.002: one of the newest 1"]
    assert dry.to_dict()["target"] == "aws" and dry.to_dict()["dry_run"] is True and dry.to_dict()["keep"] == 1
    planned.deleted = [{"region": "us-east-1", "ami_id": "ami-2", "snapshots": ["snap-2"]}]
    planned.skipped = [{"region": "eu-west-1", "ami_id": "ami-1", "reasons": ["instance i-1 runs it"]}]
    real = AwsGcReport(False, planned)
    assert real.lines() == ["deleted web:20260101.001: ami-2 in us-east-1 (1 snapshots) "
                            "(older than the newest 1 and in use nowhere)",
                            "keep web:20260101.002: one of the newest 1",
                            "kept ami-1 in eu-west-1 after all: instance i-1 runs it"]
    real.raise_for_failures()


def test_aws_report_with_nothing_to_delete_and_with_failures():
    empty = AwsGcReport(False, AwsPlan(keep=3, regions=["us-east-1", "eu-west-1"]))
    assert empty.lines() == ["nothing to delete in us-east-1, eu-west-1"]
    planned = aws_plan()
    planned.failed = [{"region": "eu-west-1", "ami_id": "ami-1", "error": "refused"},
                      {"region": "x", "ami_id": "y", "error": "z"}]
    with pytest.raises(OperationError, match="^2 AMI\\(s\\) could not be deleted, first ami-1 in eu-west-1: refused$"):
        AwsGcReport(False, planned).raise_for_failures()
