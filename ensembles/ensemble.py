"""Stage `ensemble`: blend the trained models' predictions; write Kaggle-style submissions.

Reads:  params.yaml (`seed`, `metric`, `archs`, `variants`, `ensemble`), data/prepared/{meta.json,
        train_y.npy, valid_y.npy, test_y.npy, test_ids.json}, preds/<name>/{valid,test}.npy (and oof.npy,
        oof_rows.npy of `folds` entries) and metrics/<name>.json for every model (never the models).
Writes: submissions/<name>.csv for every model and submissions/ensemble.csv; ensemble/preds/{valid,test}.npy
        (the chosen strategy's probabilities); ensemble/metrics.json (every strategy's members, weights, scores;
        the gain over the best model; accuracy against the number of members);
        ensemble/model.json (what pipeline.commands.predict needs to blend: members, weights, or the stacker's numbers).
Run:    python -m ensembles.ensemble        (or `dvc repro ensemble`)

Everything is decided by the run's metric (`metric:`; auto: accuracy on balanced training classes, else balanced
accuracy): members, weights, the strategy, the comparisons. Selection uses the validation split. Weights and the
stacker fit on the validation split, or, when every member is a `folds` entry, on their out-of-fold predictions over
the training split (the validation split then scores them untouched). Test labels are read only to report test
scores.
"""

from __future__ import annotations

import csv
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ensembles.calibrate import adjust_logits, apply_temperature, fit_tau, fit_temperature, log_prior
from ensembles.select import family, select
from ensembles.strategies import REGISTRY, Fit, ensemble_params, stacking_form
from ensembles.weights import accuracy_weights, blend, crossfit
from pipeline.artifacts import (
    ensemble_outputs,
    has_oof,
    load_member_metrics,
    load_oof,
    load_preds,
    load_prepared,
    metrics_file,
    save_ensemble_metrics,
    save_ensemble_model,
    save_preds,
)
from pipeline.errors import PipelineError
from pipeline.inspect.scores import class_report, compare, metric_value, resolve_metric, score
from pipeline.io import staged
from pipeline.params import group_of, load_params, metric_param, model_names, seed_param
from pipeline.records import EnsembleMetrics, EnsembleModel, MemberMetrics, PreparedMeta, Score

NO_TEST = (
    "no submission: the prepared data has no test split (e.g. an ImageFolder set without test/); "
    "add test images and rerun `dvc repro` to get one"
)


@dataclass
class Candidates:
    names: list[str]
    valid: np.ndarray  # (models, rows, classes)
    test: np.ndarray
    info: dict[str, MemberMetrics]  # metrics/<name>.json
    oof: dict[str, tuple[np.ndarray, np.ndarray]]  # `folds` entries: name -> (training rows, their OOF probabilities)


def load_candidates(
    names: list[str], n_valid: int, n_test: int, n_classes: int, root: Path = Path("."), n_train: int = 0
) -> Candidates:
    """Every model's predictions, checked against the prepared data and each other."""
    valid, test, info, oof = [], [], {}, {}
    for name in names:
        valid.append(load_preds(root, name, "valid", n_valid, n_classes).astype(np.float64))
        test.append(load_preds(root, name, "test", n_test, n_classes).astype(np.float64))
        info[name] = load_member_metrics(metrics_file(root, name), name)
        if has_oof(root, name):
            oof[name] = load_oof(root, name, n_train, n_classes)
    return Candidates(names, np.stack(valid), np.stack(test), info, oof)


def oof_fit_rows(c: Candidates, members: list[str]) -> np.ndarray | None:
    """The training rows every member has out-of-fold predictions for (each `folds` entry), or None when a member
    has none: then the fitted strategies fit on the validation split."""
    if not all(m in c.oof for m in members):
        return None
    rows = c.oof[members[0]][0]
    for m in members[1:]:
        rows = np.intersect1d(rows, c.oof[m][0])
    return rows if len(rows) else None


def oof_matrix(c: Candidates, members: list[str], rows: np.ndarray) -> np.ndarray:
    """(members, rows, classes): each member's out-of-fold probabilities on `rows`."""
    out = []
    for m in members:
        have, p = c.oof[m]
        out.append(p[np.searchsorted(have, rows)])  # oof_rows are sorted: the pool's order
    return np.stack(out)


