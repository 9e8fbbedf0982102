"""The one exception type a stage raises for bad input, and the one way it warns: both name the file, key or
value at fault."""

import sys


class PipelineError(Exception):
    """Bad input or configuration; the message says what and where. Stages exit with it, writing nothing."""


def warn(msg: str) -> None:
    """A warning on stderr: the stage goes on."""
    print(f"warning: {msg}", file=sys.stderr)
