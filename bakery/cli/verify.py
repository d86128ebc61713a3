"""bake.py verify: the gate every version passes before it may be deployed."""

from __future__ import annotations

import click

from bakery.cli.common import Context, emit_json, load_env, parse_image_ref, pass_ctx


@click.command()
@click.argument("ref", metavar="IMAGE[:VERSION]")
@click.option("--env", "env_name", metavar="ENV", help="Mount this environment's runtime config, as its launches will.")
@click.option("--vm", is_flag=True, help="Boot the version's bootable disk as a UEFI virtual machine (qemu; the disk "
              "is built first when missing) instead of container instances.")
@click.option("--target", type=click.Choice(["local", "aws"]), default="local", show_default=True,
              help="local: the catalog's version; aws: the version's AMI, read back from its root snapshot, scanned "
                   "for secrets and booted as a VM (--vm is implied).")
@click.option("--region", metavar="REGION", help="aws: the AMI's region (default: the environment's, else aws.region).")
@click.option("--keep-disk", is_flag=True, help="aws: keep the read-back disk under .bakery/disks/ for inspection.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def verify(obj: Context, ref: str, env_name: str | None, vm: bool, target: str, region: str | None, keep_disk: bool,
           as_json: bool) -> None:
    """Verify an image version on throwaway instances (default: the newest):
    boot, testinfra, offline boot, secrets, packages. With --vm: the same on its bootable disk in a VM, plus
    what only a kernel shows (sysctls in effect, audit immutable, AppArmor, modules, partitions, time sync).
    With --target aws: the AMI's own bytes through the same scan and VM boot, before it is shared or deployed.

    Example: ./bake.py verify webapp --env qa --vm
    """
    from bakery.errors import ConfigError, OperationError
    from bakery.progress import make_progress
    from bakery.verify.runner import verify_image

    name, version = parse_image_ref(ref)
    obj.project.image(name)
    if target != "aws" and (region or keep_disk):
        raise ConfigError(f"{'--region' if region else '--keep-disk'} applies to verify --target aws only")
    if env_name is not None and target == "local":
        load_env(obj, env_name)
    if target == "local":
        obj.catalog.resolve(name, version)  # every argument is checked before the run directory is made
    progress = make_progress(quiet=as_json)
    try:
        if target == "aws":
            from bakery.verify.aws_readback import verify_ami_image

            result = verify_ami_image(obj.project, obj.catalog, progress, name, version, env_name=env_name,
                                      region=region, keep_disk=keep_disk)
        elif vm:
            from bakery.verify.vm import verify_vm_image

            result = verify_vm_image(obj.project, obj.catalog, progress, name, version, env_name)
        else:
            result = verify_image(obj.project, obj.catalog, progress, name, version, env_name)
    finally:
        progress.close()
    if as_json:
        emit_json(result.to_dict())
    elif result.passed:
        click.echo(f"PASSED {name}:{result.version} in {result.seconds:.1f} s (report {result.reports['junit']})")
    if not result.passed:
        raise OperationError(f"verification of {name}:{result.version} failed: {result.summary} "
                             f"(report {result.reports['junit']})")