@dataclass
class Outcome:
    """One strategy's scores (the metrics record) and its blended probabilities."""

    record: dict
    valid_probs: np.ndarray  # cross-fitted where the strategy is fitted
    test_probs: np.ndarray
    stacker: dict | None


def fit_strategy(kind: str, P: np.ndarray, y: np.ndarray, accs: np.ndarray, cfg: dict, seed: int) -> Fit:
    """One strategy of the registry fitted on validation rows."""
    return REGISTRY[kind].fit(P, y, accs, cfg, seed)


def run_strategies(
    P: np.ndarray,
    y: np.ndarray,
    T: np.ndarray,
    test_y: np.ndarray | None,
    members: list[str],
    cfg: dict,
    seed: int,
    fit_on: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Outcome]:
    """Every strategy on the same members: weights, validation and (where labelled) test scores, test probs.
    `cfg["metric"]` is the run's metric (members' scores for the metric-weighted blend); `cfg["log_prior"]`, where
    set, the training classes' log prior the blend's logits are adjusted by (τ chosen on validation).

    `fit_on`: (members' out-of-fold probabilities, labels) on training rows, when every member is a `folds` entry:
    the fitted strategies fit there (more rows than the validation split) and are scored on the whole validation
    split, which none of them saw. Otherwise they fit on the validation split, scored by cross-fitting."""
    metric = cfg.get("metric", "accuracy")  # `run` sets it; a caller of this function alone may not
    accs = np.array([metric_value(metric, p, y) for p in P])
    counts = np.bincount(y)
    k_folds = int(min(cfg["folds"], counts[counts > 0].min()))  # no more folds than the rarest class has rows
    out = {}
    for kind in cfg["strategies"]:
        fitted = REGISTRY[kind].fitted
        if fitted and fit_on is not None:
            f = fit_strategy(kind, *fit_on, accs, cfg, seed)
            vp, how = f.predict(P), f"fitted on {len(fit_on[1])} out-of-fold training rows; valid held out"
        elif (fitted and len(P) > 1 or kind == "stacking") and k_folds >= 2:
            f = fit_strategy(kind, P, y, accs, cfg, seed)
            fit = lambda Ptr, ytr, k=kind: fit_strategy(k, Ptr, ytr, accs, cfg, seed).predict
            vp, how = crossfit(P, y, fit, k_folds, seed), f"cross-fitted, {k_folds} folds"
        else:
            f = fit_strategy(kind, P, y, accs, cfg, seed)
            if not fitted:
                how = "direct"
            elif k_folds < 2:
                how = "direct: a class has fewer than 2 validation rows, too few to cross-fit"
            else:
                how = "direct: one member, nothing to fit"
            vp = f.predict(P)
        tp = f.predict(T)
        rec = {
            "members": members,
            "weights": {m: round(float(x), 6) for m, x in zip(members, f.weights)},
        }
        if cfg.get("calibrate") == "temperature":  # one temperature for the blend, on its validation probabilities
            t = round(fit_temperature(vp, y), 6)
            vp, tp = apply_temperature(vp, t), apply_temperature(tp, t)
            rec["temperature"] = round(t, 6)
        if cfg.get("log_prior") is not None:  # `adjust: logit`: τ by the metric on the validation probabilities
            tau = fit_tau(vp, y, cfg["log_prior"], metric)
            vp, tp = adjust_logits(vp, cfg["log_prior"], tau), adjust_logits(tp, cfg["log_prior"], tau)
            rec["tau"] = tau
        rec |= {"valid": score(vp, y), "valid_scored": how}
        if kind == "stacking":
            rec["form"] = stacking_form(len(P), P.shape[2], cfg)
        if test_y is not None:
            rec["test"] = score(tp, test_y)
        out[kind] = Outcome(rec, vp, tp, f.stacker)
    return out


def balanced(c: Candidates) -> bool:
    """Was every model trained with balanced sampling (metrics/<key>.json `sampler`)? Then each learnt a uniform
    class prior, and `adjust: auto` has no training prior to take off."""
    return all(c.info[n].sampler == "balanced" for n in c.names)


def best_strategy(results: dict[str, Outcome], metric: str = "accuracy") -> str:
    """Highest validation score in the run's metric (cross-fitted where fitted), then lowest validation log-loss."""
    return min(results, key=lambda k: (-results[k].record["valid"][metric], results[k].record["valid"]["loss"]))


