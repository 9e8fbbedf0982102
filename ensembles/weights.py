"""How much each member counts: accuracy-weighted, uniform, greedy selection, fitted weights, stacking.

Every function takes arrays: `P` has shape (members, rows, classes) of probabilities, `y` the labels.
Only the validation split is ever passed in; the test split is blended with the weights found here.
"""

from __future__ import annotations

import numpy as np

from pipeline.inspect.scores import EPS, accuracy, log_loss  # noqa: F401 - the scores every strategy is judged by


def blend(P: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted average of the members' probabilities; `w` sums to 1."""
    return np.tensordot(np.asarray(w, dtype=np.float64), P, axes=1)


def accuracy_weights(accs) -> np.ndarray:
    """Each member in proportion to its validation accuracy (the benchmark's method)."""
    a = np.asarray(accs, dtype=np.float64)
    return a / a.sum() if a.sum() > 0 else np.full(len(a), 1 / len(a))


def uniform_weights(m: int) -> np.ndarray:
    """Equal weights for m members."""
    return np.full(m, 1.0 / m)


def greedy_weights(P: np.ndarray, y: np.ndarray, iters: int = 50) -> np.ndarray:
    """Forward selection with replacement (Caruana et al., 2004): at each step add the member that most
    lowers the log-loss of the running average; a member's weight is how often it was picked."""
    m = len(P)
    counts = np.zeros(m)
    total = np.zeros(P.shape[1:])
    for k in range(iters):
        losses = [log_loss((total + P[j]) / (k + 1), y) for j in range(m)]
        j = int(np.argmin(losses))  # ties: the first (members come best-first)
        counts[j] += 1
        total += P[j]
    return counts / counts.sum()


def fitted_weights(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the validation log-loss of the blend (scipy SLSQP)."""
    from scipy.optimize import minimize

    m = len(P)
    if m == 1:
        return np.ones(1)
    py = np.clip(P[:, np.arange(len(y)), y], EPS, None)  # (members, rows): each member's prob of the truth

    def f(w):
        q = np.clip(w @ py, EPS, None)
        return -np.log(q).mean(), -(py / q).mean(axis=1)

    res = minimize(
        f,
        uniform_weights(m),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(m)}],
        options={"maxiter": 500, "ftol": 1e-10},
    )
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()


def stack_features(P: np.ndarray) -> np.ndarray:
    """Rows × (members·classes) log-probabilities: the stacker's input."""
    return np.log(np.clip(P, EPS, None)).transpose(1, 0, 2).reshape(P.shape[1], -1)


def fit_stacker(P: np.ndarray, y: np.ndarray, C: float = 0.1, seed: int = 0):
    """A multinomial logistic regression on the members' standardised log-probabilities (scikit-learn).
    Standardising makes lbfgs converge much sooner than on raw log-probabilities (down to log 1e-12)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000, random_state=seed))
    return model.fit(stack_features(P), y)


def tied_features(P: np.ndarray) -> np.ndarray:
    """(members + 1, rows, classes): each member's log-probabilities and the log of their plain average."""
    L = np.log(np.clip(P, EPS, None))
    return np.concatenate([L, np.log(np.clip(P.mean(0, keepdims=True), EPS, None))])


class TiedStacker:
    """Stacking for many classes: logits_c = sum_m a_m · log p_m,c + a_avg · log mean_m p_m,c, weights shared by
    every class: a fitted mix of the geometric pool (NN logit averaging) and the arithmetic one, sharpness
    included, by L-BFGS on the multinomial log-loss with an L2 penalty 1/(2·C·rows). members + 1 parameters instead
    of the full logistic regression's (members · classes) · classes: seconds, not minutes, at 200 classes. No
    per-class bias: at 200 classes a validation split has tens of rows a class, too few to fit one."""

    def __init__(self, C: float = 0.1):
        self.C = C

    def fit(self, P: np.ndarray, y: np.ndarray) -> TiedStacker:
        """Fit one weight per member (shared by the classes) and a bias per class by L-BFGS."""
        from scipy.optimize import minimize

        F = tied_features(P)
        m, n, k = F.shape
        onehot = np.zeros((n, k))
        onehot[np.arange(n), y] = 1
        lam = 1.0 / (self.C * n)

        def f(a):
            z = np.tensordot(a, F, axes=1)
            z -= z.max(1, keepdims=True)
            lse = np.log(np.exp(z).sum(1, keepdims=True))
            q = np.exp(z - lse)
            loss = -(z[np.arange(n), y] - lse[:, 0]).mean() + 0.5 * lam * (a @ a)
            return loss, np.einsum("mnk,nk->m", F, (q - onehot) / n) + lam * a

        start = np.r_[np.zeros(m - 1), 1.0]  # the plain average
        self.a = minimize(f, start, jac=True, method="L-BFGS-B", options={"maxiter": 500}).x
        return self

    def member_weights(self) -> np.ndarray:
        """Each member's share: its own weight plus its part of the average's, in absolute value."""
        w = np.abs(self.a[:-1]) + abs(self.a[-1]) / (len(self.a) - 1)
        return w / w.sum() if w.sum() > 0 else uniform_weights(len(w))

    def to_dict(self) -> dict:
        """The fitted numbers, for ensemble/model.json."""
        return {"form": "tied", "a": self.a.tolist()}


def fit_tied_stacker(P: np.ndarray, y: np.ndarray, C: float = 0.1) -> TiedStacker:
    """A TiedStacker fitted on the members' probabilities."""
    return TiedStacker(C).fit(P, y)


def stacker_proba(model, P: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities for every class, also those the stacker never saw in its fold."""
    if isinstance(model, TiedStacker):
        return stacker_apply(model.to_dict(), P, n_classes)
    out = np.zeros((P.shape[1], n_classes))
    if P.shape[1]:  # scikit-learn refuses zero rows (a data set without a test split)
        out[:, model.classes_] = model.predict_proba(stack_features(P))
    return out


def stacker_weights(model, m: int, n_classes: int) -> np.ndarray:
    """Each member's share of the stacker's absolute coefficients: a rough importance, not a blend weight."""
    if isinstance(model, TiedStacker):
        return model.member_weights()
    coef = model[-1].coef_
    c = np.abs(coef).reshape(len(coef), m, n_classes).sum(axis=(0, 2))
    return c / c.sum() if c.sum() > 0 else uniform_weights(m)


def stacker_to_dict(model) -> dict:
    """The fitted stacker as plain numbers (no pickle): scaler, coefficients, intercepts, classes."""
    if isinstance(model, TiedStacker):
        return model.to_dict()
    scaler, lr = model[0], model[-1]
    return {
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "coef": lr.coef_.tolist(),
        "intercept": lr.intercept_.tolist(),
        "classes": lr.classes_.tolist(),
    }


def stacker_apply(d: dict, P: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities from a stacker saved by stacker_to_dict, with numpy alone; equals stacker_proba."""
    if d.get("form") == "tied":
        z = np.tensordot(np.asarray(d["a"]), tied_features(P), axes=1)
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)
    z = (stack_features(P) - np.asarray(d["mean"])) / np.asarray(d["scale"])
    logits = z @ np.asarray(d["coef"]).T + np.asarray(d["intercept"])
    if logits.shape[1] == 1:  # two classes: scikit-learn keeps one logit z for the second; softmax([0, z]) = sigmoid
        logits = np.hstack([np.zeros_like(logits), logits])
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    out = np.zeros((P.shape[1], n_classes))
    out[:, d["classes"]] = e / e.sum(1, keepdims=True)
    return out


def crossfit(P: np.ndarray, y: np.ndarray, fit, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold blended probabilities: `fit(P_train, y_train) -> predict(P_held)` on stratified folds,
    so a fitted strategy's validation score never comes from the rows it was fitted on."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    k = int(min(folds, counts[counts > 0].min()))
    if k < 2:
        raise ValueError("a class has fewer than 2 validation rows: cannot cross-fit")
    out = None
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        held = fit(P[:, tr], y[tr])(P[:, te])
        if out is None:  # (rows, classes), or more trailing axes where the fit predicts several things at once
            out = np.zeros((len(y), *held.shape[1:]))
        out[te] = held
    return out
