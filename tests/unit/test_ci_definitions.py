"""The CI definitions in ci/ are valid for their systems and run the commands bakery really has.

- GitHub Actions workflow: check-jsonschema with its bundled github-workflows schema (actionlint's
  PyPI wrapper downloads the actionlint binary at install time, which setup cannot do here);
- CodeBuild buildspec: its structure (version 0.2, known phases, lists of commands);
- CodePipeline CloudFormation template: cfn-lint.
Every `./bake.py` line in them must parse against the real CLI and every `make` target exist.
Each linter is also shown a broken copy, so a linter that checks nothing would fail here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import click.testing
import pytest
import yaml

from tests.conftest import REPO
from tests.unit.test_readme import is_bake, makefile_targets, parse_bake, simple_commands

pytestmark = pytest.mark.unit
# A job's last step: its .bakery/ goes, then every local image no catalog lists (its own among them; a failure is
# a warning, not a failed job), then the .bakery/ that gc made.
CLEAN_UP = ("rm -rf .bakery\n"
            "./bake.py gc --orphans || echo \"::warning::bake.py gc --orphans failed; local images may be left\"\n"
            "rm -rf .bakery\n")

VENV_BIN = Path(sys.executable).parent
WORKFLOW = REPO / "ci" / "github" / "workflows" / "bakery.yml"
BUILDSPEC = REPO / "ci" / "aws" / "buildspec.yml"
CODEPIPELINE = REPO / "ci" / "aws" / "codepipeline.yaml"
BASE_REFRESH_BUILDSPEC = REPO / "ci" / "aws" / "base-refresh-buildspec.yml"
BUILDSPEC_PHASES = ("install", "pre_build", "build", "post_build")


class CloudFormationLoader(yaml.SafeLoader):
    """Reads a template's short-form intrinsic functions (!Ref, !Sub, !GetAtt) as plain values."""


CloudFormationLoader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_scalar(node)
                                           if isinstance(node, yaml.ScalarNode) else loader.construct_sequence(node))


def tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / name), *args], capture_output=True, text=True, check=False, timeout=120)


def check_shell_lines(lines: list[str], where: str) -> list[list[str]]:
    """Every bake.py command parses, every make target exists; returns the bake.py command paths used."""
    targets, used = makefile_targets(), []
    for line in lines:
        for args in simple_commands(line):
            if is_bake(args[0]):
                used.append(parse_bake(args[1:]))  # raises click.UsageError naming the problem
            elif args[0] == "make":
                missing = [t for t in args[1:] if t not in targets]
                assert not missing, f"{where}: {line!r}: no make target {missing}"
    return used


def buildspec_problems(spec: Any) -> list[str]:
    if not isinstance(spec, dict):
        return ["a buildspec is a mapping"]
    problems = []
    if str(spec.get("version")) != "0.2":
        problems.append(f"version must be 0.2, got {spec.get('version')!r}")
    phases = spec.get("phases")
    if not isinstance(phases, dict) or not phases:
        return [*problems, "phases must be a non-empty mapping"]
    for name, phase in phases.items():
        if name not in BUILDSPEC_PHASES:
            problems.append(f"unknown phase {name!r} (known: {', '.join(BUILDSPEC_PHASES)})")
        commands = (phase or {}).get("commands") if isinstance(phase, dict) else None
        if not isinstance(commands, list) or not commands or not all(isinstance(c, str) for c in commands):
            problems.append(f"phases.{name}.commands must be a non-empty list of strings")
    variables = (spec.get("env") or {}).get("variables") or {}
    if not all(isinstance(v, str) for v in variables.values()):
        problems.append("env.variables values must be strings (quote numbers and booleans)")
    return problems


def buildspec_commands(spec: dict) -> list[str]:
    return [c for phase in spec["phases"].values() for c in phase["commands"]]


# ---------------------------------------------------------------- GitHub Actions


