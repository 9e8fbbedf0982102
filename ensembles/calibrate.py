"""Temperature scaling (Guo et al., 2017): one number per model, fitted on validation rows, never on test.

A temperature T turns probabilities p into softmax(log p / T): T > 1 softens over-confident ones, T < 1 sharpens,
argmax unchanged, so accuracy is untouched and only the log-loss and the calibration move.
"""

from __future__ import annotations

import numpy as np

from pipeline.scores import EPS, log_loss


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
