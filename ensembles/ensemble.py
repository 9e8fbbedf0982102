"""Stage `ensemble`: blend the trained models' predictions; write Kaggle-style submissions.

Reads:  params.yaml (`seed`, `metric`, `archs`, `variants`, `ensemble`), data/prepared/{meta.json,
        train_y.npy, valid_y.npy, test_y.npy, test_ids.json}, preds/<name>/{valid,test}.npy (and oof.npy,
        oof_rows.npy of `folds` entries) and metrics/<name>.json for every model (never the models).
Writes: submissions/<name>.csv for every model and submissions/ensemble.csv; ensemble/preds/{valid,test}.npy
        (the chosen strategy's probabilities); ensemble/metrics.json (every strategy's members, weights, scores;
        the gain over the best model; accuracy against the number of members);
        ensemble/model.json (what pipeline.commands.predict needs to blend: members, weights, or the stacker's numbers);
        summary.json (the run at a glance, the run's one DVC metric: ensembles/summary.py).
Run:    python -m ensembles.ensemble        (or `dvc repro ensemble`)

Everything is decided by the run's metric (`metric:`; auto: accuracy on balanced training classes, else balanced
accuracy): members, weights, the strategy, the comparisons. Selection uses the validation split. Weights and the
stacker fit on the validation split, or, when every member is a `folds` entry, on their out-of-fold predictions over
the training split (the validation split then scores them untouched). Test labels are read only to report test
scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from ensembles.calibrate import log_prior
from ensembles.candidates import (
    Candidates,
    Labels,
    balanced,
    calibrate_members,
    load_candidates,
    oof_fit_rows,
    oof_matrix,
    read_labels,
)
from ensembles.evaluate import by_size, comparisons, gain, leave_one_out, per_class
from ensembles.select import family, select
from ensembles.strategies import EnsembleParams, Outcome, best_strategy, ensemble_params, run_strategies
from ensembles.submission import NO_TEST, submission_rows, write_csv
from ensembles.summary import summary, summary_file
from pipeline.artifacts import (
    ensemble_outputs,
    save_ensemble_metrics,
    save_ensemble_model,
    save_preds,
    with_snapshots,
)
from pipeline.errors import PipelineError
from pipeline.inspect.scores import metric_value, resolve_metric, score
from pipeline.io import staged
from pipeline.params import group_of, load_params, metric_param, model_names, seed_param
from pipeline.records import EnsembleMetrics, EnsembleModel, ModelScores, PerClass, Score, Strategy


def model_records(
    params, c: Candidates, d: Labels, families: dict, weights: dict, temps: dict, raw: dict
) -> dict[str, ModelScores]:
    """ensemble/metrics.json `models`: each model's family, entry, scores (after its temperature) and weight."""
    models = {}
    for i, n in enumerate(c.names):
        models[n] = ModelScores(
            family=families[n],
            group=group_of(params, n),
            valid=Score.of(score(c.valid[i], d.valid_y)),
            weight=weights.get(n, 0.0),
            test=Score.of(score(c.test[i], d.test_y)) if d.test_y is not None else None,
            temperature=temps[n] if temps else None,  # the scores above are after it; `uncalibrated` before
            uncalibrated=uncalibrated(raw[n]) if temps else None,
        )
    return models


def uncalibrated(raw: tuple[dict, dict | None]) -> dict[str, Score]:
    """A model's (valid, test) scores before its temperature, by split."""
    return {s: Score.of(v) for s, v in zip(("valid", "test"), raw) if v}