def gain(rec: dict, best: dict, metric: str = "accuracy") -> dict:
    """The ensemble's score minus the best single model's (chosen by validation), per split, in the run's metric."""
    return {s: rec[s][metric] - best[s][metric] for s in ("valid", "test") if s in rec and s in best}


def by_size(
    names: list[str], valid: np.ndarray, y: np.ndarray, test=None, test_y=None, metric: str = "accuracy"
) -> list[dict]:
    """The run's metric of the metric-weighted blend of the k best models by validation, k = 1 .. all;
    `valid`/`test` are (models, rows, classes) in the order of `names`."""
    acc = [metric_value(metric, p, y) for p in valid]
    order = sorted(range(len(names)), key=lambda i: (-acc[i], names[i]))
    out = []
    for k in range(1, len(order) + 1):
        top = order[:k]
        w = accuracy_weights([acc[i] for i in top])
        row = {"k": k, "added": names[top[-1]], "valid": metric_value(metric, blend(valid[top], w), y)}
        if test_y is not None:
            row["test"] = metric_value(metric, blend(test[top], w), test_y)
        out.append(row)
    return out


def calibrate_members(c: Candidates, y: np.ndarray) -> dict[str, float]:
    """`calibrate: temperature`: each model's temperature fitted on the validation split, applied in place to its
    validation, test and out-of-fold probabilities. Returns name -> temperature."""
    temps = {}
    for i, n in enumerate(c.names):
        t = round(fit_temperature(c.valid[i], y), 6)
        c.valid[i], c.test[i] = apply_temperature(c.valid[i], t), apply_temperature(c.test[i], t)
        if n in c.oof:
            c.oof[n] = (c.oof[n][0], apply_temperature(c.oof[n][1], t))
        temps[n] = t
    return temps


def comparisons(
    probs: dict[str, np.ndarray],
    c: Candidates,
    against: list[str],
    y: np.ndarray,
    test_y,
    seed: int,
    resamples: int,
    metric: str = "accuracy",
) -> list[dict]:
    """The submission against each model of `against`, on the same rows of each split: the difference in the run's
    metric, paired bootstrap 95 % interval, p-value (pipeline.inspect.scores.compare: McNemar for accuracy)."""
    out = []
    for n in against:
        i = c.names.index(n)
        row = {"a": "ensemble", "b": n, "valid": compare(probs["valid"], c.valid[i], y, seed, resamples, metric)}
        if test_y is not None:
            row["test"] = compare(probs["test"], c.test[i], test_y, seed, resamples, metric)
        out.append(row)
    return out


def leave_one_out(
    c: Candidates, members: list[str], kind: str, y, test_y, cfg: dict, seed: int, full: Outcome, fit_on_of
) -> list[dict]:
    """The chosen strategy refitted without each member in turn: its scores, and the full blend against it."""
    if len(members) < 2:
        return []
    out = []
    for drop in members:
        rest = [m for m in members if m != drop]
        idx = [c.names.index(m) for m in rest]
        o = run_strategies(
            c.valid[idx], y, c.test[idx], test_y, rest, {**cfg, "strategies": [kind]}, seed, fit_on_of(rest)
        )[kind]
        row = {
            "without": drop,
            "valid": o.record["valid"],
            "full_vs_without": {
                "valid": compare(full.valid_probs, o.valid_probs, y, seed, cfg["resamples"], cfg["metric"])
            },
        }
        if test_y is not None:
            row["test"] = o.record["test"]
            row["full_vs_without"]["test"] = compare(
                full.test_probs, o.test_probs, test_y, seed, cfg["resamples"], cfg["metric"]
            )
        out.append(row)
    return out