def test_workflow_passes_the_github_workflow_schema(tmp_path):
    out = tool("check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW))
    assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "run-on:", 1))
    out = tool("check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(broken))
    assert out.returncode == 1 and "runs-on" in out.stdout + out.stderr


def test_workflow_runs_the_pipeline_on_push_and_promotes_after_approval():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["push"]["branches"] == ["main"] and "workflow_dispatch" in triggers
    jobs = workflow["jobs"]
    runs = {name: [step["run"] for step in job["steps"] if "run" in step] for name, job in jobs.items()}
    assert "make setup" in runs["qa"] and "./bake.py pipeline webapp --env qa" in " ".join(runs["qa"])
    assert jobs["qa"]["if"] == "github.event_name == 'push'"
    assert jobs["prod"]["environment"] == "prod"
    assert jobs["prod"]["if"].startswith("github.event_name == 'workflow_dispatch'")
    for name, job in jobs.items():
        assert "self-hosted" in job["runs-on"], f"job {name}: podman and systemd need a self-hosted runner"
        used = check_shell_lines(runs[name], f"{WORKFLOW.name} job {name}")
        if name == "prod":
            assert ["promote"] in used and "--to prod" in " ".join(runs[name])


def made_flag(shell: str, base_json: str, tmp_path: Path) -> str:
    """Run a CI definition's "did it make a new base?" shell line on a base.json the real CLI wrote."""
    (tmp_path / "base.json").write_text(base_json)
    (tmp_path / "out.txt").unlink(missing_ok=True)
    out = subprocess.run(["bash", "-c", shell.replace('"$GITHUB_OUTPUT"', "out.txt")], cwd=tmp_path,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return (tmp_path / "out.txt").read_text()


def base_json(made: bool) -> str:
    """What `./bake.py base --if-updates --json` prints (emit_json: indented, keys sorted)."""
    from bakery.cli.common import emit_json

    runner = click.testing.CliRunner()
    return runner.invoke(click.Command("x", callback=lambda: emit_json({"made": made, "ref": "r", "updates": []})),
                         []).output


def test_the_scheduled_patch_job_refreshes_the_base_and_only_then_runs_dev_and_qa(tmp_path):
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))
    [schedule] = triggers["schedule"]
    assert len(schedule["cron"].split()) == 5
    jobs = workflow["jobs"]
    patch = jobs["patch"]
    assert patch["if"] == "github.event_name == 'schedule'"
    assert "schedule" not in jobs["qa"]["if"] and jobs["prod"]["if"].startswith("github.event_name == 'workflow_")
    steps = {step.get("id"): step for step in patch["steps"]}
    runs = [step["run"] for step in patch["steps"] if "run" in step]
    used = check_shell_lines(runs, f"{WORKFLOW.name} job patch")
    assert ["base"] in used and ["pipeline"] in used
    refresh = next(r for r in runs if "bake.py base" in r)
    assert "--if-updates" in refresh and "--json" in refresh and "base.json" in refresh
    [pipeline] = [s for s in patch["steps"] if "bake.py pipeline" in s.get("run", "")]
    assert pipeline["if"] == "steps.base.outputs.made == 'true'"
    assert "--env dev --promote-to qa" in pipeline["run"] and "prod" not in pipeline["run"]
    assert made_flag(steps["base"]["run"], base_json(True), tmp_path) == "made=true\n"
    assert made_flag(steps["base"]["run"], base_json(False), tmp_path) == "made=false\n"
    assert patch["steps"][-1] == {"name": "Leave no state on the runner (AWS keeps the record)", "if": "always()",
                                  "run": CLEAN_UP}


# ---------------------------------------------------------------- AWS CodeBuild and CodePipeline


def test_buildspec_structure_and_commands():
    spec = yaml.safe_load(BUILDSPEC.read_text())
    assert buildspec_problems(spec) == []
    used = check_shell_lines(buildspec_commands(spec), BUILDSPEC.name)
    assert ["pipeline"] in used
    assert any("--target aws" in c for c in spec["phases"]["build"]["commands"])
    assert spec["phases"]["install"]["commands"][-1] == "make setup"  # after the apt-get lines make needs


def test_buildspec_check_catches_mistakes():
    assert buildspec_problems({"version": 0.1, "phases": {"compile": {"commands": ["make"]}}}) == [
        "version must be 0.2, got 0.1", "unknown phase 'compile' (known: install, pre_build, build, post_build)"]
    assert buildspec_problems({"version": 0.2, "phases": {"build": {"commands": "make"}},
                               "env": {"variables": {"N": 1}}}) == [
        "phases.build.commands must be a non-empty list of strings",
        "env.variables values must be strings (quote numbers and booleans)"]