def verdicts(c: Candidates, d: Labels, members, best, best_member, chosen, out: Outcome, cfg, seed, fit_on_of) -> dict:
    """The submission against each member and the best model (paired), without each member, and per class."""
    sub = {"valid": out.valid_probs, "test": out.test_probs}
    bm, n_classes = c.names.index(best_member), len(d.meta.classes)
    classes_of = PerClass(
        against=best_member,
        valid=per_class(sub["valid"], c.valid[bm], d.valid_y, n_classes),
        test=per_class(sub["test"], c.test[bm], d.test_y, n_classes) if d.test_y is not None else None,
    )
    against = members + ([best] if best not in members else [])
    return {
        "comparisons": comparisons(sub, c, against, d.valid_y, d.test_y, seed, cfg.resamples, cfg.metric),
        "leave_one_out": leave_one_out(c, members, chosen, d.valid_y, d.test_y, cfg, seed, out, fit_on_of),
        "per_class": classes_of,
    }


def choose_members(
    c: Candidates, y: np.ndarray, cfg: EnsembleParams, families: dict[str, str], valid_acc: dict[str, float]
) -> list[str]:
    """The members by the run's metric on validation (`valid_acc`, by `select`), within what validation can tell
    from the best."""
    top = max(c.names, key=lambda n: (valid_acc[n], n))
    lo, hi = Score.of(score(c.valid[c.names.index(top)], y)).interval(cfg.metric) or (0.0, 0.0)  # no rows: none
    return select(
        valid_acc,
        families,
        cfg.threshold,
        cfg.per_family,
        cfg.on_empty,
        cfg.select,
        cfg.margin,
        noise=(hi - lo) / 2,  # what validation cannot tell from the best
    )


def blend_model(chosen: str, out: Outcome, classes: list[str], temps: dict, cfg: EnsembleParams) -> EnsembleModel:
    """ensemble/model.json: what pipeline.learn.trained.Ensemble needs to blend the chosen strategy's members."""
    rec = out.record
    return EnsembleModel(
        method=chosen,
        members=rec.members,
        weights=rec.weights,
        classes=classes,
        stacker=out.stacker,
        temperatures={m: temps[m] for m in rec.members} if temps else None,  # each member's, before blending
        temperature=rec.temperature,  # the blend's, after
        tau=rec.tau or None,  # then the logit adjustment's (none where τ is 0)
        log_prior=cfg.log_prior.tolist() if rec.tau else None,
    )


def run(params: dict, root: Path = Path(".")) -> EnsembleMetrics:
    """The whole stage; returns the metrics it wrote (ensemble/metrics.json)."""
    cfg, seed, names = ensemble_params(params), seed_param(params), with_snapshots(root, model_names(params))
    d = read_labels(root)
    y, test_y = d.valid_y, d.test_y
    train_counts = d.meta.counts_per_class.get("train", {})
    metric, why = resolve_metric(metric_param(params), train_counts)
    c = load_candidates(names, len(y), len(d.test_ids), len(d.meta.classes), root, n_train=len(d.train_y))
    adjust = cfg.adjust == "logit" or cfg.adjust == "auto" and metric != "accuracy" and not balanced(c)
    prior = log_prior([train_counts.get(k, 0) for k in d.meta.classes]) if adjust else None
    cfg = replace(cfg, metric=metric, log_prior=prior)
    raw = {  # `calibrate: temperature`: the scores before the temperatures (the record's `uncalibrated`)
        n: (score(c.valid[i], y), score(c.test[i], test_y) if test_y is not None else None)
        for i, n in enumerate(names)
        if cfg.calibrate == "temperature"
    }
    temps = calibrate_members(c, y) if cfg.calibrate == "temperature" else {}
    families = {n: str(cfg.families.get(n) or family(c.info[n].arch, c.info[n].source)) for n in names}
    valid_acc = {n: metric_value(metric, p, y) for n, p in zip(names, c.valid)}  # in the run's metric
    members = choose_members(c, y, cfg, families, valid_acc)

    def fit_on_of(ms: list[str]):
        r = oof_fit_rows(c, ms)
        return None if r is None else (oof_matrix(c, ms, r), d.train_y[r])

    idx = [names.index(m) for m in members]
    fit_on = fit_on_of(members)
    results = run_strategies(c.valid[idx], y, c.test[idx], test_y, members, cfg, seed, fit_on)
    chosen = best_strategy(results, metric) if cfg.method == "best" else cfg.method
    rec = results[chosen].record
    models = model_records(params, c, d, families, rec.weights, temps, raw)
    best = max(names, key=lambda n: (valid_acc[n], n))  # the best model, by validation (the run's metric)
    best_member = max(members, key=lambda n: (valid_acc[n], n))
    record = EnsembleMetrics(
        method=cfg.method,
        chosen=chosen,
        **{f.name: getattr(rec, f.name) for f in fields(Strategy)},
        fitted_on="validation split (cross-fitted scores)"
        if fit_on is None
        else f"out-of-fold predictions on {len(fit_on[1])} training rows (valid held out)",
        metric=metric,
        metric_why=why,
        best_model=best,
        best_member=best_member,
        gain=gain(rec, models[best], metric),
        gain_over_best_member=gain(rec, models[best_member], metric),
        calibrate=cfg.calibrate,
        **verdicts(c, d, members, best, best_member, chosen, results[chosen], cfg, seed, fit_on_of),
        by_size=by_size(names, c.valid, y, c.test, test_y, metric),
        strategies={k: v.record for k, v in results.items()},
        models=models,
        submission="submissions/ensemble.csv" if d.test_ids else None,
    )
    write_outputs(root, c, d, results[chosen], record, blend_model(chosen, results[chosen], d.meta.classes, temps, cfg))
    return record


