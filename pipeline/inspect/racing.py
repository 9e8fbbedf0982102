"""The budget and the race in the report: what the plan gave each model (budgets/), and the race's table
(race/race.json): each entry's validation score per rung, where it stopped and why."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.inspect.scores import METRIC_WORDS


def read_json(f: Path) -> dict | None:
    """A JSON file, None where absent; unreadable is an error naming it."""
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError as e:
        raise PipelineError(f"{f}: not valid JSON ({e}); rerun its stage (`dvc repro`)") from e


def plan_md(root: Path) -> str:
    """One paragraph: the seconds `budget` gave each model, where it set them (budgets/<name>.json)."""
    folder = root / "budgets"
    plans = {f.stem: read_json(f) for f in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
    given = {n: p for n, p in plans.items() if p and p.get("time_budget") is not None}
    if not given:
        return ""
    whys = {p["why"] for p in given.values()}
    if len(whys) == 1 and len({p["time_budget"] for p in given.values()}) == 1:
        secs = next(iter(given.values()))["time_budget"]
        each = f"{secs:.1f} s each ({whys.pop()})"
    else:
        each = "; ".join(f"{n} {p['time_budget']:.1f} s ({p['why']})" for n, p in given.items())
    return (
        f"Budget (params.yaml `budget`): the plan gave every model its training seconds, {each}; "
        "`time_budget` chose its epochs (metrics/<name>.json `time_budget`), train_s is what it spent.\n\n"
    )


def race_md(record: dict | None) -> str:
    """The race's table: one row per entry, its validation score at each rung it ran, and where it stopped."""
    if not record or not record.get("race"):
        return ""
    cfg, rungs = record["race"], record["rungs"]
    words = METRIC_WORDS.get(record["metric"], record["metric"])
    head = ["entry"] + [f"rung {r['rung']} ({r['seconds']:.0f} s)" for r in rungs] + ["outcome"]
    lines = [
        f"Race (successive halving, params.yaml `race`): eta {cfg['eta']}, rung 0 {cfg['first_s']:.1f} s per "
        f"entry, budget {cfg['budget_s']:.0f} s ({record['planned_s']:.0f} s planned); validation {words} per rung, "
        "every run a model of its own (<entry>@r<rung>) the ensemble considers.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in rungs[0]["runs"]:
        cells, outcome = [], ""
        for r in rungs:
            run = r["runs"].get(name)
            cells.append(f"{100 * run['score']:.2f}" if run else "")
            if run and name in r["stopped"]:
                outcome = f"stopped after rung {r['rung']}: {r['stopped'][name]}"
        if not outcome:
            ended = rungs[-1].get("ended", "")
            ran = "ran the last rung" if "left:" not in ended else "kept, no rung left to run"
            outcome = f"{ran}: {ended}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {outcome} |")
    return "\n".join(lines) + "\n\n"
