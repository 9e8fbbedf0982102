"""The ensemble strategies, one registry: each strategy's name, whether it is fitted on rows (then its validation
score is cross-fitted) or given by a rule, and how it turns members' probabilities into a blend.

`P` is (members, rows, classes) of validation probabilities, `y` their labels, `accs` the members' validation
scores in the run's metric (accuracy on balanced data), `cfg` the checked `ensemble:` section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ensembles import weights as blends
from ensembles.calibrate import adjust_logits, apply_temperature, fit_tau, fit_temperature
from ensembles.weights import crossfit
from pipeline import records
from pipeline.checks import check_section, is_bool, is_dict, is_float, is_int, one_of, param, schema_of
from pipeline.errors import PipelineError
from pipeline.inspect.scores import metric_value, score
from pipeline.records import Score


@dataclass
class Fit:
    """One strategy fitted on validation rows: member weights and how it blends new probabilities."""

    weights: np.ndarray
    predict: Callable[[np.ndarray], np.ndarray]  # (members, rows, classes) -> (rows, classes)
    stacker: dict | None = None  # stacking only: the model as plain numbers, for ensemble/model.json


@dataclass(frozen=True)
class Strategy:
    """One entry of the registry: its name, whether it is fitted on rows, what it does, how it fits."""

    name: str
    fitted: bool  # fitted on rows (scored by cross-fitting), not given by a rule
    doc: str
    fit: Callable[[np.ndarray, np.ndarray, np.ndarray, dict, int], Fit]


def weighted(rule: Callable[[np.ndarray, np.ndarray, np.ndarray, dict], np.ndarray]):
    """A strategy that averages the members' probabilities with weights given by `rule`."""

    def fit(P, y, accs, cfg, seed):
        w = rule(P, y, accs, cfg)
        return Fit(w, lambda Q: blends.blend(Q, w))

    return fit


def stacking_form(members: int, n_classes: int, cfg: EnsembleParams) -> str:
    """`full`: a multinomial logistic regression on members × classes features, whose weights (features × classes)
    are its cost; `tied` beyond `stack_max_weights` of them."""
    return "full" if members * n_classes * n_classes <= cfg.stack_max_weights else "tied"


def fit_stacking(P, y, accs, cfg, seed) -> Fit:
    """The stacker: full multinomial logistic regression, or the tied form beyond `stack_max_weights`."""
    n_classes = P.shape[2]
    if stacking_form(len(P), n_classes, cfg) == "tied":
        model = blends.fit_tied_stacker(P, y, cfg.stack_C)
    else:
        model = blends.fit_stacker(P, y, cfg.stack_C, seed)
    return Fit(
        blends.stacker_weights(model, len(P), n_classes),
        lambda Q: blends.stacker_proba(model, Q, n_classes),
        blends.stacker_to_dict(model),
    )


REGISTRY: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "accuracy",
            False,
            "weights ∝ validation score in the run's metric (accuracy on balanced data: the benchmark's rule)",
            weighted(lambda P, y, accs, cfg: blends.accuracy_weights(accs)),
        ),
        Strategy(
            "uniform", False, "the plain average", weighted(lambda P, y, accs, cfg: blends.uniform_weights(len(P)))
        ),
        Strategy(
            "greedy",
            True,
            "Caruana's forward selection with replacement on validation log-loss",
            weighted(lambda P, y, accs, cfg: blends.greedy_weights(P, y, cfg.greedy_iters)),
        ),
        Strategy(
            "logloss",
            True,
            "weights on the simplex minimising validation log-loss (SLSQP)",
            weighted(lambda P, y, accs, cfg: blends.fitted_weights(P, y)),
        ),
        Strategy("stacking", True, "a logistic regression on the members' log-probabilities", fit_stacking),
    )
}
ALIASES = {"nnls": "logloss"}  # accepted in params.yaml for the same strategy
NAMES = tuple(REGISTRY)
FITTED = tuple(n for n, s in REGISTRY.items() if s.fitted)


