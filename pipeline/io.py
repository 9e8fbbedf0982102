"""How the stages write: whole-or-nothing outputs, and the JSON records their files are made of.

`staged`: write into temporary siblings, then swap them all in at the end.

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
import types
import typing
from collections.abc import Iterator
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, Self, get_args, get_origin, get_type_hints

from pipeline.errors import PipelineError, no_space_error, out_of_space


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

    On success each temporary replaces its output (a file atomically); on any error the outputs are left as they
    were, and a full disk (ENOSPC) becomes a PipelineError naming the folder and the free bytes.
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
        try:
            yield tmps
            for out, tmp in zip(outs, tmps):
                if not tmp.exists():
                    raise FileNotFoundError(f"{out}: the stage did not write it")
            for out, tmp in zip(outs, tmps):
                if tmp.is_file() and not out.is_dir():
                    tmp.replace(out)  # one file: an atomic swap
                else:
                    _remove(out)
                    tmp.rename(out)
        except Exception as e:
            # a full disk, anywhere inside (safetensors raises its own type, saying the OS's words): a message
            if out_of_space(e) or "No space left on device" in str(e):
                raise no_space_error(outs[0].parent, ", ".join(o.name for o in outs)) from e
            raise
    finally:
        for d in tmp_dirs:
            shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ JSON records
def opt(default: Any = None) -> Any:
    """A field written only while set: absent from the file when None (a key that only some runs have)."""
    return field(default=default, metadata={"omit": True})


class Record:
    """A dataclass that is one JSON object (see the module's docstring)."""

    @classmethod
    def from_json(cls, data: Any, where: str = "", strict: bool = False) -> Self:
        """The record of a JSON object; `where` names the file in errors; `strict` refuses unknown keys."""
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise PipelineError(f"{where}: expected an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if strict and (extra := sorted(set(data) - known)):
            raise PipelineError(f"{where}: `{extra[0]}` is not a field of {cls.__name__}")
        hints = get_type_hints(cls)
        kw = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                kw[f.name] = _convert(hints[f.name], data[f.name], f"{where}: `{f.name}`", strict)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise PipelineError(f"{where}: no `{f.name}` key (written by another version?)")
        return cls(**kw)

    def to_json(self) -> dict:
        """The record as a JSON object, in field order (unset `opt` fields left out)."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None and f.metadata.get("omit"):
                continue
            out[f.name] = _plain(v)
        return out


def _convert(tp: Any, v: Any, where: str, strict: bool) -> Any:
    if v is None:
        return None
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _convert(args[0], v, where, strict) if len(args) == 1 else v
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_json(v, where, strict)
    if origin is list and isinstance(v, list):
        return [_convert(get_args(tp)[0], x, f"{where}[{i}]", strict) for i, x in enumerate(v)]
    if origin is dict and isinstance(v, dict):
        return {k: _convert(get_args(tp)[1], x, f"{where}.{k}", strict) for k, x in v.items()}
    if origin in (list, dict) or tp in (int, float, str, bool):
        ok = {list: list, dict: dict, int: int, float: (int, float), str: str, bool: bool}[origin or tp]
        if not isinstance(v, ok) or (tp in (int, float) and isinstance(v, bool)):
            raise PipelineError(f"{where}: {v!r} is not a {getattr(origin or tp, '__name__', tp)}")
    return v


def _plain(v: Any) -> Any:
    if isinstance(v, Record):
        return v.to_json()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v
