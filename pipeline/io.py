"""Whole-or-nothing outputs: write into temporary siblings, then swap them all in at the end.

A staging folder is named `.<output>.tmp-<pid>-<random>`; .dvcignore and .gitignore skip such names, so a
folder left by a killed run never enters a dependency hash or a commit, and the next run of the same output
removes the ones whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_leftovers(out: Path) -> list[Path]:
    """Remove the staging folders of `out` that a killed run left behind (their process is gone)."""
    removed = []
    if not out.parent.is_dir():
        return removed
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.tmp-(?:(\d+)-)?")
    for p in out.parent.iterdir():
        m = pattern.match(p.name)
        if m and p.is_dir() and (m.group(1) is None or not _alive(int(m.group(1)))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def staged(*outs: Path) -> Iterator[list[Path]]:
    """Yield a temporary path per output (a folder; for a path with a suffix, a file path in a folder).

    On success each temporary replaces its output; on any error the outputs are left as they were.
    """
    tmps, tmp_dirs = [], []
    try:
        for out in outs:
            out.parent.mkdir(parents=True, exist_ok=True)
            remove_leftovers(out)
            d = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
            d.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary folders
            tmp_dirs.append(d)
            tmps.append(d / out.name if out.suffix else d)
        yield tmps
        for out, tmp in zip(outs, tmps):
            if not tmp.exists():
                raise FileNotFoundError(f"{out}: the stage did not write it")
        for out, tmp in zip(outs, tmps):
            _remove(out)
            tmp.rename(out)
    finally:
        for d in tmp_dirs:
            shutil.rmtree(d, ignore_errors=True)
