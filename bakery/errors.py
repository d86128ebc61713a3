"""One exception root carrying an exit code, converted to a message at the CLI edge."""


class BakeryError(Exception):
    """Base of every error bakery reports to a user: one line, one exit code."""

    exit_code = 1


class ConfigError(BakeryError):
    """Bad usage or configuration: the user must change a file, a flag or the host."""

    exit_code = 2


class OperationError(BakeryError):
    """An operation ran and failed (a bake, a verification, a deploy)."""

    exit_code = 1


class Interrupted(BaseException):
    """Raised on SIGINT/SIGTERM so that every `finally` cleans up before exit.

    A BaseException, like KeyboardInterrupt, so broad `except Exception` blocks
    do not swallow it.
    """

    exit_code = 130
