"""bake.py's pipeline command: build-app, build, verify, deploy (and promote) one image in one job, for CI.

bakery.cli adds this command to its root group. Only click and the standard library are imported
here at load time (the library is imported inside each command).
"""

from __future__ import annotations

import click

from bakery.cli.common import emit_json


@click.command()
@click.argument("image")
@click.option("--env", "env_name", required=True, metavar="ENV", help="Environment to deploy to (inventories/ENV).")
@click.option("--target", type=click.Choice(["local", "aws"]),
              help="Target; must match the environment's (default: the environment's).")
@click.option("--builder", type=click.Choice(["podman", "packer", "imagebuilder", "disk"]),
              help="Builder (default: podman locally; on aws, aws.builder in bakery.yml, else packer).")
@click.option("--promote-to", metavar="ENV2",
              help="After the deploy, promote the same version to ENV2 (whose promote_from is ENV).")
@click.option("--force-verify", is_flag=True,
              help="Verify again even when this version already passed a verification.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one summary as JSON (stages, durations, version, artifacts, releases).")
@click.pass_obj
def pipeline(obj, image: str, env_name: str, target: str | None, builder: str | None, promote_to: str | None,
             force_verify: bool, as_json: bool) -> None:
    """Build the app, bake, verify, deploy to ENV and optionally promote; a re-run resumes where a failed run stopped.

    Example: ./bake.py pipeline webapp --env qa --promote-to prod
    """
    from bakery.builders import builder_for
    from bakery.cli.common import load_env
    from bakery.pipeline import PipelineFailed, PipelineRequest, run_pipeline
    from bakery.progress import make_progress

    obj.project.image(image)  # the arguments run_pipeline checks too, here before the catalog is opened
    env = load_env(obj, env_name)
    chosen_target = target or env.target
    builder_for(chosen_target, builder, obj.project.aws.builder if chosen_target == "aws" else None)

    request = PipelineRequest(image=image, env=env_name, target=target, promote_to=promote_to, builder=builder,
                              force_verify=force_verify)
    progress = make_progress(quiet=as_json)
    try:
        result = run_pipeline(obj.project, obj.catalog, progress, request)
    finally:
        progress.close()
    if as_json:
        emit_json(result.to_dict())
    else:
        _print_summary(result)
    if result.failed_stage:
        raise PipelineFailed(f"pipeline {image} -> {env_name}: stage {result.failed_stage} failed: {result.error} "
                             f"(fix it and run the pipeline again: it resumes at {result.failed_stage})",
                             result.exit_code)


def _print_summary(result) -> None:
    where = result.env + (f" -> {result.promote_to}" if result.promote_to else "")
    version = f"{result.image}:{result.version}" if result.version else result.image
    click.echo(f"pipeline {version} -> {where}: {result.status} in {result.seconds:.1f} s (run {result.run_id})")
    for stage in result.stages:
        click.echo(f"  {stage.name:<10} {stage.status:<10} {stage.seconds:6.1f} s  {stage.detail}")
    if result.endpoint and result.status == "succeeded":
        click.echo(f"'{result.env}' answers at {result.endpoint}")


COMMANDS: tuple[click.Command, ...] = (pipeline,)

