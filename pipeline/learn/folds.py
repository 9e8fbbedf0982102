"""`folds: K` and `refit: true`: functions over one member (pipeline.learn.member.train_arch). K fold models with their
out-of-fold predictions and averaged valid/test predictions; a refit on train + valid with the validated recipe.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pipeline.data.rows import Rows
from pipeline.errors import PipelineError
from pipeline.inspect.scores import score
from pipeline.learn.distributed import say
from pipeline.learn.member import TrainResult, score_on_test, train_arch
from pipeline.learn.recipe import training_pool
from pipeline.params import TrainSpec
from pipeline.records import FoldScores, Refit, Score


def fold_splits(key: str, y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's StratifiedKFold of the pool's labels: (train, held-out) positions per fold."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    if counts[counts > 0].min() < k:
        raise PipelineError(
            f"{key}: `folds` = {k}, but a class has only {counts[counts > 0].min()} training images; "
            "each class needs at least one image per fold: lower `folds` or raise `train_limit`"
        )
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def sd(a) -> float:
    """Sample standard deviation (ddof 1), as the report's groups table; 0 for a single value."""
    return float(np.std(a, ddof=1)) if len(a) > 1 else 0.0


def train_folds(key, spec: TrainSpec, arrays, meta, seed, device, live, evaluate) -> TrainResult:
    """`folds: K`: K models, each trained on K-1 folds of the pool and predicting its held-out fold (out-of-fold),
    the validation and the test split. The first fold fixes the lr (lr_find when `auto`); the others reuse it."""
    pool = training_pool(arrays, spec, seed)
    py = arrays["train_y"][pool]
    splits = fold_splits(key, py, spec.folds, seed)
    base = replace(spec, folds=None, refit=False, train_limit=None)
    results: list[TrainResult] = []
    for i, (tr, te) in enumerate(splits):
        a = {**arrays, "train_x": Rows.of(arrays["train_x"]).take(pool[tr]), "train_y": py[tr]}
        held_out = (Rows.of(arrays["train_x"]).take(pool[te]), py[te])
        say(f"{key}: fold {i + 1}/{spec.folds}: {len(tr)} training images, {len(te)} held out")
        s = base if i == 0 else later_fold(base, results[0])
        results.append(train_arch(key, s, a, meta, seed, device, live, evaluate, held_out=held_out))
    if not evaluate:
        return results[0]
    return combine_folds(results, pool, splits, arrays, spec)


def later_fold(base: TrainSpec, first: TrainResult) -> TrainSpec:
    """The recipe of the folds after the first: its lr and, under `time_budget`, its chosen epochs (or phases, and
    train_limit), with no budget of their own. Each fold choosing anew could pick other epochs: their snapshots
    would not line up, and the refit (which takes the first fold's choice) would not be the recipe validated."""
    budget = first.metrics.time_budget if first.metrics else None  # None on data-parallel ranks > 0 (no budgets)
    chosen = (budget or {}).get("chosen", {})
    return replace(base, lr=first.lr, **({"time_budget": None, **chosen} if budget else {}))


def peak(metrics) -> int | None:
    """The largest GPU peak among several models' metrics (each reset per model); None on a CPU."""
    peaks = [m.peak_gpu_mib for m in metrics if m.peak_gpu_mib is not None]
    return max(peaks) if peaks else None


