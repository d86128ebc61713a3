"""bake.py base, build-app, build, new-role and distribute: making images and publishing AMIs."""

from __future__ import annotations

import click

from bakery.cli.common import Context, emit_json, parse_image_ref, pass_ctx
from bakery.errors import ConfigError


@click.command()
@click.option("--release", default="bookworm", show_default=True, help="Debian release of the base.")
@click.option("--rebuild", is_flag=True, help="Make a new base even if one exists.")
@click.option("--if-updates", is_flag=True,
              help="Make a new base only when the base's apt sources have newer packages than it, or than the newest "
                   "image on it (what roles installed), has (checked in a throwaway container of the current base); "
                   "else say it is up to date and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def base(obj: Context, release: str, rebuild: bool, if_updates: bool, as_json: bool) -> None:
    """Make the base image (mmdebstrap + podman import), or reuse the newest one.

    Example: ./bake.py base --release bookworm; ./bake.py base --if-updates (a scheduled rebake: see docs/commands.md)
    """
    from bakery import podman
    from bakery.base_image import KNOWN_RELEASES, build_base
    from bakery.base_settings import project_base_settings

    if release not in KNOWN_RELEASES:  # before podman is asked anything
        raise ConfigError(f"--release '{release}' is not a Debian release bakery knows "
                          f"({', '.join(sorted(KNOWN_RELEASES))})")
    if if_updates and rebuild:
        raise ConfigError("--if-updates and --rebuild exclude each other: --rebuild always makes a new base, "
                          "--if-updates only when apt has updates for the current one")
    settings = project_base_settings(obj.project.settings, str(obj.project.root / "bakery.yml"))
    podman.check_working()
    if if_updates:
        _base_if_updates(obj, release, settings, as_json)
        return
    if not as_json:
        click.echo(f"base {release}: looking for an existing base" + (" (rebuild requested)" if rebuild else ""),
                   err=True)
    image = build_base(release, obj.project.state_dir / "tmp", rebuild=rebuild, settings=settings)
    obj.catalog.record_base(image.ref, release, image.digest)
    if as_json:
        emit_json({"ref": image.ref, "digest": image.digest, "release": release, "reused": image.reused,
                   "made": not image.reused})
    else:
        click.echo(f"{'reused' if image.reused else 'built'} {image.ref} ({image.digest})")


def _base_if_updates(obj: Context, release: str, settings, as_json: bool) -> None:
    """Check the current base, and the newest images on it, against the base's apt sources; a new base only when
    something is newer (or none exists)."""
    from dataclasses import asdict

    from bakery.base_image import build_base, find_base
    from bakery.base_updates import check_updates, images_on_base

    current = find_base(release, settings)
    check = None
    if current is not None:
        on_base = images_on_base(obj.catalog, current)
        if not as_json:
            click.echo(f"base {release}: checking {current.ref} and {len(on_base)} images on it for updates "
                       "(apt-get update in a throwaway container)", err=True)
        check = check_updates(current, settings, on_base)
        if check.unchecked and not as_json:
            click.echo(f"not checked (no longer in podman): {', '.join(check.unchecked)}", err=True)
        seen = {"checked": check.checked, "images": check.images, "unchecked": check.unchecked}
        if not check.updates:
            if as_json:
                emit_json({"ref": current.ref, "digest": current.digest, "release": release, "made": False,
                           **seen, "updates": []})
            else:
                also = f", and so are the packages of {', '.join(check.images)}" if check.images else ""
                click.echo(f"base {current.ref}: up to date ({check.checked} packages checked){also}")
            return
    elif not as_json:
        click.echo(f"base {release}: no base yet; making one", err=True)
    updates = [asdict(u) for u in check.updates] if check else []
    image = build_base(release, obj.project.state_dir / "tmp", rebuild=current is not None, settings=settings)
    obj.catalog.record_base(image.ref, release, image.digest, updates=updates if check else None)
    if as_json:
        emit_json({"ref": image.ref, "digest": image.digest, "release": release, "made": not image.reused,
                   "previous": current.ref if current else None, "checked": check.checked if check else 0,
                   "images": check.images if check else [], "unchecked": check.unchecked if check else [],
                   "updates": updates})
        return
    if check is None:
        click.echo(f"built {image.ref} ({image.digest})")
        return
    security = sum(1 for u in check.updates if u.security)
    in_images = f" and {len(check.images)} images on it" if check.images else ""
    click.echo(f"built {image.ref} ({image.digest}) replacing {current.ref if current else '-'}: "
               f"{len(check.updates)} updates ({security} security) of {check.checked} packages{in_images}")
    for update in check.updates:
        click.echo(f"  {update.text()}")
    click.echo("the next build re-bakes every layer on it: ./bake.py build IMAGE")


@click.command("build-app")
@click.option("--source", default="app", show_default=True, metavar="DIR",
              help="Application source directory (relative to the project).")
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
        click.echo(f"artifact {artifact.name} {artifact.version} sha256:{artifact.sha256.removeprefix('sha256:')} "
                   f"({artifact.path})")


@click.command("new-role")
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


@click.command()
@click.argument("image")
@click.option("--target", type=click.Choice(["local", "aws"]), default="local", show_default=True,
              help="Where the image is baked: a podman image (local) or an AMI (aws).")
@click.option("--builder", type=click.Choice(["podman", "packer", "imagebuilder", "disk"]),
              help="How: podman (local); packer, imagebuilder or disk (aws; default aws.builder in bakery.yml, else "
                   "packer). disk publishes the local version's verified disk as the AMI (EBS direct APIs).")
@click.option("--no-cache", is_flag=True, help="Run every role again, ignoring cached layers.")
@click.option("--keep-on-failure", is_flag=True, help="Keep the build container when the bake fails, for inspection.")
@click.option("-e", "--extra-var", "extra_vars", multiple=True, metavar="KEY=VALUE",
              help="Extra variable for the bake (part of the cache key).")
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
    builder_class = builder_for(target, builder, obj.project.aws.builder if target == "aws" else None)
    progress = make_progress(quiet=as_json)
    run = Run.start(obj.project.state_dir, "build")  # only once every argument passed
    chosen = builder_class(obj.project, obj.catalog, progress)
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
        click.echo(f"{verb} {result.ref} in {result.seconds:.1f} s "
                   f"({ran} of {len(result.layers)} roles ran; run {result.run_id})")


@click.command()
@click.argument("ref", metavar="IMAGE:VERSION")
@click.option("--regions", metavar="R1,R2", help="Regions to copy the AMI to (default: aws.regions in bakery.yml).")
@click.option("--accounts", metavar="ID1,ID2",
              help="Accounts given launch permission (default: aws.accounts in bakery.yml).")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600, show_default=True,
              help="Seconds to wait for copies.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def distribute(obj: Context, ref: str, regions: str | None, accounts: str | None, timeout: float,
               as_json: bool) -> None:
    """Copy one AMI version to regions (with its tags) and share it, and its snapshots, with accounts. Safe to re-run.

    Example: ./bake.py distribute webapp:20261128.003 --regions eu-west-1,eu-central-1 --accounts 111122223333
    """
    from bakery.aws import distribute as dist
    from bakery.aws.clients import check_credentials
    from bakery.progress import make_progress
    from bakery.runs import Run

    name, version = parse_image_ref(ref)
    if not version:
        raise ConfigError(f"distribute needs IMAGE:VERSION, got '{ref}'; "
                          f"list versions with: ./bake.py images {name} --target aws")
    settings = obj.project.aws
    wanted_regions = dist.parse_regions(regions, settings.regions)
    wanted_accounts = dist.parse_accounts(accounts, settings.accounts)
    obj.project.image(name)
    check_credentials()
    progress = make_progress(quiet=as_json)
    run = Run.start(obj.project.state_dir, "distribute")  # its id makes this run's copy requests its own
    try:
        result = dist.distribute(settings, name, version, wanted_regions, wanted_accounts, progress, timeout=timeout,
                                 run_id=run.id)
    finally:
        progress.close()
    run.write_result(result.to_dict())
    if as_json:
        emit_json(result.to_dict())
        result.fail_if_unshared()
        return
    for r in result.regions:
        done = (["copied"] if r.copied else []) + ([f"tagged {len(r.tagged)}"] if r.tagged else [])
        done += ["not shared"] if r.why else []
        done += [f"verification recorded ({r.record})"] if r.record_written else []
        done += [f"launch permission for {', '.join(r.launch_permission_added)}"] if r.launch_permission_added else []
        done += ([f"create-volume permission on {len(r.create_volume_permission_added)} snapshots"]
                 if r.create_volume_permission_added else [])
        click.echo(f"{r.region}: {r.ami_id} {r.state}; {', '.join(done) or 'already distributed'}")
    click.echo(f"{name}:{version} is in {len(result.regions)} regions, shared with {len(result.accounts)} accounts"
               + ("" if result.changed else " (nothing changed)"))
    result.fail_if_unshared()
