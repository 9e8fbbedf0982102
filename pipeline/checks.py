"""The checks params sections are built from: each key's default, check and why, declared once as a dataclass field
(`param`), and `check_section`, which fills defaults and names the key and value at fault."""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable
from dataclasses import MISSING, field, fields
from typing import Any

from pipeline.errors import PipelineError


# --- small checkers: each returns the (possibly converted) value or raises ValueError with the reason ---
def is_int(lo: int | None = None, hi: int | None = None, none_ok: bool = False) -> Callable[[Any], Any]:
    """A check: an integer within [lo, hi] (None where none_ok)."""

    def check(v):
        if v is None and none_ok:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer{' or null' if none_ok else ''}")
        if lo is not None and v < lo or hi is not None and v > hi:
            raise ValueError(f"must be in [{lo}, {hi if hi is not None else '∞'}]")
        return v

    return check


def as_number(v: Any) -> Any:
    """YAML 1.1 (PyYAML) reads `1e-3` as text: a string that is a plain decimal or exponent number is that number."""
    if isinstance(v, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", v):
        return float(v)
    return v


def is_float(lo: float, hi: float, open_: bool = True) -> Callable[[Any], Any]:
    """A check: a number within (lo, hi), or [lo, hi] where not open_."""

    def check(v):
        v = as_number(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("expected a number, e.g. 0.001 or 1.0e-3")
        ok = lo < v < hi if open_ else lo <= v <= hi
        if not ok:
            raise ValueError(f"must be in {'(' if open_ else '['}{lo}, {hi}{')' if open_ else ']'}")
        return float(v)

    return check


def one_of(*choices: Any) -> Callable[[Any], Any]:
    """A check: one of the given choices."""

    def check(v):
        if v not in choices:
            near = difflib.get_close_matches(str(v), [str(c) for c in choices], n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ValueError(f"must be one of {', '.join(map(str, choices))}{hint}")
        return v

    check.choices = choices  # what a command line offers for the key (bench.fast_recipe --precision)
    return check


def is_str(none_ok: bool = False) -> Callable[[Any], Any]:
    """A check: a non-empty string (None where none_ok)."""

    def check(v):
        if v is None and none_ok:
            return None
        if not isinstance(v, str) or not v:
            raise ValueError(f"expected a non-empty string{' or null' if none_ok else ''}")
        return v

    return check


def is_bool(v):
    """A check: true or false."""
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def param(default: Any, check: Callable[[Any], Any], why: str = "") -> Any:
    """One params key, declared once: its default, its check (value -> the checked value, or ValueError saying why
    not) and a line on why it exists. A dataclass field whose metadata `check_section` reads."""
    meta = {"check": check, "why": why}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def schema_of(cls) -> dict[str, tuple[Any, Callable[[Any], Any]]]:
    """key -> (default, check) of a params dataclass, in declaration order (fields without a check are resolved by
    the stage, not read from params.yaml)."""
    out = {}
    for f in fields(cls):
        if "check" not in f.metadata:
            continue
        default = f.default_factory() if f.default is MISSING else f.default
        out[f.name] = (default, f.metadata["check"])
    return out


def check_section(section: dict | None, schema: dict, where: str) -> dict:
    """Fill defaults and check every key of one params section; unknown keys are errors with suggestions."""
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise PipelineError(f"params.yaml: `{where}` must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - set(schema))
    if unknown:
        k = unknown[0]
        near = difflib.get_close_matches(str(k), list(schema), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise PipelineError(f"params.yaml: unknown key `{where}.{k}`{hint}; valid keys: {', '.join(sorted(schema))}")
    out = {}
    for key, (default, check) in schema.items():
        value = section.get(key, default)
        try:
            out[key] = check(value)
        except ValueError as e:
            raise PipelineError(f"params.yaml: `{where}.{key}` = {value!r}: {e}") from None
    return out


def is_dict(v):
    """A check: a mapping (null reads as {})."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError("expected a mapping")
    return v