def combine_folds(results: list[TrainResult], pool, splits, arrays, spec: TrainSpec) -> TrainResult:
    """The entry's outputs from its fold models: valid and test predicted by their average, the out-of-fold
    predictions over the pool, and mean ± std of the fold models' held-out (CV) and validation accuracies."""
    first = results[0]
    preds = {s: np.mean([r.preds[s] for r in results], axis=0) for s in ("valid", "test")}
    oof = np.zeros((len(pool), first.preds["oof"].shape[1]), dtype=first.preds["oof"].dtype)
    for (_, te), r in zip(splits, results):
        oof[te] = r.preds["oof"]
    preds["oof"], preds["oof_rows"] = oof, pool.astype(np.int64)
    cv = [r.metrics.oof.accuracy for r in results]
    va = [r.metrics.valid.accuracy for r in results]
    train_s = sum(r.metrics.train_s for r in results)
    seen = sum(r.metrics.train_s * r.metrics.img_per_s for r in results)
    m = replace(
        first.metrics,
        oof=None,
        valid=Score.of(score(preds["valid"], arrays["valid_y"])),
        test=score_on_test(preds["test"], arrays),
        train_s=round(train_s, 2),
        img_per_s=round(seen / train_s, 1) if train_s else 0.0,
        images_seen=sum(r.metrics.images_seen for r in results),
        eval_s=round(sum(r.metrics.eval_s for r in results), 2),
        peak_gpu_mib=peak(r.metrics for r in results),
        train_images=len(pool),
        folds=FoldScores(
            k=len(results),
            cv_accuracy=cv,  # each fold model on its held-out fold
            cv_mean=float(np.mean(cv)),
            cv_std=sd(cv),
            oof=Score.of(score(oof, arrays["train_y"][pool])),  # all out-of-fold predictions together
            valid_accuracy=va,  # each fold model on the validation split (`valid` is their average's)
            valid_mean=float(np.mean(va)),
            valid_std=sd(va),
        ),
    )
    model_spec = replace(first.spec, folds=[f"fold{i}" for i in range(len(results))], train=spec.to_dict())
    out = TrainResult(first.model, first.lr, model_spec, preds, m, first.lr_curve, folds=results)
    if first.snapshots:  # `snapshots`: the j-th snapshot member is the average of every fold model's j-th
        out.snapshots = [
            combine_folds([r.snapshots[j] for r in results], pool, splits, arrays, spec)
            for j in range(len(first.snapshots))
        ]
    return out


def train_refit(key, spec: TrainSpec, validated: TrainResult, arrays, meta, seed, device, evaluate) -> TrainResult:
    """`refit: true`: a fresh model with the validated recipe (its lr, epochs, phases) trained on the validated
    run's training images plus the validation split; it predicts test. Nothing is validated on it: the
    validation figures stay the validated run's, and the test score of the validated model is kept beside it."""
    pool = training_pool(arrays, spec, seed)
    a = {
        **arrays,
        "train_x": Rows.concat(Rows.of(arrays["train_x"]).take(pool), arrays["valid_x"]),
        "train_y": np.concatenate([arrays["train_y"][pool], arrays["valid_y"]]),
        # fastai needs a validation loader: an empty one, skipped (NoValidation)
        "valid_x": Rows.of(arrays["valid_x"]).take([]),
        "valid_y": arrays["valid_y"][:0],
    }
    say(f"{key}: refit on train + valid: {len(a['train_y'])} images, lr {validated.lr:.2e}")
    budget = validated.metrics.time_budget if validated.metrics else None  # None on data-parallel ranks > 0
    chosen = (budget or {}).get("chosen", {})  # the validated run's budgeted epochs
    s = replace(spec, lr=validated.lr, folds=None, refit=False, train_limit=None, time_budget=None)
    s = replace(s, **{k: v for k, v in chosen.items() if k != "train_limit"})
    r = train_arch(key, s, a, meta, seed, device, None, evaluate, refit=True)
    if not evaluate:
        return r
    out = merge_refit(validated, r, spec)
    if validated.snapshots:  # each snapshot member: valid from the validated run's, test from the refit's
        out.snapshots = [merge_refit(v, rs, spec) for v, rs in zip(validated.snapshots, r.snapshots)]
    return out


def merge_refit(validated: TrainResult, r: TrainResult, spec: TrainSpec) -> TrainResult:
    """The entry's outputs from its validated run and its refit: valid figures from the first, test and the model
    from the second."""
    v = validated.metrics
    m = replace(
        v,
        test_validated=v.test,  # the validated model's test score, for comparison
        test=r.metrics.test,
        train_s=round(v.train_s + r.metrics.train_s, 2),
        images_seen=v.images_seen + r.metrics.images_seen,
        peak_gpu_mib=peak([v, r.metrics]),
        refit=Refit(
            train_images=r.metrics.train_images,
            lr=r.lr,
            phases=r.metrics.phases,
            train_s=r.metrics.train_s,
            figures="valid: the validated run (its model never saw the validation split); test and the "
            "submission: the refit model",
        ),
    )
    preds = {**validated.preds, "test": r.preds["test"]}
    refit = {"train_images": r.metrics.train_images, "validated_lr": validated.lr}
    model_spec = replace(r.spec, refit=refit, train=spec.to_dict())
    return TrainResult(r.model, validated.lr, model_spec, preds, m, validated.lr_curve)
