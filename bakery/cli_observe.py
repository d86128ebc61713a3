"""bake.py's observe commands (filled in by the issue that adds them).

bakery.cli calls register(cli). Only click and the standard library are imported
here at load time (the library is imported inside each command).
"""

from __future__ import annotations

import click

COMMANDS: tuple[click.Command, ...] = ()


def register(group: click.Group) -> None:
    """Add this module's commands to bake.py's command group."""
    for command in COMMANDS:
        group.add_command(command)