def canonical(name: str) -> str:
    """A strategy's name, old aliases (nnls) read as their current name."""
    return ALIASES.get(name, name)


# The `ensemble:` section of params.yaml (stage ensembles/ensemble.py): default, check, why.
def is_strategies(v) -> list[str]:
    """A check for `ensemble.strategies`: all, or a list of the registry's names."""
    if v == "all":
        return list(NAMES)
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ValueError(f"expected `all` or a list of strategies from {', '.join(NAMES)}")
    for k in v:
        one_of(*NAMES, *ALIASES)(k)
    return [k for k in NAMES if k in {canonical(x) for x in v}]  # the registry's order


def is_method(v) -> str:
    """A check for `ensemble.method`: a strategy's name or `best`."""
    return canonical(one_of(*NAMES, *ALIASES, "best")(v))


@dataclass
class EnsembleParams:
    """The `ensemble:` section (stage ensembles/ensemble.py): each key's default, check and why, once."""

    select: str = param("margin", one_of("margin", "threshold"), "which rule picks the members")
    margin: float = param(
        0.01,
        is_float(0.0, 1.0, open_=False),
        "margin: valid score ≥ the best's − max(margin, its interval's half-width)",
    )
    threshold: float = param(0.85, is_float(0.0, 1.0, open_=False), "threshold: valid accuracy ≥ threshold ...")
    per_family: bool = param(True, is_bool, "... plus the best model of every family")
    on_empty: str = param("warn", one_of("warn", "fail"), "none reaches the threshold: best single model, or fail")
    method: str = param("accuracy", is_method, "the strategy that writes the submission (or `best` by validation)")
    greedy_iters: int = param(50, is_int(lo=1), "greedy selection's rounds (with replacement)")
    folds: int = param(5, is_int(lo=2), "cross-fitting of the fitted strategies' validation scores")
    stack_C: float = param(0.1, is_float(0.0, 1e6), "inverse regularisation of the stacking logistic regression")
    # stacking's logistic regression has (members × classes) × classes weights: one member at 200 classes (40 000)
    # cost minutes of L-BFGS (fitted six times); beyond this many weights it takes the tied form (one weight per
    # member, shared by the classes): seconds. 2 560 keeps the full form for up to 25 members at 10 classes
    stack_max_weights: int = param(2560, is_int(lo=1), "beyond this many weights stacking ties them")
    strategies: list | str = param("all", is_strategies, "which strategies are fitted and scored")
    families: dict = param({}, is_dict, "model name -> family, overriding the name-based guess")
    # temperature: one temperature per member fitted on the validation split before blending, one for the blend
    # after (never on test); none: the members' probabilities as trained
    calibrate: str = param("none", one_of("none", "temperature"), "temperature scaling, fitted on validation")
    resamples: int = param(2000, is_int(lo=100), "paired bootstrap resamples of every comparison's interval")
    # logit: subtract τ·log(training class prior) from the blend's log-probabilities, τ in 0..2 chosen on validation
    # by the run's metric (Menon et al., 2021; free: no retraining); auto: logit where the metric is not accuracy
    # and a member learnt the training prior (not every one was trained with one remedy: `sampler: balanced` or
    # `loss_weights: balanced`, candidates.balanced)
    adjust: str = param("auto", one_of("auto", "none", "logit"), "post-hoc logit adjustment for imbalanced classes")
    # resolved by the stage on the run, not params.yaml keys
    metric: str = "accuracy"  # the run's metric (pipeline.inspect.scores.resolve_metric)
    log_prior: np.ndarray | None = None  # `adjust`: the training classes' log prior the blend's logits are adjusted by


ENSEMBLE_SCHEMA = schema_of(EnsembleParams)


def ensemble_params(params: dict) -> EnsembleParams:
    """The checked `ensemble:` section, with defaults filled in (`nnls` read as `logloss`)."""
    cfg = EnsembleParams(**check_section(params.get("ensemble"), ENSEMBLE_SCHEMA, "ensemble"))
    if cfg.method != "best" and cfg.method not in cfg.strategies:
        raise PipelineError(
            f"params.yaml: `ensemble.method` = {cfg.method!r} is not among `ensemble.strategies` "
            f"({', '.join(cfg.strategies)}): add it there, or pick one of those"
        )
    return cfg


