"""`bake.py pipeline`: build-app, build, verify, deploy and promote one image, as one resumable job.

The stages are data (STAGES): each takes the pipeline's state and returns a StageResult, or raises a
BakeryError whose exit code becomes the pipeline's. Nothing is repeated that already happened with the same
inputs: the builder reuses a version with the same input digest, a version's passed verification is reused,
and an environment already running the version with its runtime config is left alone ("unchanged"). So a
re-run after a failure resumes at the stage that failed. Every stage's result is kept in
.bakery/pipelines/<image>.<env>.json (written atomically after each stage), the summary in its run directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bakery.catalog import ROLLOUT_KINDS, Catalog
from bakery.config import ImageDefinition, Project
from bakery.environments import Environment, load_environment
from bakery.errors import BakeryError, ConfigError, Interrupted, OperationError
from bakery.files import write_atomically
from bakery.progress import Progress
from bakery.provenance import utc_now
from bakery.runs import Run

APP_SOURCE = "app"  # where build-app finds each artifact's package, as `bake.py build-app` does


class PipelineFailed(BakeryError):
    """A stage failed; carries that stage's exit code (2 configuration, 1 operation)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class PipelineRequest:
    image: str
    env: str
    target: str | None = None  # None: the environment's target
    promote_to: str | None = None
    builder: str | None = None
    force_verify: bool = False


@dataclass
class StageResult:
    name: str
    status: str  # done, reused, unchanged, skipped, failed, interrupted, not-run
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 2), "detail": self.detail,
                **self.data}


@dataclass
class PipelineResult:
    image: str
    env: str
    target: str
    promote_to: str | None
    run_id: str
    started: str
    status: str = "running"  # succeeded, failed, interrupted
    exit_code: int = 0
    failed_stage: str | None = None
    error: str | None = None
    resumed_from: str | None = None
    version: str | None = None
    image_ref: str | None = None
    image_id: str | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)
    release: int | None = None
    promote_release: int | None = None
    endpoint: str | None = None
    seconds: float = 0.0
    state_file: str = ""
    stages: list[StageResult] = field(default_factory=list)

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 2)
        data["stages"] = [s.to_dict() for s in self.stages]
        return data


@dataclass
class Pipeline:
    """What the stages share: the session, the validated request, and what earlier stages produced."""

    project: Project
    catalog: Catalog
    progress: Progress
    request: PipelineRequest
    definition: ImageDefinition
    env: Environment
    promote_env: Environment | None
    result: PipelineResult

    @property
    def target(self) -> str:
        return self.env.target

    def session(self):
        from bakery.fleets.operations import Session

        return Session(self.project, self.catalog, self.progress)


# ---------------------------------------------------------------- stages


def build_app_stage(p: Pipeline) -> StageResult:
    if not p.definition.artifacts:
        return StageResult("build-app", "skipped",
                           detail=f"image '{p.definition.name}' bakes no application artifact (bakery.yml)")
    from bakery.artifacts import LocalArtifactStore, build_app

    store = LocalArtifactStore(p.project.state_dir / "artifacts")
    built, reused = [], True
    for name in sorted(set(p.definition.artifacts.values())):
        known = {a.sha256 for a in store.list(name)}
        artifact = build_app(p.project.root / APP_SOURCE, store, name)
        reused = reused and artifact.sha256 in known
        p.result.artifacts[name] = {"version": artifact.version, "sha256": artifact.sha256, "path": str(artifact.path)}
        built.append(f"{name} {artifact.version}")
    return StageResult("build-app", "reused" if reused else "done",
                       detail=("sources unchanged: " if reused else "built ") + ", ".join(built))


