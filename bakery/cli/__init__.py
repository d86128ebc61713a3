"""bake.py's command line: parse, call into the library, render the result.

The root group and main() live here; each command family is a module of this package
(build, verify, images, gc, fleet, observe, pipeline) that imports only click and
bakery.cli.common at load time. Errors raised by the library carry their exit code;
they are printed here as one line. A traceback is shown only with --debug.
"""

from __future__ import annotations

import sys

import click

from bakery import __version__
from bakery.cli import build, deps, disk, fleet, gc, iam, images, observe, params, pipeline, verify
from bakery.cli.common import Context
from bakery.errors import BakeryError, ConfigError, Interrupted


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--project", metavar="DIR",
              help="Project directory (default: nearest bakery.yml upwards; env BAKERY_PROJECT).")
@click.option("--debug", is_flag=True, help="Show tracebacks and verbose logs.")
@click.version_option(__version__, prog_name="bakery")
@click.pass_context
def cli(ctx: click.Context, project: str | None, debug: bool) -> None:
    """Bake Ansible roles into verified, immutable server images."""
    ctx.obj = Context(project, debug)
    ctx.call_on_close(ctx.obj.close)  # the catalog is closed however the command ends: no -wal/-shm left behind


COMMANDS: tuple[click.Command, ...] = (
    build.base, build.build_app, build.build, build.new_role, build.distribute, disk.disk, verify.verify, images.images,
    images.show, gc.gc, *fleet.COMMANDS, *observe.COMMANDS, pipeline.pipeline, *iam.COMMANDS, *params.COMMANDS,
    deps.deps,
)
for _command in COMMANDS:
    cli.add_command(_command)


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
        click.echo(f"bake.py: error: {_one_line(exc)}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except BakeryError as exc:
        if debug:
            raise
        message = str(exc) if exc.exit_code != ConfigError.exit_code else _escaped(str(exc))
        click.echo(f"bake.py: error: {message}", err=True)
        return exc.exit_code
    except (Interrupted, KeyboardInterrupt) as exc:
        if debug:
            raise
        click.echo(f"bake.py: {exc or 'interrupted'}; cleaned up", err=True)
        return Interrupted.exit_code
    except Exception as exc:  # noqa: BLE001 - the CLI edge: one line, not a traceback
        if debug:
            raise
        from bakery.deps.requirements import redact  # a URL's credentials in an unexpected error stay hidden

        click.echo(f"bake.py: internal error: {redact(f'{type(exc).__name__}: {exc}')} (run with --debug for the "
                   "traceback)", err=True)
        return 1
    return 0


def _escaped(text: str) -> str:
    """Bad input is one line even when it quotes a name with a newline or another control character in it."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_line(exc: click.ClickException) -> str:
    """A usage error as one line (click prints usage, a hint and the error on three), naming where to read more."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f"{ctx.command_path}: {message} (see: {ctx.command_path} --help)"
    return message
