"""`budget:` shared by `share:` (pipeline.plan), the race's rules and stage (pipeline.race), and the report's race
table (pipeline.inspect.racing)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.inspect.racing import plan_md, race_md
from pipeline.plan import entry_budgets, first_seconds, race_param, rungs_for, seconds
from pipeline.race import next_seconds, survivors_of
from tests.conftest import onehot

ARCHS = {"logreg": {"epochs": 2}, "mlp": {}, "fast": {"arch": "resnet9"}}


def params(**top):
    return {"seed": 0, "train": {}, "archs": {k: dict(v) for k, v in ARCHS.items()}, "variants": {}, **top}


@pytest.mark.parametrize("v, s", [(600, 600.0), ("10m", 600.0), ("90s", 90.0), ("1.5h", 5400.0), ("10min", 600.0)])
def test_seconds_reads_units(v, s):
    assert seconds(v, "budget") == s


@pytest.mark.parametrize("v", ["ten minutes", "0s", -5, True, "10 parsecs", float("inf")])
def test_a_bad_time_names_the_key(v):
    with pytest.raises(PipelineError, match="`budget` = "):
        entry_budgets(params(budget=v))


def test_budget_null_keeps_every_recipe():
    assert {n: b for n, (b, _) in entry_budgets(params()).items()} == dict.fromkeys(ARCHS)


def test_budget_shared_equally_and_by_share_and_variants_count():
    p = params(budget="9m")
    assert [b for b, _ in entry_budgets(p).values()] == [180.0, 180.0, 180.0]
    p["archs"]["fast"]["share"] = 2
    p["variants"] = {"fast-s1": {"of": "fast", "seed": 1}}  # a variant inherits its entry's share
    got = {n: b for n, (b, _) in entry_budgets(p).items()}
    assert got == {"logreg": 90.0, "mlp": 90.0, "fast": 180.0, "fast-s1": 180.0}
    assert sum(got.values()) == 540.0


def test_share_without_budget_or_with_own_time_budget_is_an_error():
    p = params()
    p["archs"]["mlp"]["share"] = 2
    with pytest.raises(PipelineError, match="mlp.*`budget`, which is null"):
        entry_budgets(p)
    p = params(budget="5m")
    p["archs"]["fast"]["time_budget"] = 30
    with pytest.raises(PipelineError, match=r"`archs.fast.time_budget` and `budget: 5m`"):
        entry_budgets(p)
    p = params(budget="5m", train={"time_budget": 9})
    with pytest.raises(PipelineError, match=r"^params.yaml: `train.time_budget` and"):
        entry_budgets(p)
    p = params(budget="5m")
    p["archs"]["fast"]["share"] = 0
    with pytest.raises(PipelineError, match=r"archs.fast.share` = 0"):
        entry_budgets(p)


def test_share_is_not_part_of_the_recipe():
    from pipeline.params import train_spec

    p = params(budget="5m")
    p["archs"]["fast"]["share"] = 3
    assert train_spec(p, "fast") == train_spec(params(budget="5m"), "fast")  # spec.json is unchanged by a share


def test_race_first_auto_and_checks():
    assert rungs_for(7, 3) == 3 and rungs_for(7, 2) == 4 and rungs_for(1, 2) == 1
    p = params(budget="10m", race={"eta": 3})
    assert first_seconds(600.0, 3, race_param(p)) == pytest.approx(600 / (3 * 2))
    assert {b for b, _ in entry_budgets(p).values()} == {100.0}
    p2 = params(budget="10m", race={"eta": 3, "first": 100})
    p2["archs"]["resnet18"] = {}
    assert entry_budgets(p2)["fast"] == entry_budgets(params(budget="10m", race={"eta": 3, "first": 100}))["fast"]
    with pytest.raises(PipelineError, match="`race` spends `budget`, which is null"):
        entry_budgets(params(race={"eta": 2}))
    with pytest.raises(PipelineError, match="race.first` = 300 s for 3 entries"):
        entry_budgets(params(budget="10m", race={"first": "5m"}))
    with pytest.raises(PipelineError, match="race.eta"):
        entry_budgets(params(budget="10m", race={"eta": 1}))
    p = params(budget="10m", race={})
    p["archs"]["mlp"]["folds"] = 3
    with pytest.raises(PipelineError, match="`mlp` has folds"):
        entry_budgets(p)


def test_survivors_stop_behind_the_noise_and_outside_one_over_eta():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 2000)

    wrong = (y + rng.integers(1, 4, len(y))) % 4
    right = rng.random(len(y)) < 0.9

    def model(flip):  # a's rows with `flip` of its right ones wrong: level with it (or, by many, behind)
        r = right.copy()
        r[np.flatnonzero(r)[:flip]] = False
        return onehot(np.where(r, y, wrong), conf=0.6)

    preds = {"a": model(0), "b": model(3), "c": model(400), "d": model(5)}
    scored = {n: {"score": float((p.argmax(1) == y).mean())} for n, p in preds.items()}
    survivors, stopped = survivors_of(scored, preds, y, eta=2, metric="accuracy", seed=0)
    assert survivors[0] == max(scored, key=lambda n: scored[n]["score"])
    assert "c" in stopped and "beyond the noise" in stopped["c"]
    assert len(survivors) == 2  # ceil(4 / 2), the level ones
    outside = [n for n, why in stopped.items() if "outside the best 1/2" in why]
    assert len(outside) == 1 and outside[0] != "c"


def test_next_seconds_spends_what_is_left():
    assert next_seconds(10, 3, 1, 3, 500, 10) == (3, 30, False)  # a rung as planned
    assert next_seconds(10, 3, 1, 1, 500, 10) == (1, 500, True)  # one left: all of it
    assert next_seconds(10, 3, 2, 3, 200, 30) == (3, pytest.approx(200 / 3), True)  # would overrun: share the rest
    assert next_seconds(10, 3, 2, 3, 70, 30) == (2, 35.0, True)  # three would get less than the last rung: two
    assert next_seconds(10, 3, 2, 3, 25, 30) == (0, 0.0, True)  # not even one: the race ends


RECORD = {
    "race": {"eta": 2, "first_s": 10.0, "budget_s": 60.0},
    "metric": "accuracy",
    "planned_s": 60.0,
    "rungs": [
        {"rung": 0, "seconds": 10.0, "runs": {"a": {"score": 0.9}, "b": {"score": 0.6}, "c": {"score": 0.88}},
         "stopped": {"b": "behind the best beyond the noise: -30.00 [-33.00, -27.00] points vs a"}},
        {"rung": 1, "seconds": 15.0, "runs": {"a": {"score": 0.93}, "c": {"score": 0.91}}, "stopped": {},
         "ended": "the budget is spent"},
    ],
    "members": ["a@r1", "c@r1"],
}  # fmt: skip


def test_race_table_says_each_rung_and_where_each_stopped(tmp_path):
    md = race_md(RECORD)
    assert "| entry | rung 0 (10 s) | rung 1 (15 s) | outcome |" in md
    assert "| b | 60.00 |  | stopped after rung 0: behind the best beyond the noise" in md
    assert "| a | 90.00 | 93.00 | ran the last rung: the budget is spent |" in md
    assert race_md({"race": None, "members": []}) == ""
    (tmp_path / "budgets").mkdir()
    for n, s in {"a": 10.0, "b": 10.0}.items():
        (tmp_path / "budgets" / f"{n}.json").write_text(json.dumps({"time_budget": s, "why": "race rung 0"}))
    assert "10.0 s each (race rung 0)" in plan_md(tmp_path)


def test_race_stage_trains_rungs_and_keeps_unchanged_runs(project, monkeypatch):
    """Rung 0 by the train stage at the plan's seconds, one rung by the race stage, written whole; a rerun keeps
    the runs (their fingerprints match), a changed recipe retrains only its own."""
    from pipeline import plan, race, train
    from pipeline.artifacts import with_snapshots

    root, write = project
    monkeypatch.chdir(root)
    f = write({"logreg": {}, "mlp": {}})
    p = yaml.safe_load(open(f))
    p |= {"budget": 4, "race": {"eta": 2, "first": 1}}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {"do": {"deps": ["pipeline/train.py"]}}}}))
    (root / "pipeline").mkdir()
    (root / "pipeline" / "train.py").write_text("# the training code's stand-in\n")
    (root / "pipeline" / "race.py").write_text("# the race's stand-in\n")
    open(f, "w").write(yaml.safe_dump(p))
    plan.run(f)
    for k in ("logreg", "mlp"):
        m = train.run(k, f).metrics
        assert m.time_budget["asked_s"] == 1.0
    rec = race.run(f)
    assert rec["members"] and all("@r1" in m for m in rec["members"])
    assert rec["rungs"][1]["seconds"] > 1.0
    first = {m: (root / "race" / m / "fingerprint.json").stat().st_mtime_ns for m in rec["members"]}
    assert with_snapshots(root, ["logreg", "mlp"])[2:] == rec["members"]
    again = race.run(f)
    assert all(r.get("kept") for r in again["rungs"][1]["runs"].values())
    assert {m: (root / "race" / m / "fingerprint.json").stat().st_mtime_ns for m in rec["members"]} == first
    assert json.loads((root / "race" / "race.json").read_text())["members"] == rec["members"]