def build_stage(p: Pipeline) -> StageResult:
    from bakery.builders import builder_for
    from bakery.builders.base import BuildOptions

    configured = p.project.aws.builder if p.target == "aws" else None
    builder = builder_for(p.target, p.request.builder, configured)(p.project, p.catalog, p.progress)
    run = Run.start(p.project.state_dir, "build")
    try:
        built = builder.build(p.definition, BuildOptions(), run)
    except BaseException as exc:
        run.write_result({"status": "failed", "image": p.definition.name, "error": str(exc)})
        raise
    data = built.to_dict()
    data["status"] = "reused" if built.reused else "built"
    run.write_result(data)
    p.result.version, p.result.image_ref, p.result.image_id = built.version, built.ref, built.image_id
    ran = sum(1 for layer in built.layers if not layer.cached)
    detail = (f"inputs unchanged: {built.ref}" if built.reused
              else f"baked {built.ref} ({ran} of {len(built.layers)} roles ran)")
    return StageResult("build", "reused" if built.reused else "done", detail=detail,
                       data={"version": built.version, "ref": built.ref, "image_id": built.image_id,
                             "input_digest": built.input_digest, "run_id": built.run_id})


def verify_stage(p: Pipeline) -> StageResult:
    """The container verification, then the VM (local) or read-back (aws) one where ENV or --promote-to's needs it."""
    result = _verify_container(p)
    kinds = set(p.env.require_verified) | set(p.promote_env.require_verified if p.promote_env else ())
    if "vm" in kinds and p.target == "local":
        from bakery.verify.vm import ensure_vm_verified as ensure
    elif "aws" in kinds and p.target == "aws":
        from bakery.verify.aws_readback import ensure_ami_verified as ensure  # type: ignore[assignment]
    else:
        return result
    result.detail += "; " + ensure(p.project, p.catalog, p.progress, p.definition.name, p.result.version or "",
                                   p.env.name, p.request.force_verify)
    return result


def _verify_container(p: Pipeline) -> StageResult:
    from bakery.verify.gate import latest_verification

    image, version = p.definition.name, p.result.version
    assert version is not None
    last = latest_verification(p.catalog, image, version, "container")
    if last and last["passed"] and not p.request.force_verify:
        by = "the aws builder" if p.target == "aws" else f"run {last['run_id']}"
        return StageResult("verify", "reused",
                           detail=f"{image}:{version} passed verification at {last['started']} "
                                  f"(env {last['env'] or '-'}, {by}); not repeated",
                           data={"passed": True, "run_id": last["run_id"],
                                 "report": (last.get("reports") or {}).get("junit")})
    if p.target == "aws":
        if p.request.force_verify:
            raise ConfigError("--force-verify works on the local target only: "
                              "an AMI is verified by its builder during the bake")
        raise OperationError(f"{image}:{version} has no passed verification: "
                             "the aws builder records one when its bake's tests pass; "
                             f"rebake with ./bake.py build {image} --target aws --no-cache and read its run log")
    from bakery.verify.runner import verify_image

    verified = verify_image(p.project, p.catalog, p.progress, image, version, p.env.name)
    if not verified.passed:
        raise OperationError(f"verification of {image}:{version} failed: {verified.summary} "
                             f"(report {verified.reports['junit']})")
    return StageResult("verify", "done", detail=f"{image}:{version} passed with {p.env.name}'s runtime config",
                       data={"passed": True, "run_id": verified.run_id, "report": verified.reports["junit"]})


def deploy_stage(p: Pipeline) -> StageResult:
    from bakery.fleets.operations import deploy

    return _roll_out(p, "deploy", p.env, lambda session: deploy(session, p.env, p.definition.name, p.result.version))


def promote_stage(p: Pipeline) -> StageResult:
    if p.promote_env is None:
        return StageResult("promote", "skipped", detail="no --promote-to")
    from bakery.fleets.operations import promote

    env = p.promote_env
    return _roll_out(p, "promote", env, lambda session: promote(session, env, p.definition.name, p.result.version))


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Pipeline], StageResult]