def per_class(pe: np.ndarray, pm: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """Per class: rows, the ensemble's and the member's accuracy (recall), the rows the ensemble fixes (it right,
    the member wrong) and breaks (the reverse); each one's precision, recall, F1 and support."""
    e, m = pe.argmax(1) == y, pm.argmax(1) == y
    rows = np.bincount(y, minlength=n_classes)
    safe = np.maximum(rows, 1)
    return {
        "rows": rows.tolist(),
        "ensemble": (np.bincount(y, e, n_classes) / safe).round(6).tolist(),
        "member": (np.bincount(y, m, n_classes) / safe).round(6).tolist(),
        "fixes": np.bincount(y, e & ~m, n_classes).astype(int).tolist(),
        "breaks": np.bincount(y, ~e & m, n_classes).astype(int).tolist(),
        "ensemble_report": class_report(y, pe.argmax(1), n_classes),
        "member_report": class_report(y, pm.argmax(1), n_classes),
    }


def submission_rows(probs: np.ndarray, ids: list[str], classes: list[str], header: list[str]) -> list[list[Any]]:
    """Kaggle rows in test-id order: `id,label` (class name), or one probability column per class when the
    sampleSubmission's columns after the id are the class names (a superset of them with `data.classes`)."""
    if len(probs) != len(ids):
        raise PipelineError(f"submission: {len(probs)} predictions for {len(ids)} test ids")
    if len(header) > 2 and set(classes) <= set(header[1:]):
        # a class the run left out (`data.classes`) gets probability 0 in its column
        cols = [classes.index(c) if c in classes else None for c in header[1:]]
        return [header] + [
            [i, *(f"{row[k]:.6f}" if k is not None else "0.000000" for k in cols)] for i, row in zip(ids, probs)
        ]
    if len(header) != 2:
        raise PipelineError(
            f"submission header {header}: expected `id,label` or an id column then one column per "
            f"class ({', '.join(classes)})"
        )
    pred = probs.argmax(1)
    return [header] + [[i, classes[k]] for i, k in zip(ids, pred)]


def write_csv(path: Path, rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


@dataclass
class Labels:
    """What the stage reads of data/prepared: labels (test ones only where labelled), test ids, meta."""

    meta: PreparedMeta
    valid_y: np.ndarray
    test_y: np.ndarray | None
    test_ids: list[str]
    train_y: np.ndarray  # the labels of `folds` entries' out-of-fold rows


def read_labels(root: Path) -> Labels:
    """The prepared data's labels, ids and meta (its images are memory-mapped and never touched here)."""
    prep = load_prepared(root)
    return Labels(prep.meta, prep.labels("valid"), prep.labels("test"), prep.test_ids, prep.labels("train"))


def model_records(params, c: Candidates, d: Labels, families: dict, weights: dict, temps: dict, raw: dict) -> dict:
    """ensemble/metrics.json `models`: each model's family, entry, scores (after its temperature) and weight."""
    models = {}
    for i, n in enumerate(c.names):
        m = {"family": families[n], "group": group_of(params, n), "valid": score(c.valid[i], d.valid_y)}
        m["weight"] = weights.get(n, 0.0)
        if d.test_y is not None:
            m["test"] = score(c.test[i], d.test_y)
        if temps:  # the scores above are after the model's temperature; these before
            m |= {
                "temperature": temps[n],
                "uncalibrated": {"valid": raw[n][0], **({"test": raw[n][1]} if raw[n][1] else {})},
            }
        models[n] = m
    return models


def verdicts(c: Candidates, d: Labels, members, best, best_member, chosen, out: Outcome, cfg, seed, fit_on_of):
    """The submission against each member and the best model (paired), without each member, and per class."""
    sub = {"valid": out.valid_probs, "test": out.test_probs}
    bm, n_classes = c.names.index(best_member), len(d.meta.classes)
    classes_of = {"against": best_member, "valid": per_class(sub["valid"], c.valid[bm], d.valid_y, n_classes)}
    if d.test_y is not None:
        classes_of["test"] = per_class(sub["test"], c.test[bm], d.test_y, n_classes)
    against = members + ([best] if best not in members else [])
    return {
        "comparisons": comparisons(sub, c, against, d.valid_y, d.test_y, seed, cfg["resamples"], cfg["metric"]),
        "leave_one_out": leave_one_out(c, members, chosen, d.valid_y, d.test_y, cfg, seed, out, fit_on_of),
        "per_class": classes_of,
    }


def run(params: dict, root: Path = Path(".")) -> EnsembleMetrics:
    """The whole stage; returns the metrics it wrote (ensemble/metrics.json)."""
    cfg, seed, names = ensemble_params(params), seed_param(params), model_names(params)
    d = read_labels(root)
    y, test_y = d.valid_y, d.test_y
    train_counts = d.meta.counts_per_class.get("train", {})
    metric, why = resolve_metric(metric_param(params), train_counts)
    cfg["metric"] = metric
    c = load_candidates(names, len(y), len(d.test_ids), len(d.meta.classes), root, n_train=len(d.train_y))
    adjust = cfg["adjust"] == "logit" or cfg["adjust"] == "auto" and metric != "accuracy" and not balanced(c)
    cfg["log_prior"] = log_prior([train_counts.get(k, 0) for k in d.meta.classes]) if adjust else None
    raw = {
        n: (score(c.valid[i], y), score(c.test[i], test_y) if test_y is not None else None) for i, n in enumerate(names)
    }
    temps = calibrate_members(c, y) if cfg["calibrate"] == "temperature" else {}
    valid_acc = {n: metric_value(metric, p, y) for n, p in zip(names, c.valid)}  # in the run's metric
    families = {n: str(cfg["families"].get(n) or family(c.info[n].arch, c.info[n].source)) for n in names}
    top = max(names, key=lambda n: (valid_acc[n], n))
    lo, hi = Score.of(score(c.valid[names.index(top)], y)).interval(metric) or (0.0, 0.0)  # no rows: no interval
    members = select(
        valid_acc,
        families,
        cfg["threshold"],
        cfg["per_family"],
        cfg["on_empty"],
        cfg["select"],
        cfg["margin"],
        noise=(hi - lo) / 2,  # what validation cannot tell from the best
    )

    def fit_on_of(ms: list[str]):
        r = oof_fit_rows(c, ms)
        return None if r is None else (oof_matrix(c, ms, r), d.train_y[r])

    idx = [names.index(m) for m in members]
    fit_on = fit_on_of(members)
    results = run_strategies(c.valid[idx], y, c.test[idx], test_y, members, cfg, seed, fit_on)
    chosen = best_strategy(results, metric) if cfg["method"] == "best" else cfg["method"]
    rec = results[chosen].record
    models = model_records(params, c, d, families, rec["weights"], temps, raw)
    best = max(names, key=lambda n: (valid_acc[n], n))  # the best model, by validation (the run's metric)
    best_member = max(members, key=lambda n: (valid_acc[n], n))
    metrics = {
        "method": cfg["method"],
        "chosen": chosen,
        **rec,
        "fitted_on": "validation split (cross-fitted scores)"
        if fit_on is None
        else f"out-of-fold predictions on {len(fit_on[1])} training rows (valid held out)",
        "metric": metric,
        "metric_why": why,
        "best_model": best,
        "best_member": best_member,
        "gain": gain(rec, models[best], metric),
        "gain_over_best_member": gain(rec, models[best_member], metric),
        "calibrate": cfg["calibrate"],
        **verdicts(c, d, members, best, best_member, chosen, results[chosen], cfg, seed, fit_on_of),
        "by_size": by_size(names, c.valid, y, c.test, test_y, metric),
        "strategies": {k: v.record for k, v in results.items()},
        "models": models,
        "submission": "submissions/ensemble.csv" if d.test_ids else None,
    }
    model = EnsembleModel(
        method=chosen,
        members=rec["members"],
        weights=rec["weights"],
        classes=d.meta.classes,
        stacker=results[chosen].stacker,
        temperatures={m: temps[m] for m in rec["members"]} if temps else None,  # each member's, before blending
        temperature=rec.get("temperature"),  # the blend's, after
        tau=rec.get("tau") or None,  # then the logit adjustment's (none where τ is 0)
        log_prior=cfg["log_prior"].tolist() if rec.get("tau") else None,
    )
    record = EnsembleMetrics.from_json(metrics, "ensemble/metrics.json", strict=True)  # every key a field
    write_outputs(root, c, d, results[chosen], record, model)
    return record


def write_outputs(
    root: Path, c: Candidates, d: Labels, out: Outcome, metrics: EnsembleMetrics, model: EnsembleModel
) -> None:
    """submissions/, ensemble/preds/, ensemble/metrics.json and ensemble/model.json, whole or not at all."""
    classes, ids, header = d.meta.classes, d.test_ids, d.meta.submission_header
    with staged(*ensemble_outputs(root)) as (subs, pr, mf, mj):
        save_ensemble_model(mj, model)
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
