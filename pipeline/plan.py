"""Stage `plan`: the training seconds each model gets, from params.yaml's `budget` and `race`.

- `budget: null` (the default) keeps every entry's own recipe: its `epochs`, `train_limit`, `time_budget`.
- `budget: 10m` is the run's training time, shared among the `archs` and `variants` entries in proportion to their
  `share:` (default 1). Each share becomes the entry's `time_budget`: pipeline.learn.recipe.budget_recipe times the
  first batches and picks the epochs (and, where whole epochs miss, a stratified `train_limit`) that fill it, so
  every row of the leaderboard is at a stated cost.
- `race: {eta: 3, first: auto}` spends the same total by successive halving: every entry trains for `first`
  seconds (its train stage, rung 0), then the race stage (pipeline.race) keeps the best 1/eta still level with
  the best on validation and trains them again with eta x the seconds, until the total is spent.

Reads:  params.yaml (`budget`, `race`, `archs`, `variants`, `train`).
Writes: budgets/<name>.json for every model, {"time_budget": seconds or null, "why": ...}. The train stage of
        <name> depends on its own file only: with `budget: null` adding an entry reruns no other, and a new
        `budget` reruns the entries whose seconds changed.
Run:    dvc repro plan    (or: python -m pipeline.plan)
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.checks import as_number, check_section, is_int, param, schema_of
from pipeline.errors import PipelineError
from pipeline.io import staged
from pipeline.params import group_of, load_params, model_names, train_spec

BUDGETS = Path("budgets")
UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def seconds(v, where: str) -> float:
    """`90`, `90s`, `1.5m`, `10min`, `2h` -> seconds (> 0); anything else is an error naming `where`."""
    v = as_number(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v):
        return float(v)
    m = re.fullmatch(r"\s*(\d+\.?\d*|\.\d+)\s*(s|m|min|h)\s*", v) if isinstance(v, str) else None
    if not m or float(m.group(1)) <= 0:
        raise PipelineError(f"params.yaml: `{where}` = {v!r}: expected a time, e.g. 600, 90s, 10m or 1.5h")
    return float(m.group(1)) * UNITS[m.group(2)]


def is_seconds_or_auto(v):
    """A check: `auto` or a time (seconds, or with a unit)."""
    return "auto" if v == "auto" else seconds(v, "race.first")


@dataclass
class RaceParams:
    """`race:` successive halving over the entries (Jamieson & Talwalkar 2016; ASHA in Ray Tune and Optuna)."""

    eta: int = param(3, is_int(lo=2, hi=10), "each rung keeps the best 1/eta and gives them eta x the seconds")
    first: float | str = param(
        "auto", is_seconds_or_auto, "rung 0's seconds per entry; auto: total / (entries x rungs)"
    )


RACE_SCHEMA = schema_of(RaceParams)


def budget_param(params: dict) -> float | None:
    """`budget`: the run's training seconds, or None."""
    v = params.get("budget")
    return None if v is None else seconds(v, "budget")


def race_param(params: dict) -> RaceParams | None:
    """`race`: checked, or None; a race needs the `budget` it spends."""
    v = params.get("race")
    if v is None:
        return None
    if budget_param(params) is None:
        raise PipelineError("params.yaml: `race` spends `budget`, which is null: set one, e.g. `budget: 10m`")
    return RaceParams(**check_section(v if v != {} else {}, RACE_SCHEMA, "race"))


def rungs_for(n: int, eta: int) -> int:
    """Rungs until one entry is left when each keeps the best 1/eta: ceil(log_eta n) + 1."""
    r, left = 1, n
    while left > 1:
        left, r = math.ceil(left / eta), r + 1
    return r


def first_seconds(total: float, n: int, race: RaceParams) -> float:
    """Rung 0's seconds per entry: `first`, or with `auto` the total split equally among the rungs (each rung of
    successive halving costs about the same: n x first)."""
    return float(race.first) if race.first != "auto" else total / (n * rungs_for(n, race.eta))


