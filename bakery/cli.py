"""bake.py's command line: parse, call into the library, render the result.

Errors raised by the library carry their exit code; they are printed here as
one line. A traceback is shown only with --debug.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from bakery import __version__
from bakery.cli_fleet import register as register_fleet_commands
from bakery.cli_observe import register as register_observe_commands
from bakery.cli_pipeline import register as register_pipeline_commands
from bakery.errors import BakeryError, ConfigError, Interrupted


class Context:
    def __init__(self, project: str | None, debug: bool):
        self._project_arg = project
        self.debug = debug
        self._project = None
        self._catalog = None

    @property
    def project(self):
        if self._project is None:
            from bakery.config import Project

            self._project = Project.discover(self._project_arg)
        return self._project

    @property
    def catalog(self):
        if self._catalog is None:
            from bakery.catalog import open_catalog

            self._catalog = open_catalog(self.project.state_dir)
        return self._catalog


pass_ctx = click.make_pass_decorator(Context)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def parse_image_ref(value: str) -> tuple[str, str | None]:
    name, _, version = value.partition(":")
    return name, (version or None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--project", metavar="DIR", help="Project directory (default: nearest bakery.yml upwards; env BAKERY_PROJECT).")
@click.option("--debug", is_flag=True, help="Show tracebacks and verbose logs.")
@click.version_option(__version__, prog_name="bakery")
@click.pass_context
def cli(ctx: click.Context, project: str | None, debug: bool) -> None:
    """Bake Ansible roles into verified, immutable server images."""
    ctx.obj = Context(project, debug)


@cli.command()
@click.option("--release", default="bookworm", show_default=True, help="Debian release of the base.")
@click.option("--rebuild", is_flag=True, help="Make a new base even if one exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def base(obj: Context, release: str, rebuild: bool, as_json: bool) -> None:
    """Make the base image (mmdebstrap + podman import), or reuse the newest one.

    Example: ./bake.py base --release bookworm
    """
    from bakery import podman
    from bakery.base_image import build_base

    podman.check_working()
    if not as_json:
        click.echo(f"base {release}: looking for an existing base" + (" (rebuild requested)" if rebuild else ""), err=True)
    image = build_base(release, obj.project.state_dir / "tmp", rebuild=rebuild)
    obj.catalog.record_base(image.ref, release, image.digest)
    if as_json:
        emit_json({"ref": image.ref, "digest": image.digest, "release": release, "reused": image.reused})
    else:
        click.echo(f"{'reused' if image.reused else 'built'} {image.ref} ({image.digest})")


@cli.command("build-app")
@click.option("--source", default="app", show_default=True, metavar="DIR", help="Application source directory (relative to the project).")
@click.option("--name", default="webapp", show_default=True, help="Artifact name in the store.")
@click.option("--json", "as_json", is_flag=True, help="Print the artifact as JSON.")
@pass_ctx
def build_app(obj: Context, source: str, name: str, as_json: bool) -> None:
    """Build the application artifact: a deterministic, content-addressed tarball in .bakery/artifacts/.

    Example: ./bake.py build-app
    """
    from bakery.artifacts import LocalArtifactStore
    from bakery.artifacts import build_app as build

    artifact = build(obj.project.root / source, LocalArtifactStore(obj.project.state_dir / "artifacts"), name)
    if as_json:
        emit_json(artifact.to_dict())
    else:
        click.echo(f"artifact {artifact.name} {artifact.version} sha256:{artifact.sha256.removeprefix('sha256:')} ({artifact.path})")


@cli.command("new-role")
@click.argument("name")
@pass_ctx
def new_role(obj: Context, name: str) -> None:
    """Create roles/NAME in this project's style, with a Molecule scenario that passes as made.

    Example: ./bake.py new-role demo && cd roles/demo && molecule test
    """
    from bakery.scaffold import new_role as scaffold

    created = scaffold(obj.project.roles_dir, name)
    click.echo(f"created roles/{name} ({len(created)} files); test it with: cd roles/{name} && molecule test")


@cli.command()
@click.argument("image")
@click.option("--target", type=click.Choice(["local", "aws"]), default="local", show_default=True,
              help="Where the image is baked: a podman image (local) or an AMI (aws).")
@click.option("--builder", type=click.Choice(["podman", "packer", "imagebuilder"]),
              help="How: podman (local); packer or imagebuilder (aws; default aws.builder in bakery.yml, else packer).")
@click.option("--no-cache", is_flag=True, help="Run every role again, ignoring cached layers.")
@click.option("--keep-on-failure", is_flag=True, help="Keep the build container when the bake fails, for inspection.")
@click.option("-e", "--extra-var", "extra_vars", multiple=True, metavar="KEY=VALUE", help="Extra variable for the bake (part of the cache key).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def build(obj: Context, image: str, target: str, builder: str | None, no_cache: bool, keep_on_failure: bool,
          extra_vars: tuple[str, ...], as_json: bool) -> None:
    """Bake IMAGE from playbooks/IMAGE.yml into a new image version.

    Example: ./bake.py build webapp
    """
    from bakery.builders import builder_for
    from bakery.builders.base import BuildOptions
    from bakery.config import parse_extra_vars
    from bakery.progress import make_progress
    from bakery.runs import Run

    definition = obj.project.image(image)
    options = BuildOptions(no_cache=no_cache, keep_on_failure=keep_on_failure, extra_vars=parse_extra_vars(extra_vars))
    progress = make_progress(quiet=as_json)
    run = Run.start(obj.project.state_dir, "build")
    chosen = builder_for(target, builder, obj.project.aws.builder if target == "aws" else None)(obj.project, obj.catalog, progress)
    try:
        result = chosen.build(definition, options, run)
    except BaseException as exc:
        run.write_result({"status": "failed", "image": image, "error": str(exc)})
        raise
    finally:
        progress.close()
    data = result.to_dict()
    data["status"] = "reused" if result.reused else "built"
    run.write_result(data)
    if as_json:
        emit_json(data)
    else:
        ran = sum(1 for layer in result.layers if not layer.cached)
        verb = "reused" if result.reused else "built"
        click.echo(f"{verb} {result.ref} in {result.seconds:.1f} s ({ran} of {len(result.layers)} roles ran; run {result.run_id})")


@cli.command()
@click.argument("ref", metavar="IMAGE[:VERSION]")
@click.option("--env", "env_name", metavar="ENV", help="Mount this environment's runtime config, as its launches will.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def verify(obj: Context, ref: str, env_name: str | None, as_json: bool) -> None:
    """Verify an image version on throwaway instances (default: the newest): boot, testinfra, offline boot, secrets, packages.

    Example: ./bake.py verify webapp --env qa
    """
    from bakery.errors import OperationError
    from bakery.progress import make_progress
    from bakery.verify import verify_image

    name, version = parse_image_ref(ref)
    obj.project.image(name)
    progress = make_progress(quiet=as_json)
    try:
        result = verify_image(obj.project, obj.catalog, progress, name, version, env_name)
    finally:
        progress.close()
    if as_json:
        emit_json(result.to_dict())
    elif result.passed:
        click.echo(f"PASSED {name}:{result.version} in {result.seconds:.1f} s (report {result.reports['junit']})")
    if not result.passed:
        raise OperationError(f"verification of {name}:{result.version} failed: {result.summary} (report {result.reports['junit']})")


@cli.command()
@click.argument("image", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_ctx
def images(obj: Context, image: str | None, as_json: bool) -> None:
    """List image versions, newest first.

    Example: ./bake.py images webapp
    """
    if image:
        obj.project.image(image)  # unknown names fail clearly
    rows = obj.catalog.versions(image, status=None)
    if as_json:
        emit_json([{k: r[k] for k in ("image", "version", "status", "created", "git_commit", "image_ref")} for r in rows])
        return
    if not rows:
        click.echo("no image versions yet; bake one with: ./bake.py build IMAGE")
        return
    click.echo(f"{'IMAGE':<20} {'VERSION':<14} {'CREATED':<21} {'COMMIT':<12} STATUS")
    for r in rows:
        click.echo(f"{r['image']:<20} {r['version']:<14} {r['created']:<21} {(r['git_commit'] or '-')[:12]:<12} {r['status']}")


@cli.command()
@click.argument("ref", metavar="IMAGE[:VERSION]")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_ctx
def show(obj: Context, ref: str, as_json: bool) -> None:
    """Show one version's provenance and per-role layer digests (default: the newest).

    Example: ./bake.py show webapp:20261128.001
    """
    name, version = parse_image_ref(ref)
    if version is None:
        rows = obj.catalog.versions(name)
        if not rows:
            raise ConfigError(f"image '{name}' has no versions; bake one with: ./bake.py build {name}")
        version = rows[0]["version"]
    record = obj.catalog.version(name, version)
    if record is None:
        raise ConfigError(f"unknown version '{name}:{version}'; list versions with: ./bake.py images {name}")
    record["verifications"] = obj.catalog.verifications(name, version)
    if as_json:
        emit_json(record)
        return
    click.echo(f"{name}:{version}  ({record['status']}, {record['image_ref']})")
    for key, value in (record.get("provenance") or {}).items():
        if key != "roles":
            click.echo(f"  {key:<15} {value}")
    click.echo("  layers:")
    for layer in record["layers"]:
        click.echo(f"    {layer['position'] + 1}. {layer['role']:<20} role {layer['role_digest'][:19]}  layer {layer['layer_key'][:19]}"
                   f"  {'cached' if layer['cached'] else 'baked'}")
    click.echo("  verifications:" if record["verifications"] else f"  verifications: none (run: ./bake.py verify {name}:{version})")
    for v in record["verifications"]:
        click.echo(f"    {v['started']}  {'PASSED' if v['passed'] else 'FAILED'}  {v['seconds']:.1f} s  env {v['env'] or '-'}  "
                   f"{v['summary'][:100]}  ({v['reports'].get('junit', '')})")


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_ctx
def gc(obj: Context, dry_run: bool, as_json: bool) -> None:
    """Remove what dead bakes left behind: build containers, unfinished versions, generated playbooks.

    Example: ./bake.py gc --dry-run
    """
    from bakery import leftovers, podman

    podman.check_working()
    found = leftovers.find(obj.project, obj.catalog)
    if not dry_run:
        leftovers.remove(found, obj.catalog)
    data = {"dry_run": dry_run, "containers": found.containers, "pending_versions": found.pending_versions,
            "playbooks": found.playbooks}
    if as_json:
        emit_json(data)
        return
    verb = "would remove" if dry_run else "removed"
    if found.empty():
        click.echo("nothing to remove")
    for kind in ("containers", "pending_versions", "playbooks"):
        for item in data[kind]:
            click.echo(f"{verb} {kind.rstrip('s').replace('_', ' ')} {item}")


register_fleet_commands(cli)
register_observe_commands(cli)
register_pipeline_commands(cli)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn bakery errors into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="bake.py", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("bake.py: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except BakeryError as exc:
        if debug:
            raise
        click.echo(f"bake.py: error: {exc}", err=True)
        return exc.exit_code
    except (Interrupted, KeyboardInterrupt) as exc:
        if debug:
            raise
        click.echo(f"bake.py: {exc or 'interrupted'}; cleaned up", err=True)
        return Interrupted.exit_code
    except Exception as exc:  # noqa: BLE001 - the CLI edge: one line, not a traceback
        if debug:
            raise
        click.echo(f"bake.py: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        return 1
    return 0
