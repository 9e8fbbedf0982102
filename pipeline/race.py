"""Stage `race`: successive halving over the models of `archs` and `variants` (params.yaml `race:`), after the first
rung their train stages ran at `first` seconds each (pipeline.plan).

At each rung r ≥ 1, on validation only, in the run's `metric`:
- the models that trained at rung r-1 are ranked; those outside the best ceil(n / eta) stop;
- of the rest, each that the paired comparison (the one the report prints: McNemar for top-1, the class-stratified
  bootstrap otherwise) finds behind the best stops: the noise cannot explain its gap;
- the survivors train afresh, the same recipe from the start, with first x eta^r seconds each. Where one survivor
  is left, or the rung would spend more than what is left of `budget`, the survivors share what is left equally
  and that rung is the last; what is left below the previous rung's seconds is not spent.
Every decision is recorded in race/race.json, and the ensemble considers the run of every rung.

Reads:  params.yaml (`seed`, `metric`, `budget`, `race`, `train`, `archs`, `variants`), data/prepared/,
        preds/<name>/valid.npy and metrics/<name>.json (rung 0, from the train stages).
Writes: race/race.json (the rungs: seconds, each run's score, who stopped and why; `members`: the runs of rungs
        ≥ 1 the ensemble considers) and race/<name>@r<rung>/ per run (model/, preds/, metrics.json, live/,
        fingerprint.json), each written whole. With `race: null`: race/race.json says so, and no torch is loaded.
Cache:  DVC keeps race/ between runs (`persist: true`): a run whose fingerprint (its recipe and seconds, the seed,
        the prepared data, the training code) is unchanged is kept, not retrained; `dvc repro` after adding an
        entry trains only the runs whose inputs changed. A folder no rung asks for is removed.
Run:    dvc repro race    (or: python -m pipeline.race)
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from pipeline.artifacts import RACE, load_labels, load_preds, load_prepared_meta, meta_file, prepared_dir, race_folder
from pipeline.errors import PipelineError
from pipeline.inspect.scores import CI_KEYS, compare, resolve_metric, score
from pipeline.io import staged
from pipeline.params import entry_of, load_params, metric_param, model_names, seed_param
from pipeline.plan import budget_param, entry_budgets, race_param

RESAMPLES = 2000  # of each paired comparison, as the ensemble's default `resamples`


def rung_name(name: str, rung: int) -> str:
    """The model a rung trains: the entry's own name at rung 0 (its train stage), <name>@r<rung> after."""
    return name if rung == 0 else f"{name}@r{rung}"


def fingerprint_of(parts: dict) -> str:
    """sha256 of the inputs of one run, as sorted JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def files_digest(files: list[Path], base: Path) -> str:
    """sha256 over the paths (relative to base) and bytes of files."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(base).as_posix().encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def code_files(root: Path) -> list[Path]:
    """The training code a run depends on: the modules dvc.yaml's train stages depend on (this stage's own rules
    do not change how a run trains, so editing them retrains nothing)."""
    import yaml

    deps = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["train"]["do"]["deps"]
    return sorted({root / d for d in deps if str(d).endswith(".py")})


def survivors_of(scored: dict[str, dict], preds: dict, y: np.ndarray, eta: int, metric: str, seed: int):
    """The models that go on from a rung, and why each other stops: (survivors in rank order, {name: why}).
    `scored`: name -> {"score": ...} of the rung's runs; `preds`: name -> validation probabilities."""
    ranked = sorted(scored, key=lambda n: -scored[n]["score"])  # stable: params.yaml's order breaks ties
    keep = math.ceil(len(ranked) / eta)
    best, survivors, stopped = ranked[0], [ranked[0]], {}
    for i, name in enumerate(ranked[1:], start=2):
        c = compare(preds[name], preds[best], y, seed=seed, resamples=RESAMPLES, metric=metric)
        gap = f"{100 * c['diff']:+.2f} [{100 * c['ci95'][0]:+.2f}, {100 * c['ci95'][1]:+.2f}] points vs {best}"
        scored[name]["vs_best"] = {k: c[k] for k in ("diff", "ci95", "p", "resolved")}
        if c["resolved"] and c["diff"] < 0:
            stopped[name] = f"behind the best beyond the noise: {gap}, p = {c['p']:.2g}"
        elif i > keep:
            stopped[name] = f"outside the best 1/{eta} (rank {i} of {len(ranked)}, {keep} go on): {gap}"
        else:
            survivors.append(name)
    return survivors, stopped


