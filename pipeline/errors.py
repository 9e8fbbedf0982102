"""The one exception type a stage raises for bad input, and the one way it warns: both name the file, key or
value at fault."""

import errno
import shutil
import sys
from pathlib import Path


class PipelineError(Exception):
    """Bad input or configuration; the message says what and where. Stages exit with it, writing nothing."""


def warn(msg: str) -> None:
    """A warning on stderr: the stage goes on."""
    print(f"warning: {msg}", file=sys.stderr)


def space(folder: Path) -> int:
    """Free bytes where `folder` (or its nearest existing parent) lives."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def out_of_space(e: BaseException) -> bool:
    """Is this a full disk (or an exhausted quota)?"""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def no_space_error(folder: Path, what: str) -> PipelineError:
    """The message a full disk ends a stage with, instead of a traceback."""
    return PipelineError(
        f"{folder}: no space left on the device while writing {what}; nothing was replaced and the partial files "
        "are gone: free space and rerun"
    )


def check_space(folder: Path, need: int, what: str, hint: str = "") -> None:
    """Stop before writing when `need` bytes will not fit where `folder` lives."""
    free = space(folder)
    if need > free:
        raise PipelineError(
            f"{folder}: {what} needs {need:,} bytes ({need / 2**30:.2f} GiB), {free:,} are free "
            f"({free / 2**30:.2f} GiB): free space{hint}"
        )
