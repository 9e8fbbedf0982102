"""Command `python -m pipeline.commands.docs` (`make docs`): rewrite the measured figures of README.md and
docs/*.md from the committed result files; `--check` writes nothing and exits 1 with a diff where a doc would change.

Prose stays hand-written; each number that reports a measurement sits behind a marker, an HTML comment (invisible
in rendered Markdown) naming where it comes from:

- `<!--f FILE:KEYPATH:FORMAT-->VALUE`: VALUE, the number right after the comment, is rewritten (units such as
  ` %`, `x`, ` s` stay outside, as prose). FILE is relative to the project root (`metrics/fast.json`). KEYPATH is
  dotted: `test.accuracy`; list items `rows[7].ratio`; keys with dots, colons or spaces quoted,
  `results["fast:28"].ratio`; selectors that survive reordering, `settings[setting=default].test_balanced`.
  Terms may be combined with ` - `, ` + `, ` * `, ` / ` (spaces around; left to right): a term is `FILE:KEYPATH`,
  a KEYPATH of the previous term's file, `max(KEYPATH)` over a `[*]` (every item, or every value of a mapping), or
  a number. FORMAT is a Python format spec (`.2f`, `+.2f`, `d`), after optional prefixes: `%` multiplies by 100
  (0.9402 -> `%.2f` -> 94.02), `~` negates; `_` groups thousands with a space (`_d`: 120 003). A minus is written
  as the old VALUE wrote it (`−` or `-`).
- `<!--include FILE-->` ... `<!--/include-->`: the file's text (the benches write their .md from their .json);
  `FILE#table` its first Markdown table, `FILE#table2` the second.
- `<!--gen NAME-->` ... `<!--/gen-->`: a table computed here. `leaderboard`: reports/leaderboard.md's columns of
  the README for every model and the strategy that wrote the submission (pipeline.inspect.leaderboard, from
  metrics/*.json and ensemble/metrics.json); `schema:top`, `schema:data`, `schema:train`, `schema:ensemble`: every
  params key of the section with its default, its choices and its why (pipeline.params, ensembles.strategies).

A marker naming a missing file or key is an error naming the doc, its line, the file and the key. metrics/*.json
and ensemble/metrics.json are read through pipeline.artifacts (their records' attributes), other result files as
JSON.
Run:    python -m pipeline.commands.docs [--check] [--root .]
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

DOCS = ("README.md", "docs/*.md")
NUMBER = r"[-+−]?\d+(?:,\d{3})*(?: \d{3}(?!\d))*(?:\.\d+)?"
INLINE = re.compile(r"<!--f (?P<body>.*?)-->(?P<value>" + NUMBER + ")?")
BLOCK = re.compile(r"<!--(?P<kind>include|gen) (?P<arg>[^>]*?)-->\n(?P<body>.*?)<!--/(?P=kind)-->", re.S)
STEP = re.compile(
    r'\[(?:(?P<index>\d+)|"(?P<quoted>[^"]*)"|(?P<all>\*)|(?P<field>[^=\]]+)=(?P<match>[^\]]*))\]|\.?(?P<key>[^.\[\]]+)'
)
OPERATOR = re.compile(r" ([-+*/]) ")
FILE_TERM = re.compile(r"(?P<file>[\w./-]+\.(?:json|md)):(?P<path>.+)")
TABLE = re.compile(r"(?:^\|.*\|[ \t]*\n)+", re.M)


class DocsError(Exception):
    """A marker that cannot be resolved: its message names the doc, the line, the file and the key."""


class Sources:
    """The result files, each read once: metrics/*.json and ensemble/metrics.json as records, the rest as JSON."""

    def __init__(self, root: Path):
        self.root, self.cache = root, {}

    def get(self, rel: str) -> Any:
        """The parsed contents of `rel` (relative to the root); FileNotFoundError where it is absent."""
        if rel not in self.cache:
            from pipeline.artifacts import load_ensemble_metrics, load_member_metrics

            p = self.root / rel
            if not p.is_file():
                raise FileNotFoundError(rel)
            if rel == "ensemble/metrics.json":
                self.cache[rel] = load_ensemble_metrics(p)
            elif rel.startswith("metrics/") and rel.endswith(".json"):
                self.cache[rel] = load_member_metrics(p, p.stem)
            else:
                self.cache[rel] = json.loads(p.read_text())
        return self.cache[rel]


def field_of(obj: Any, key: str) -> Any:
    """`obj[key]` of a mapping, `obj.key` of a record; KeyError otherwise."""
    if isinstance(obj, dict):
        return obj[key]
    if dataclasses.is_dataclass(obj) and hasattr(obj, key):
        return getattr(obj, key)
    raise KeyError(key)


def walk(obj: Any, path: str) -> Any:
    """The value at a KEYPATH (module docstring); KeyError/IndexError where a step is missing."""
    pos, spread = 0, False
    while pos < len(path):
        m = STEP.match(path, pos)
        if not m or m.end() == pos:
            raise KeyError(path[pos:])
        pos = m.end()
        if m["all"]:
            obj = list(obj.values()) if isinstance(obj, dict) else list(obj)
            spread = True
            continue
        obj = [one_step(x, m) for x in obj] if spread else one_step(obj, m)
    return obj


def one_step(obj: Any, m: re.Match) -> Any:
    """One KEYPATH step applied to `obj`."""
    if m["index"] is not None:
        return obj[int(m["index"])]
    if m["field"] is not None:
        hits = [x for x in obj if str(field_of(x, m["field"])) == m["match"]]
        if not hits:
            raise KeyError(f"[{m['field']}={m['match']}]")
        return hits[0]
    return field_of(obj, m["quoted"] if m["quoted"] is not None else m["key"])


def term_value(sources: Sources, term: str, last_file: str | None, where: str) -> tuple[float, str | None]:
    """One term of an expression and the file it was read from (a number reads none)."""
    m = FILE_TERM.fullmatch(term)
    file, path = (m["file"], m["path"]) if m else (last_file, term)
    try:
        return float(path), file  # a number (`FILE:1 / KEYPATH` names the file of the terms after it)
    except ValueError:
        pass
    agg = re.fullmatch(r"max\((.*)\)", path)
    if file is None:
        raise DocsError(f"{where}: `{term}` names no file")
    try:
        v = walk(sources.get(file), agg[1] if agg else path)
    except FileNotFoundError:
        raise DocsError(f"{where}: {file} does not exist (key {path})") from None
    except (KeyError, IndexError, TypeError) as e:
        raise DocsError(f"{where}: {file} has no key {path} ({e})") from None
    v = max(v) if agg else v
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise DocsError(f"{where}: {file} key {path} is {v!r}, not a number")
    return float(v), file


def evaluate(sources: Sources, expr: str, where: str) -> float:
    """The value of an expression of terms (module docstring), left to right."""
    parts = OPERATOR.split(expr.strip())
    value, file = term_value(sources, parts[0], None, where)
    for op, term in zip(parts[1::2], parts[2::2], strict=True):
        v, file = term_value(sources, term, file, where)
        value = {"-": value - v, "+": value + v, "*": value * v, "/": value / v if v else float("nan")}[op]
    return value


def formatted(value: float, spec: str, old: str | None) -> str:
    """`value` written by FORMAT (module docstring), with the old VALUE's minus sign."""
    while spec[:1] in ("%", "~"):
        value = value * 100 if spec[0] == "%" else -value
        spec = spec[1:]
    if spec.endswith("d"):
        value = int(round(value))
    text = format(value, spec).replace("_", " ")
    if text.lstrip("+-") and float(text.replace(" ", "").replace(",", "")) == 0 and text.startswith("-"):
        text = text[1:]  # -0.00
    return text.replace("-", "−") if old and "−" in old else text


def rewrite_inline(text: str, sources: Sources, doc: str) -> str:
    """Every inline marker's VALUE recomputed."""

    def one(m: re.Match) -> str:
        where = f"{doc}:{text.count(chr(10), 0, m.start()) + 1}"
        body = m["body"]
        if ":" not in body:
            raise DocsError(f"{where}: marker `{body}` needs FILE:KEYPATH:FORMAT")
        expr, spec = body.rsplit(":", 1)
        try:
            value = formatted(evaluate(sources, expr, where), spec, m["value"])
        except ValueError as e:
            raise DocsError(f"{where}: format `{spec}`: {e}") from None
        return f"<!--f {body}-->{value}"

    return INLINE.sub(one, text)


def included(root: Path, arg: str, where: str) -> str:
    """The text of an `include` block: a file, or its n-th Markdown table (`#table`, `#table2`)."""
    rel, _, part = arg.strip().partition("#")
    p = root / rel
    if not p.is_file():
        raise DocsError(f"{where}: {rel} does not exist")
    text = p.read_text()
    if not part:
        return text
    n = int(part.removeprefix("table") or 1)
    tables = TABLE.findall(text)
    if not part.startswith("table") or len(tables) < n:
        raise DocsError(f"{where}: {rel} has no part #{part}")
    return tables[n - 1]


def generated(root: Path, name: str, where: str) -> str:
    """The text of a `gen` block (module docstring)."""
    if name == "leaderboard":
        return leaderboard_table(root)
    if name.startswith("schema:"):
        try:
            return schema_table(name.removeprefix("schema:"))
        except KeyError:
            pass
    raise DocsError(f"{where}: no generated block `{name}` (leaderboard, schema:top|data|train|ensemble)")


def rewrite_blocks(text: str, root: Path, doc: str) -> str:
    """Every include and gen block's body replaced by its source."""

    def one(m: re.Match) -> str:
        where = f"{doc}:{text.count(chr(10), 0, m.start()) + 1}"
        arg = m["arg"].strip()
        body = included(root, arg, where) if m["kind"] == "include" else generated(root, arg, where)
        body = body if body.endswith("\n") else body + "\n"
        return f"<!--{m['kind']} {arg}-->\n{body}<!--/{m['kind']}-->"

    return BLOCK.sub(one, text)


def regenerate(text: str, root: Path, doc: str, sources: Sources) -> str:
    """One doc's text with every block and inline marker recomputed."""
    return rewrite_inline(rewrite_blocks(text, root, doc), sources, doc)


def doc_files(root: Path) -> list[Path]:
    """README.md and docs/*.md."""
    return [p for pattern in DOCS for p in sorted(root.glob(pattern))]


def run(root: Path, check: bool) -> list[str]:
    """Regenerate every doc (write it unless `check`); the unified diffs of the docs that changed."""
    sources, diffs = Sources(root), []
    for p in doc_files(root):
        rel = p.relative_to(root).as_posix()
        old = p.read_text()
        new = regenerate(old, root, rel, sources)
        if new != old:
            diffs.append("".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), rel, rel)))
            if not check:
                p.write_text(new)
    return diffs


# ------------------------------------------------------------------------------------------------ generated tables

README_COLUMNS = ["model", "top1", "top1_ci95", "valid_top1", "bal_acc", "worst_recall", "nll", "ece"]
README_COLUMNS += ["param_count", "images_seen", "train_s", "weight"]
TOP_WHY = {  # params.yaml's top-level keys: seed and metric are values, the rest sections (pipeline.params.TOP_LEVEL)
    "seed": "one seed for the split, the subsets and training (an entry's own `seed` overrides it)",
    "metric": "what the run is judged by: auto, accuracy, balanced_accuracy, macro_f1 (below)",
    "budget": "the run's training time (`10m`, `90s`, seconds) shared by the entries' `share:` (below); null: own",
    "race": "successive halving over `budget`: `{eta: 3, first: auto}` (below); null: off",
    "data": "the data set and how it is prepared (table below)",
    "train": "the training defaults every `archs` entry inherits (table below)",
    "archs": "one model per key, one DVC stage `train@<key>` each; a value holds `train` keys (or null)",
    "variants": "more models of an entry: `name: {of: <archs key>, <train keys>}`",
    "ensemble": "the ensemble stage (table below)",
}


def leaderboard_table(root: Path) -> str:
    """reports/leaderboard.md's README columns for every model and the strategy that wrote the submission."""
    from pipeline.artifacts import ensemble_metrics_file, load_ensemble_metrics, load_metrics_of, with_snapshots
    from pipeline.inspect.leaderboard import leaderboard
    from pipeline.inspect.tables import markdown_table
    from pipeline.params import load_params, model_names

    models = load_metrics_of(root, with_snapshots(root, model_names(load_params(root / "params.yaml"))))
    rows = leaderboard(models, load_ensemble_metrics(ensemble_metrics_file(root)))
    rows = [r for r in rows if not r["model"].startswith("ensemble:") or "*" in r["model"]]
    return markdown_table(README_COLUMNS, [[r[c] for c in README_COLUMNS] for r in rows])


def yaml_word(v: Any) -> str:
    """A default as params.yaml writes it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


def schema_table(section: str) -> str:
    """Every key of a params section: its default, its choices (where the check lists them) and its why."""
    from pipeline.inspect.tables import markdown_table
    from pipeline.params import TOP_LEVEL, metric_param, seed_param

    if section == "top":
        defaults = {"seed": seed_param({}), "metric": metric_param({}), "budget": None, "race": None}
        cells = [[f"`{k}`", f"`{yaml_word(defaults[k])}`" if k in defaults else "", TOP_WHY[k]] for k in TOP_LEVEL]
        return markdown_table(["key", "default", "what"], cells)
    from pipeline.checks import schema_of

    cls = section_class(section)
    schema, cells = schema_of(cls), []
    for f in dataclasses.fields(cls):
        if f.name not in schema:
            continue
        default, check = schema[f.name]
        choices = ", ".join(yaml_word(c) for c in getattr(check, "choices", ()))
        why = f.metadata["why"].replace("|", "\\|")
        cells.append([f"`{section}.{f.name}`", f"`{yaml_word(default)}`", choices, why])
    return markdown_table(["key", "default", "choices", "what"], cells)


def section_class(section: str) -> type:
    """The dataclass of a params section; KeyError for another name."""
    from ensembles.strategies import EnsembleParams
    from pipeline.params import DataParams, TrainSpec

    return {"data": DataParams, "train": TrainSpec, "ensemble": EnsembleParams}[section]


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.commands.docs [--check]`: 0 when nothing changed (or it was written), 1 when `--check`
    finds a doc that regeneration would change, 2 on a marker that cannot be resolved."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.commands.docs", description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 with a diff where a doc would change")
    ap.add_argument("--root", type=Path, default=Path("."), help="the project root (default: .)")
    args = ap.parse_args(argv)
    try:
        diffs = run(args.root, args.check)
    except DocsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for d in diffs:
        print(d, end="")
    if diffs and args.check:
        print(f"{len(diffs)} doc(s) differ from their sources: run `make docs` and commit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