def next_seconds(first: float, eta: int, rung: int, n: int, left: float, last_s: float) -> tuple[int, float, bool]:
    """(how many of the n survivors run `rung`, the seconds of each, whether it is the last rung). A rung as
    planned is first x eta^rung each; where one survivor is left, or n of those would spend more than is left, the
    best k share what is left, k the most for whom it is still more than the last rung's seconds (0: the race ends)."""
    s = first * eta**rung
    if n > 1 and n * s <= left:
        return n, s, False
    k = n
    while k and left / k <= last_s:
        k -= 1
    return k, (left / k if k else 0.0), True


def stored_fingerprint(f: Path) -> str | None:
    """The fingerprint a run's folder holds; None where it has none or it is unreadable (the run is redone)."""
    try:
        return json.loads(f.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


class Race:
    """The state of one race: its params, the data's labels, and the run (train or reuse) of one model at a rung."""

    def __init__(self, params: dict, root: Path):
        self.params, self.root = params, root
        self.total, self.cfg = budget_param(params), race_param(params)
        self.names = model_names(params)
        self.first = entry_budgets(params)[self.names[0]][0]
        self.meta = load_prepared_meta(meta_file(prepared_dir(root)))
        self.metric = resolve_metric(metric_param(params), self.meta.counts_per_class.get("train", {}))[0]
        self.seed = seed_param(params)
        self.y = load_labels(root).labels("valid")
        self._prepared = None
        self.fp_common = {
            "data": files_digest([p for p in prepared_dir(root).rglob("*") if p.is_file()], prepared_dir(root)),
            "code": files_digest(code_files(root), root),
        }

    def valid_preds(self, model: str) -> np.ndarray:
        """A run's validation probabilities (rung 0: preds/<name>/, later: race/<name>@r<rung>/preds/)."""
        return load_preds(self.root, model, "valid", len(self.y), len(self.meta.classes))

    def scored(self, model: str, p: np.ndarray) -> dict:
        """A run's validation score in the run's metric, with its 95 % interval."""
        s = score(p, self.y)
        return {"model": model, "score": s[self.metric], "ci95": s[CI_KEYS[self.metric]]}

    def train(self, name: str, rung: int, seconds: float) -> tuple[str, bool]:
        """Trains `name` for `seconds` as run <name>@r<rung>, or keeps the run whose fingerprint matches;
        (its model name, whether it was kept)."""
        from pipeline.train import spec_of

        model = rung_name(name, rung)
        spec, seed = spec_of(self.params, name, self.meta)
        spec = replace(spec, time_budget=round(seconds, 3))
        fp = fingerprint_of({**self.fp_common, "spec": asdict(spec), "seed": seed})
        fp_file = race_folder(self.root, model) / "fingerprint.json"
        if stored_fingerprint(fp_file) == fp:
            print(f"race: {model} kept (its recipe, seconds, data and code are unchanged)")
            return model, True
        shutil.rmtree(race_folder(self.root, model), ignore_errors=True)
        self.fit(model, spec, seed)
        with staged(fp_file) as (f,):  # last, and whole: a run without it is trained again
            f.write_text(json.dumps({"fingerprint": fp, "time_budget": spec.time_budget}, indent=2) + "\n")
        return model, False

    def fit(self, model: str, spec, seed: int) -> None:
        """One run, its outputs written whole (as a train stage writes an entry's)."""
        from dvclive import Live

        from pipeline.artifacts import load_prepared, member_outputs
        from pipeline.learn.hardware import pick_device
        from pipeline.learn.member import write_member
        from pipeline.train import train_entry

        if self._prepared is None:
            self._prepared = load_prepared(self.root)
        device = pick_device(spec.device, entry_of(model))
        with staged(*member_outputs(self.root, model)) as (model_dir, preds_dir, metrics_file, live_dir):
            live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
            arrays, meta = self._prepared.arrays, self._prepared.meta
            res = train_entry(model, spec, arrays, meta, seed, device=device, live=live)
            write_member(res, live, model_dir, preds_dir, metrics_file, live_dir)


def run_rungs(race: Race) -> dict:
    """Rung 0's results, then rung after rung until the budget is spent or one model is left: the record."""
    eta, first = race.cfg.eta, race.first
    preds = {n: race.valid_preds(n) for n in race.names}
    scored = {n: race.scored(n, p) | {"seconds": first} for n, p in preds.items()}
    rungs = [{"rung": 0, "seconds": round(first, 3), "runs": scored, "stopped": {}}]
    spent, members, rung, last_s = first * len(race.names), [], 1, first
    while True:  # each pass decides who goes on from the last rung; it ends on the last rung or with none left
        survivors, stopped = survivors_of(scored, preds, race.y, eta, race.metric, race.seed)
        rungs[-1]["stopped"] = stopped
        left = race.total - spent
        k, seconds, last = next_seconds(first, eta, rung, len(survivors), left, last_s)
        for name in survivors[k:]:
            stopped[name] = f"the {left:.0f} s left pay for {k} run{'s' * (k != 1)} longer than the last rung's"
        survivors = survivors[:k]
        if not k:
            rungs[-1]["ended"] = f"{left:.1f} s left: less than the last rung's {last_s:.1f} s"
            break
        scored, preds = {}, {}
        for name in survivors:
            model, kept = race.train(name, rung, seconds)
            p = race.valid_preds(model)
            scored[name], preds[name] = race.scored(model, p) | {"seconds": round(seconds, 3), "kept": kept}, p
            members.append(model)
        rungs.append({"rung": rung, "seconds": round(seconds, 3), "runs": scored, "stopped": {}})
        spent, last_s, rung = spent + seconds * len(survivors), seconds, rung + 1
        if last:
            break
    rungs[-1]["ended"] = rungs[-1].get("ended") or "the budget is spent"
    return record_of(race, rungs, members, spent)


def record_of(race: Race, rungs: list[dict], members: list[str], spent: float) -> dict:
    """race/race.json: the race's params, its metric, the seconds it planned, the rungs and the runs it trained."""
    cfg = {"eta": race.cfg.eta, "first_s": round(race.first, 3), "budget_s": race.total}
    return {"race": cfg, "metric": race.metric, "planned_s": round(spent, 3), "rungs": rungs, "members": members}


def run(params_file: str | Path = "params.yaml", root: Path = Path(".")) -> dict:
    """The stage: race/race.json (and the runs) whole; returns the record."""
    params = load_params(params_file)
    record: dict = {"race": None, "members": []}
    if race_param(params) is not None:
        record = run_rungs(Race(params, root))
    keep = set(record["members"]) | {"race.json"}
    folder = root / RACE
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():  # runs no rung asked for (an entry removed, a budget changed)
        if old.name not in keep and not old.name.startswith("."):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    with staged(folder / "race.json") as (f,):
        f.write_text(json.dumps(record, indent=2) + "\n")
    for line in race_lines(record):
        print(line)
    return record


def race_lines(record: dict) -> list[str]:
    """The race in a few lines: each rung's seconds, runs and who stopped."""
    if not record.get("race"):
        return ["race: off (params.yaml `race: null`)"]
    out = []
    for r in record["rungs"]:
        runs = ", ".join(f"{n} {100 * v['score']:.2f}" for n, v in r["runs"].items())
        out.append(f"race rung {r['rung']}: {r['seconds']:.1f} s each: {runs}")
        out += [f"  stopped {n}: {why}" for n, why in r["stopped"].items()]
    return out + [f"race: {record['rungs'][-1]['ended']}"]


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.race`: 1 with the error's words on a bad input."""
    try:
        run(*(argv or [])[:1])
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
