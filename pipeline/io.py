"""Whole-or-nothing outputs: write into temporary siblings, then swap them all in at the end."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextlib.contextmanager
def staged(*outs: Path) -> Iterator[list[Path]]:
    """Yield a temporary path per output (a folder; for a path with a suffix, a file path in a folder).

    On success each temporary replaces its output; on any error the outputs are left as they were.
    """
    tmps, tmp_dirs = [], []
    try:
        for out in outs:
            out.parent.mkdir(parents=True, exist_ok=True)
            d = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
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