def write_outputs(
    root: Path, c: Candidates, d: Labels, out: Outcome, metrics: EnsembleMetrics, model: EnsembleModel
) -> None:
    """submissions/, ensemble/preds/, ensemble/metrics.json, ensemble/model.json and summary.json, whole or not at
    all."""
    classes, ids, header = d.meta.classes, d.test_ids, d.meta.submission_header
    with staged(*ensemble_outputs(root), summary_file(root)) as (subs, pr, mf, mj, sj):
        save_ensemble_model(mj, model)
        sj.write_text(json.dumps(summary(metrics, c.info), indent=2) + "\n")
        subs.mkdir(exist_ok=True)
        if ids:
            for i, n in enumerate(c.names):
                write_csv(subs / f"{n}.csv", submission_rows(c.test[i], ids, classes, header))
            write_csv(subs / "ensemble.csv", submission_rows(out.test_probs, ids, classes, header))
        else:
            (subs / "NO_TEST_SPLIT.txt").write_text(NO_TEST + "\n")
        save_preds(pr, {"valid": out.valid_probs.astype(np.float32), "test": out.test_probs.astype(np.float32)})
        save_ensemble_metrics(mf, metrics)


def main(argv: list[str] | None = None) -> int:
    """`python -m ensembles.ensemble`: the stage, then a summary printed; 1 on an error."""
    argparse.ArgumentParser(prog="python -m ensembles.ensemble", description=__doc__.split("\n")[0]).parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = run(load_params())
        for w in caught:
            print(f"WARNING: {w.message}", file=sys.stderr)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not m.submission:
        print(f"note: {NO_TEST}", file=sys.stderr)
    k = m.judged_by()
    test = f", test {m.test.value(k):.4f}" if m.test else ""
    print(f"metric: {k} ({m.metric_why})")
    print(f"ensemble ({m.chosen}): {len(m.members)} members {', '.join(m.members)}; valid {m.valid.value(k):.4f}{test}")
    print(f"  weights and stacker fitted on the {m.fitted_on}")
    if m.tau:
        print(f"  logit adjustment: log p − {m.tau} · log(training prior), τ chosen on validation")
    print(
        f"  gain over the best model ({m.best_model}, by validation {k}): "
        + ", ".join(f"{s} {100 * v:+.2f} points" for s, v in m.gain.items())
    )
    for name, s in m.strategies.items():
        t = f"  test {s.test.value(k):.4f}" if s.test else ""
        print(f"  {name:9s} valid {s.valid.value(k):.4f} (loss {s.valid.loss:.4f}, {s.valid_scored}){t}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