@dataclass
class Outcome:
    """One strategy's scores (its record in ensemble/metrics.json) and its blended probabilities."""

    record: records.Strategy
    valid_probs: np.ndarray  # cross-fitted where the strategy is fitted
    test_probs: np.ndarray
    stacker: dict | None


def fit_strategy(kind: str, P: np.ndarray, y: np.ndarray, accs: np.ndarray, cfg: EnsembleParams, seed: int) -> Fit:
    """One strategy of the registry fitted on validation rows."""
    return REGISTRY[kind].fit(P, y, accs, cfg, seed)


def fit_scored(
    kind: str, P, y, accs, cfg: EnsembleParams, seed: int, fit_on, k_folds: int
) -> tuple[Fit, np.ndarray, str]:
    """One strategy fitted, its validation probabilities (held out, or cross-fitted where it is fitted on the
    validation split itself) and how they were got."""
    fitted = REGISTRY[kind].fitted
    if fitted and fit_on is not None:
        f = fit_strategy(kind, *fit_on, accs, cfg, seed)
        return f, f.predict(P), f"fitted on {len(fit_on[1])} out-of-fold training rows; valid held out"
    f = fit_strategy(kind, P, y, accs, cfg, seed)
    if (fitted and len(P) > 1 or kind == "stacking") and k_folds >= 2:
        fit = lambda Ptr, ytr, k=kind: fit_strategy(k, Ptr, ytr, accs, cfg, seed).predict
        return f, crossfit(P, y, fit, k_folds, seed), f"cross-fitted, {k_folds} folds"
    if not fitted:
        how = "direct"
    elif k_folds < 2:
        how = "direct: a class has fewer than 2 validation rows, too few to cross-fit"
    else:
        how = "direct: one member, nothing to fit"
    return f, f.predict(P), how


def fit_post(vp: np.ndarray, y: np.ndarray, cfg: EnsembleParams) -> tuple[float | None, float | None]:
    """What follows the blend, fitted on its probabilities of rows `y` labels: the blend's temperature
    (`calibrate: temperature`, then) τ of `adjust: logit` by the run's metric; None where not asked."""
    temperature = tau = None
    if cfg.calibrate == "temperature":
        temperature = round(fit_temperature(vp, y), 6)
        vp = apply_temperature(vp, temperature)
    if cfg.log_prior is not None:
        tau = fit_tau(vp, y, cfg.log_prior, cfg.metric)
    return temperature, tau


def apply_post(p: np.ndarray, post: tuple[float | None, float | None], cfg: EnsembleParams) -> np.ndarray:
    """The blend's probabilities through its fitted temperature and logit adjustment (`fit_post`)."""
    temperature, tau = post
    if temperature is not None:
        p = apply_temperature(p, temperature)
    if tau is not None:
        p = adjust_logits(p, cfg.log_prior, tau)
    return p


def fold_fit(kind: str, cfg: EnsembleParams, seed: int):
    """`crossfit`'s fit for a strategy and what follows it: on the fold's training rows the members' metric
    scores (the `accuracy` rule's weights), the strategy, then its temperature and τ on its probabilities of those
    rows; the held-out rows see none of them."""

    def fit(Ptr: np.ndarray, ytr: np.ndarray):
        accs = np.array([metric_value(cfg.metric, p, ytr) for p in Ptr])
        f = fit_strategy(kind, Ptr, ytr, accs, cfg, seed)
        post = fit_post(f.predict(Ptr), ytr, cfg)

        def predict(Q):  # the blend as fitted, and through its temperature and τ: (rows, classes, 2)
            raw = f.predict(Q)
            return np.stack([raw, apply_post(raw, post, cfg)], axis=-1)

        return predict

    return fit


