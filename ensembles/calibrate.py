"""Temperature scaling (Guo et al., 2017) and post-hoc logit adjustment (Menon et al., ICLR 2021): numbers fitted on
validation rows, never on test.

A temperature T turns probabilities p into softmax(log p / T): T > 1 softens over-confident ones, T < 1 sharpens,
argmax unchanged, so accuracy is untouched and only the log-loss and the calibration move.
Logit adjustment turns p into softmax(log p − τ · log prior), the prior being the training classes' frequencies: a
model trained on imbalanced classes favours the large ones by about their prior, and subtracting it (τ = 1) is the
Bayes-optimal rule for balanced error. τ is chosen on validation by the run's metric; τ = 0 changes nothing.
"""

from __future__ import annotations

import numpy as np

from pipeline.inspect.scores import EPS, log_loss


def apply_temperature(P: np.ndarray, t: float) -> np.ndarray:
    """softmax(log P / t) over the last axis (any leading axes)."""
    z = np.log(np.clip(P, EPS, None)) / t
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def fit_temperature(P: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the log-loss of (rows, classes) probabilities on labels `y`
    (bounded scalar search over log T; 1.0 for no rows)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return 1.0
    res = minimize_scalar(
        lambda s: log_loss(apply_temperature(P, float(np.exp(s))), y),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(res.x))


TAUS = tuple(round(0.25 * i, 2) for i in range(9))  # 0, 0.25, ..., 2: the grid τ is chosen from


def log_prior(train_counts: list[int]) -> np.ndarray:
    """Log of the training classes' frequencies (a class without images counts as one, so the log is finite)."""
    n = np.maximum(np.asarray(train_counts, dtype=np.float64), 1.0)
    return np.log(n / n.sum())


def adjust_logits(P: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """softmax(log P − τ · log prior) over the last axis; τ = 0 returns P itself."""
    if tau == 0:
        return P
    z = np.log(np.clip(P, EPS, None)) - tau * np.asarray(prior)
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def fit_tau(P: np.ndarray, y: np.ndarray, prior: np.ndarray, metric: str, taus=TAUS) -> float:
    """The τ of `taus` whose adjusted validation probabilities score best in `metric`; ties go to the smaller τ
    (the least change), so τ = 0 unless adjusting helps on validation."""
    from pipeline.inspect.scores import metric_value

    if len(y) == 0:
        return 0.0
    scores = [metric_value(metric, adjust_logits(P, prior, t), y) for t in taus]
    return float(taus[int(np.argmax(scores))])  # argmax: the first of equal scores