def entry_budgets(params: dict) -> dict[str, tuple[float | None, str]]:
    """Every model's `time_budget` from the plan, with why: {name: (seconds or None, why)}."""
    names = model_names(params)
    total, race = budget_param(params), race_param(params)
    shares = {n: share_of(params, n) for n in names}
    if total is None:
        given = [n for n, s in shares.items() if s is not None]
        if given:
            raise PipelineError(
                f"params.yaml: `share` of {', '.join(given)} divides `budget`, which is null: set `budget` or drop it"
            )
        return {n: (None, "its own recipe (budget: null)") for n in names}
    own = sorted({w for n in names for w in own_time_budget(params, n)})
    if own:
        raise PipelineError(
            f"params.yaml: {', '.join(f'`{w}.time_budget`' for w in own)} and `budget: {params['budget']}` both set "
            "the time: the total is shared by `share:` (drop time_budget there)"
        )
    if race is not None:
        first = first_seconds(total, len(names), race)
        if first * len(names) > total:
            raise PipelineError(
                f"params.yaml: `race.first` = {first:g} s for {len(names)} entries is more than `budget` "
                f"({total:g} s): lower first or raise budget"
            )
        for n in names:
            spec = train_spec(params, n)
            if spec.folds or spec.refit or spec.snapshots:
                raise PipelineError(
                    f"params.yaml: `{n}` has folds, refit or snapshots, which `race` does not run (a rung trains one "
                    "model per entry): drop them, or `race: null`"
                )
        # the words hold nothing another entry changes: an entry added with `first` written out reruns no other
        return {n: (first, f"race rung 0: {first:.1f} s") for n in names}
    weights = {n: 1.0 if s is None else s for n, s in shares.items()}
    whole = sum(weights.values())
    return {n: (total * w / whole, f"share {w:g} of {whole:g} of budget {total:g} s") for n, w in weights.items()}


def own_time_budget(params: dict, name: str) -> list[str]:
    """Where params.yaml gives this model a `time_budget` of its own: `train`, its entry, its variant."""
    group = group_of(params, name)
    places = {"train": params.get("train") or {}, f"archs.{group}": params["archs"].get(group) or {}}
    if name != group:
        places[f"variants.{name}"] = (params.get("variants") or {}).get(name) or {}
    return [w for w, d in places.items() if d.get("time_budget") is not None]


def share_of(params: dict, name: str) -> float | None:
    """A model's `share:` of `budget` (its variant's, else its entry's), checked; None where neither sets one."""
    variant = (params.get("variants") or {}).get(name) or {}
    entry = params["archs"].get(group_of(params, name)) or {}
    where, v = (
        (f"variants.{name}", variant["share"])
        if "share" in variant
        else (f"archs.{group_of(params, name)}", entry.get("share"))
    )
    if v is None:
        return None
    v = as_number(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise PipelineError(f"params.yaml: `{where}.share` = {v!r}: expected a number > 0 (its part of `budget`)")
    return float(v)


def time_budget_of(params: dict, name: str) -> float | None:
    """The plan's seconds for one model (None: its own recipe)."""
    return entry_budgets(params)[name][0]


def budget_file(root: Path, name: str) -> Path:
    """budgets/<name>.json."""
    return root / BUDGETS / f"{name}.json"


def run(params_file: str | Path = "params.yaml", root: Path = Path(".")) -> dict:
    """Writes budgets/ whole; returns the plan."""
    params = load_params(params_file)
    plan = entry_budgets(params)
    race = race_param(params)
    with staged(root / BUDGETS) as (folder,):
        for name, (secs, why) in plan.items():
            record = {"time_budget": None if secs is None else round(secs, 3), "why": why}
            (folder / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    if budget_param(params) is not None:
        total = budget_param(params)
        how = f"race {asdict(race)}" if race else "shares"
        print(f"plan: budget {total:g} s of training by {how}:")
        for name, (secs, why) in plan.items():
            print(f"  {name}: {secs:.1f} s ({why})")
    return plan


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.plan`: 1 with the error's words on a bad input."""
    try:
        run(*(argv or [])[:1])
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