def fit_and_score(kind: str, P, y, accs, cfg: EnsembleParams, seed: int, fit_on, k_folds: int):
    """One strategy with its temperature and τ: (fit, scored validation probabilities, (temperature, τ) for test,
    how the validation rows were scored)."""
    fitted = REGISTRY[kind].fitted
    post_fitted = cfg.calibrate == "temperature" or cfg.log_prior is not None
    if post_fitted and k_folds >= 2 and not (fitted and fit_on is not None):
        f = fit_strategy(kind, P, y, accs, cfg, seed)
        both = crossfit(P, y, fold_fit(kind, cfg, seed), k_folds, seed)
        # the final temperature and τ are fitted on what the strategy scored before: its cross-fitted
        # probabilities where it is fitted, its direct ones otherwise
        cross = fitted and len(P) > 1 or kind == "stacking"
        post = fit_post(both[..., 0] if cross else f.predict(P), y, cfg)
        return f, both[..., 1], post, f"cross-fitted, {k_folds} folds (weights, temperature, τ)"
    f, vp, how = fit_scored(kind, P, y, accs, cfg, seed, fit_on, k_folds)
    if post_fitted and fitted and fit_on is not None:  # valid held out from all of it
        post = fit_post(f.predict(fit_on[0]), fit_on[1], cfg)
        how += "; temperature and τ fitted there too"
    else:  # nothing fitted after the blend, or too few rows a class to cross-fit: direct
        post = fit_post(vp, y, cfg)
    return f, apply_post(vp, post, cfg), post, how


def run_strategies(
    P: np.ndarray,
    y: np.ndarray,
    T: np.ndarray,
    test_y: np.ndarray | None,
    members: list[str],
    cfg: EnsembleParams,
    seed: int,
    fit_on: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Outcome]:
    """Every strategy on the same members: weights, validation and (where labelled) test scores, test probs.
    `cfg.metric` is the run's metric (members' scores for the metric-weighted blend); `cfg.log_prior`, where
    set, the training classes' log prior the blend's logits are adjusted by (τ chosen on validation).

    `fit_on`: (members' out-of-fold probabilities, labels) on training rows, when every member is a `folds` entry:
    the fitted strategies fit there (more rows than the validation split) and are scored on the whole validation
    split, which none of them saw. Otherwise they fit on the validation split, scored by cross-fitting.

    Test probabilities (and the record's temperature and τ) come from everything fitted on all the validation
    rows (or the out-of-fold rows). The validation score never comes from rows a fitted part saw: where a
    temperature or τ is fitted, the strategy with them is cross-fitted on the validation split (each fold's
    weights, temperature and τ from the other folds' rows), or, with `fit_on`, they are fitted on those rows too.
    (A τ chosen on the rows it is scored on wins ties in-sample: the adjusted strategies then beat the members
    and the other strategies by selection alone.)"""
    accs = np.array([metric_value(cfg.metric, p, y) for p in P])
    counts = np.bincount(y)
    k_folds = int(min(cfg.folds, counts[counts > 0].min()))  # no more folds than the rarest class has rows
    out = {}
    for kind in cfg.strategies:
        f, vp, post, how = fit_and_score(kind, P, y, accs, cfg, seed, fit_on, k_folds)
        tp = apply_post(f.predict(T), post, cfg)
        weights = {m: round(float(x), 6) for m, x in zip(members, f.weights)}
        rec = records.Strategy(
            members=members,
            weights=weights,
            temperature=post[0],
            tau=post[1],
            valid=Score.of(score(vp, y)),
            valid_scored=how,
            form=stacking_form(len(P), P.shape[2], cfg) if kind == "stacking" else None,
            test=Score.of(score(tp, test_y)) if test_y is not None else None,
        )
        out[kind] = Outcome(rec, vp, tp, f.stacker)
    return out


def best_strategy(results: dict[str, Outcome], metric: str = "accuracy") -> str:
    """Highest validation score in the run's metric (cross-fitted where fitted), then lowest validation log-loss."""
    return min(results, key=lambda k: (-results[k].record.valid.value(metric), results[k].record.valid.loss))