def test_codepipeline_template_passes_cfn_lint(tmp_path):
    out = tool("cfn-lint", str(CODEPIPELINE))
    assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(CODEPIPELINE.read_text().replace("TimeoutInMinutes: 120", "TimeoutInMinute: 120"))
    out = tool("cfn-lint", str(broken))
    assert out.returncode != 0 and "TimeoutInMinute" in out.stdout


def test_codepipeline_has_source_build_approval_promote():
    template = yaml.load(CODEPIPELINE.read_text(), Loader=CloudFormationLoader)  # a SafeLoader subclass
    resources = template["Resources"]
    stages = resources["Pipeline"]["Properties"]["Stages"]
    providers = [(s["Name"], s["Actions"][0]["ActionTypeId"]["Provider"]) for s in stages]
    assert providers == [("Source", "CodeStarSourceConnection"), ("BakeVerifyDeploy", "CodeBuild"),
                         ("Approve", "Manual"), ("Promote", "CodeBuild")]
    assert resources["PipelineBuild"]["Properties"]["Source"]["BuildSpec"] == "ci/aws/buildspec.yml"
    assert BUILDSPEC.relative_to(REPO).as_posix() == "ci/aws/buildspec.yml"
    promote_spec = yaml.safe_load(resources["PromoteBuild"]["Properties"]["Source"]["BuildSpec"])
    assert buildspec_problems(promote_spec) == []
    assert ["promote"] in check_shell_lines(buildspec_commands(promote_spec), "PromoteBuild's buildspec")


def test_an_eventbridge_schedule_starts_the_base_refresh_build_with_a_role_that_can_only_start_it(tmp_path):
    template = yaml.load(CODEPIPELINE.read_text(), Loader=CloudFormationLoader)  # a SafeLoader subclass
    resources = template["Resources"]
    rule = resources["BaseRefreshSchedule"]
    assert rule["Type"] == "AWS::Events::Rule"
    schedule = rule["Properties"]["ScheduleExpression"]
    schedule = template["Parameters"][schedule]["Default"] if schedule in template["Parameters"] else schedule
    assert schedule.startswith(("cron(", "rate(")) and rule["Properties"]["State"] == "ENABLED"
    [target] = rule["Properties"]["Targets"]
    assert target["Arn"] == "BaseRefreshBuild.Arn"
    role = resources[target["RoleArn"].removesuffix(".Arn")]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "events.amazonaws.com"}
    [policy] = role["Policies"]
    assert policy["PolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Action": "codebuild:StartBuild", "Resource": "BaseRefreshBuild.Arn"}]
    assert "ManagedPolicyArns" not in role
    project = resources["BaseRefreshBuild"]["Properties"]
    assert project["Source"]["BuildSpec"] == BASE_REFRESH_BUILDSPEC.relative_to(REPO).as_posix()
    spec = yaml.safe_load(BASE_REFRESH_BUILDSPEC.read_text())
    assert buildspec_problems(spec) == []
    used = check_shell_lines(buildspec_commands(spec), BASE_REFRESH_BUILDSPEC.name)
    assert ["base"] in used and ["pipeline"] in used
    [refresh, rebake] = spec["phases"]["build"]["commands"]
    assert "--if-updates --json" in refresh and "--promote-to" in rebake and "prod" not in rebake
    variables = {v["Name"]: v["Value"] for v in project["Environment"]["EnvironmentVariables"]}
    assert variables["BAKERY_REFRESH_ENV"] == "RefreshEnvironment" and variables["BAKERY_ENV"] == "SourceEnvironment"
    assert template["Parameters"]["RefreshEnvironment"]["Default"] == "dev"
    # the line itself, with the pipeline replaced by a marker: it runs only when the refresh made a base
    shell = rebake.split("||")[0] + "|| echo made=true > out.txt"
    assert made_flag(shell, base_json(True), tmp_path) == "made=true\n"
    with pytest.raises(FileNotFoundError):
        made_flag(shell, base_json(False), tmp_path)
