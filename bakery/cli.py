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
    click.echo(f"created roles/{name} ({len(created)} files); test it with: cd roles/{name} && molecule test "
               "(molecule comes with bakery's virtual environment: source .venv/bin/activate first)")


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
@click.option("--target", type=click.Choice(["local", "aws"]), default="local", show_default=True,
              help="Read the local catalog, or AMI tags and SSM release parameters in the home region (aws).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_ctx
def images(obj: Context, image: str | None, target: str, as_json: bool) -> None:
    """List image versions, newest first (on aws: with the environments that run each).

    Example: ./bake.py images webapp --target aws
    """
    if image:
        obj.project.image(image)  # unknown names fail clearly
    if target == "aws":
        _images_aws(obj, image, as_json)
        return
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


def _images_aws(obj: Context, image: str | None, as_json: bool) -> None:
    from bakery.aws.catalog_read import aws_images, environment_regions
    from bakery.aws.clients import check_credentials

    check_credentials()
    data = aws_images(obj.project.aws, image, environment_regions(obj.project))
    if as_json:
        emit_json(data)
        return
    if not data["versions"]:
        click.echo(f"no AMIs tagged bakery:managed=true in {data['region']}; bake one with: ./bake.py build IMAGE --target aws")
    else:
        click.echo(f"{'IMAGE':<20} {'VERSION':<14} {'AMI':<22} {'CREATED':<25} {'COMMIT':<12} ENVIRONMENTS")
    for r in data["versions"]:
        state = "" if r["state"] == "available" else f" ({r['state']})"
        click.echo(f"{r['image']:<20} {r['version']:<14} {r['ami_id']:<22} {r['created']:<25} {(r['git_commit'] or '-')[:12]:<12} "
                   f"{', '.join(r['environments']) or '-'}{state}")
    listed = {r["ami_id"] for r in data["versions"]}
    for release in data["releases"]:
        if release["ami_id"] not in listed:
            click.echo(f"{release['env']} runs {release['image']}:{release['version'] or '?'} ({release['ami_id'] or 'no ami-id parameter'}), "
                       f"an AMI not found among the managed AMIs in {data['region']}")


@cli.command()
@click.argument("ref", metavar="IMAGE[:VERSION]")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_ctx
def show(obj: Context, ref: str, as_json: bool) -> None:
    """Show one version's provenance and per-role layer digests (default: the newest).

    Example: ./bake.py show webapp:20261128.001
    """
    name, version = parse_image_ref(ref)
    record = obj.catalog.resolve(name, version, ready_only=False)
    version = record["version"]
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
@click.option("--target", type=click.Choice(["local", "aws"]), default="local", show_default=True,
              help="Clean podman and .bakery/ (local), or AMIs and snapshots in every configured region (aws).")
@click.option("--keep", type=int, metavar="N",
              help="Also remove image versions older than the newest N of each image, except any in use or an environment's "
                   "rollback target (required on aws).")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed, and why the rest is kept.")
@click.option("--include-shared", is_flag=True,
              help="aws: also delete old AMIs other accounts may launch (by default they stay: gc cannot see what those accounts run).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_ctx
def gc(obj: Context, target: str, keep: int | None, dry_run: bool, include_shared: bool, as_json: bool) -> None:
    """Remove what dead bakes left behind; with --keep N, old image versions, their snapshots and stale artifacts too.

    Example: ./bake.py gc --keep 3 --dry-run
    """
    if keep is not None and keep < 1:
        raise ConfigError(f"gc --keep must be at least 1, got {keep}: the newest N versions of each image always stay")
    if target == "aws":
        _gc_aws(obj, keep, dry_run, include_shared, as_json)
        return
    from contextlib import nullcontext

    from bakery import gc_local, leftovers, podman
    from bakery.errors import OperationError

    podman.check_working()
    with nullcontext() if dry_run or not keep else gc_local.environment_locks(obj.project, obj.catalog, "local"):
        found = leftovers.find(obj.project, obj.catalog)
        planned = gc_local.plan(obj.project, obj.catalog, keep) if keep else None
        result = gc_local.GcResult(removed=list(planned.delete), artifacts=list(planned.artifacts)) if planned else gc_local.GcResult()
        if not dry_run:
            leftovers.remove(found, obj.catalog)
            if planned:
                result = gc_local.apply(obj.project, obj.catalog, planned)
    data = {"dry_run": dry_run, "containers": found.containers, "pending_versions": found.pending_versions, "playbooks": found.playbooks,
            "keep": keep, "versions": result.removed, "failed": result.failed, "artifacts": result.artifacts,
            "kept": planned.kept if planned else [], "skipped": result.skipped}
    if as_json:
        emit_json(data)
    else:
        verb = "would remove" if dry_run else "removed"
        if found.empty() and not (result.removed or result.failed or result.artifacts):
            click.echo("nothing to remove")
        for kind in ("containers", "pending_versions", "playbooks"):
            for item in data[kind]:
                click.echo(f"{verb} {kind.rstrip('s').replace('_', ' ')} {item}")
        for entry in result.removed:
            click.echo(f"{verb} version {entry['image']}:{entry['version']} ({entry['reason']})")
        for entry in result.artifacts:
            click.echo(f"{verb} artifact {entry['name']} {entry['version']} ({entry['reason']})")
        for entry in result.skipped:
            click.echo(f"kept version {entry['image']}:{entry['version']} ({entry['reason']})")
        for entry in data["kept"] if dry_run else []:
            click.echo(f"keep version {entry['image']}:{entry['version']}: {'; '.join(entry['reasons'])}")
    if result.failed:
        names = ", ".join(f"{e['image']}:{e['version']}" for e in result.failed)
        raise OperationError(f"podman did not remove {names} (a container may have started to use it); they stay in the catalog")


def _gc_aws(obj: Context, keep: int | None, dry_run: bool, include_shared: bool, as_json: bool) -> None:
    from contextlib import nullcontext

    from bakery import gc_local
    from bakery.aws import gc as aws_gc
    from bakery.aws.catalog_read import environment_regions
    from bakery.aws.clients import check_credentials
    from bakery.errors import OperationError
    from bakery.progress import make_progress

    if keep is None:
        raise ConfigError("gc --target aws deregisters AMIs older than the newest N versions of each image: give --keep N (e.g. --keep 3)")
    check_credentials()
    progress = make_progress(quiet=as_json)
    try:
        with nullcontext() if dry_run else gc_local.environment_locks(obj.project, obj.catalog, "aws"):
            planned = aws_gc.plan(obj.project.aws, keep, progress, environment_regions(obj.project), include_shared=include_shared)
            if not dry_run:
                aws_gc.apply(planned, progress, obj.catalog)
    finally:
        progress.close()
    if as_json:
        emit_json({"target": "aws", "dry_run": dry_run, **planned.to_dict()})
    else:
        verb = "would delete" if dry_run else "deleted"
        if not planned.delete:
            click.echo(f"nothing to delete in {', '.join(planned.regions)}")
        gone = {d["ami_id"] for d in planned.deleted}
        for entry in planned.delete:
            copies = [a for a in entry["amis"] if dry_run or a["ami_id"] in gone]
            where = ", ".join(f"{a['ami_id']} in {a['region']} ({len(a['snapshots'])} snapshots)" for a in copies)
            if copies:
                click.echo(f"{verb} {entry['image']}:{entry['version']}: {where} ({entry['reason']})")
        for entry in planned.kept:
            click.echo(f"keep {entry['image']}:{entry['version']}: {'; '.join(entry['reasons'])}")
        for entry in planned.skipped:
            click.echo(f"kept {entry['ami_id']} in {entry['region']} after all: {'; '.join(entry['reasons'])}")
    if planned.failed:
        first = planned.failed[0]
        raise OperationError(f"{len(planned.failed)} AMI(s) could not be deleted, first {first['ami_id']} in {first['region']}: {first['error']}")


@cli.command()
@click.argument("ref", metavar="IMAGE:VERSION")
@click.option("--regions", metavar="R1,R2", help="Regions to copy the AMI to (default: aws.regions in bakery.yml).")
@click.option("--accounts", metavar="ID1,ID2", help="Accounts given launch permission (default: aws.accounts in bakery.yml).")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600, show_default=True, help="Seconds to wait for copies.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def distribute(obj: Context, ref: str, regions: str | None, accounts: str | None, timeout: float, as_json: bool) -> None:
    """Copy one AMI version to regions (with its tags) and share it, and its snapshots, with accounts. Safe to re-run.

    Example: ./bake.py distribute webapp:20261128.003 --regions eu-west-1,eu-central-1 --accounts 111122223333
    """
    from bakery.aws import distribute as dist
    from bakery.aws.clients import check_credentials
    from bakery.progress import make_progress

    name, version = parse_image_ref(ref)
    if not version:
        raise ConfigError(f"distribute needs IMAGE:VERSION, got '{ref}'; list versions with: ./bake.py images {name} --target aws")
    settings = obj.project.aws
    wanted_regions = dist.parse_regions(regions, settings.regions)
    wanted_accounts = dist.parse_accounts(accounts, settings.accounts)
    obj.project.image(name)
    check_credentials()
    progress = make_progress(quiet=as_json)
    try:
        result = dist.distribute(settings, name, version, wanted_regions, wanted_accounts, progress, timeout=timeout)
    finally:
        progress.close()
    if as_json:
        emit_json(result.to_dict())
        return
    for r in result.regions:
        done = (["copied"] if r.copied else []) + ([f"tagged {len(r.tagged)}"] if r.tagged else [])
        done += [f"launch permission for {', '.join(r.launch_permission_added)}"] if r.launch_permission_added else []
        done += [f"create-volume permission on {len(r.create_volume_permission_added)} snapshots"] if r.create_volume_permission_added else []
        click.echo(f"{r.region}: {r.ami_id} {r.state}; {', '.join(done) or 'already distributed'}")
    click.echo(f"{name}:{version} is in {len(result.regions)} regions, shared with {len(result.accounts)} accounts"
               + ("" if result.changed else " (nothing changed)"))


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