STAGES = (
    Stage("build-app", build_app_stage),
    Stage("build", build_stage),
    Stage("verify", verify_stage),
    Stage("deploy", deploy_stage),
    Stage("promote", promote_stage),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


# ---------------------------------------------------------------- rollouts


def _roll_out(p: Pipeline, stage: str, env: Environment, release: Callable[[Any], Any]) -> StageResult:
    """Deploy or promote, unless every instance already runs this version with this runtime config."""
    from bakery.fleets.operations import open_fleet

    session = p.session()
    image, version = p.definition.name, p.result.version
    fleet = open_fleet(session, env)
    goal = fleet.goal_for(version, env.config_digest(), env.runtime)
    status = fleet.status()
    if goal is not None and status.state == "up" and all(goal.matches(i.version, i.config_digest)
                                                         for i in status.instances):
        current = next((r for r in p.catalog.releases(env.name, limit=100)
                        if r["status"] == "succeeded" and r["kind"] in ROLLOUT_KINDS
                        and r["version"] == version and r["config_digest"] == goal.config_digest), None)
        release_id = current["id"] if current else None
        _remember_release(p, stage, release_id, status.endpoint)
        return StageResult(stage, "unchanged",
                           detail=f"all {len(status.instances)} instances of '{env.name}' "
                                  f"already run {image}:{version} with this runtime config",
                           data={"env": env.name, "release": release_id, "endpoint": status.endpoint, "replaced": 0})
    result = release(session)
    _remember_release(p, stage, result.release_id, result.endpoint)
    data = {"env": env.name, "release": result.release_id, "endpoint": result.endpoint, "replaced": result.replaced,
            "from": result.from_version}
    if not result.ok:
        raise OperationError(f"{stage} of {image}:{version} to '{env.name}' {result.result.replace('_', ' ')} "
                             f"(release #{result.release_id}): {result.reason}")
    unchanged = result.replaced == 0 and result.from_version == version
    return StageResult(stage, "unchanged" if unchanged else "done",
                       detail=f"'{env.name}' runs {image}:{version}: {result.replaced} of {result.total} "
                              f"instances replaced (release #{result.release_id}, {result.endpoint})", data=data)


def _remember_release(p: Pipeline, stage: str, release_id: int | None, endpoint: str | None) -> None:
    if stage == "deploy":
        p.result.release, p.result.endpoint = release_id, endpoint
    else:
        p.result.promote_release = release_id


# ---------------------------------------------------------------- the job


def state_path(project: Project, image: str, env: str) -> Path:
    """One state file per image and environment (names cannot contain '.', so the name is unambiguous)."""
    return project.state_dir / "pipelines" / f"{image}.{env}.json"


def load_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a state file is a record, not an input: an unreadable one is simply not resumed from
    return data if isinstance(data, dict) else None


def prepare(project: Project, catalog: Catalog, progress: Progress, request: PipelineRequest, run_id: str) -> Pipeline:
    """Validate everything a stage will need before any stage runs: bad input exits 2 and changes nothing."""
    definition = project.image(request.image)
    env = load_environment(project, request.env)
    deploy_file = env.path / "group_vars" / "all" / "deploy.yml"
    if env.image != request.image:
        raise ConfigError(f"{deploy_file}: environment '{env.name}' deploys image '{env.image}', not '{request.image}'")
    if request.target and request.target != env.target:
        raise ConfigError(f"{deploy_file}: environment '{env.name}' runs on target '{env.target}', "
                          f"not '{request.target}'; run the pipeline with --target {env.target}")
    promote_env = None
    if request.promote_to:
        promote_env = load_environment(project, request.promote_to)
        promote_file = promote_env.path / "group_vars" / "all" / "deploy.yml"
        if promote_env.promote_from != env.name:
            raise ConfigError(f"{promote_file}: environment '{promote_env.name}' is promoted from "
                              f"'{promote_env.promote_from or 'nowhere'}' (promote_from), not from '{env.name}'")
        if promote_env.image != request.image or promote_env.target != env.target:
            raise ConfigError(f"{promote_file}: environment '{promote_env.name}' must run image '{request.image}' "
                              f"on target '{env.target}'")
    result = PipelineResult(image=request.image, env=env.name, target=env.target, promote_to=request.promote_to,
                            run_id=run_id, started=utc_now(),
                            state_file=str(state_path(project, request.image, env.name)))
    return Pipeline(project, catalog, progress, request, definition, env, promote_env, result)


def run_pipeline(project: Project, catalog: Catalog, progress: Progress, request: PipelineRequest) -> PipelineResult:
    """Run every stage in order; stop at the first failure. The result says what each stage did (or why it failed)."""
    started = time.monotonic()
    p = prepare(project, catalog, progress, request, run_id="")  # a ConfigError comes before any run directory exists
    run = Run.start(project.state_dir, "pipeline")
    result = p.result
    result.run_id = run.id
    path = Path(result.state_file)
    previous = load_state(path)
    if previous and previous.get("status") in ("failed", "interrupted") and previous.get("failed_stage"):
        progress.note(f"pipeline {request.image} -> {p.env.name}: the previous run ({previous.get('run_id')}) "
                      f"stopped at stage {previous['failed_stage']}; "
                      "stages before it are reused when their inputs are unchanged")
    progress.note(f"pipeline {request.image} -> {p.env.name}"
                  + (f" -> {request.promote_to}" if request.promote_to else "") + f" on {p.target} (run {run.id})")
    try:
        for number, stage in enumerate(STAGES, 1):
            if result.status != "running":
                result.stages.append(StageResult(stage.name, "not-run"))
                continue
            progress.note(f"[{number}/{len(STAGES)}] {stage.name}")
            begun = time.monotonic()
            try:
                outcome = stage.run(p)
            except BakeryError as exc:
                outcome = StageResult(stage.name, "failed", detail=str(exc))
                result.status, result.exit_code, result.failed_stage, result.error = (
                    "failed", exc.exit_code, stage.name, str(exc))
            except (Interrupted, KeyboardInterrupt):
                result.stages.append(StageResult(stage.name, "interrupted", time.monotonic() - begun))
                result.status, result.exit_code, result.failed_stage = "interrupted", Interrupted.exit_code, stage.name
                raise
            # an unexpected error is this stage's failure too; the CLI reports it (traceback with --debug)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                result.stages.append(StageResult(stage.name, "failed", time.monotonic() - begun, detail=error))
                result.status, result.exit_code, result.failed_stage, result.error = "failed", 1, stage.name, error
                raise
            outcome.seconds = time.monotonic() - begun
            result.stages.append(outcome)
            _note_resume(result, previous, stage.name, outcome)
            progress.note(f"  {stage.name}: {outcome.status}" + (f" - {outcome.detail}" if outcome.detail else "")
                          + f" ({outcome.seconds:.1f} s)")
            _save(path, run, result, started)
    except BaseException:
        if result.status == "running":  # failed between stages (saving the state, say): never recorded as a success
            result.status, result.exit_code = "failed", result.exit_code or 1
        raise
    else:
        if result.status == "running":
            result.status = "succeeded"
    finally:
        _save(path, run, result, started)
    return result


def _note_resume(result: PipelineResult, previous: dict[str, Any] | None, name: str, outcome: StageResult) -> None:
    """The stage this run resumed at: the one the previous run failed in, when the build gave the same version."""
    if not previous or previous.get("status") not in ("failed", "interrupted"):
        return
    failed = previous.get("failed_stage")
    if name != failed or outcome.status == "not-run":
        return
    if previous.get("version") in (None, result.version) or STAGE_NAMES.index(name) <= STAGE_NAMES.index("build"):
        result.resumed_from = failed


def _save(path: Path, run: Run, result: PipelineResult, started: float) -> None:
    result.seconds = time.monotonic() - started
    data = result.to_dict()
    data["updated"] = utc_now()
    write_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    run.write_result(data)
