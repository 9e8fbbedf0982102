"""Diagnoses in words: a model that learned nothing, one that stopped while still learning, one that overfits.

A leaderboard ranks a model that took 23 optimizer steps last, and its reader concludes the architecture is bad on
their data; these say what happened instead, with the knobs that change it.
- `learned nothing`: its validation score's 95 % interval reaches chance: 1/classes for balanced accuracy and
  macro-F1, the largest class's share of the validation rows for top-1 (what always answering that class scores).
- `stopped early`: far behind the best model on validation (by more than the margin the ensemble forgives, or the
  best's interval half-width) while its training loss still fell by more than STILL_FALLING over its last epoch;
  or trained one epoch (no curve to read) and ONE_EPOCH_BEHIND behind.
- `overfits`: its validation loss rose by more than LOSS_ROSE from its lowest epoch while the training loss kept
  falling (training accuracy is not recorded: the losses are the curve fastai logs for every model).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.inspect.scores import METRIC_WORDS
from pipeline.records import MemberMetrics

STILL_FALLING = 0.05  # the training loss's fall over the last epoch, relative, that says "still learning"
LOSS_ROSE = 0.10  # the validation loss's rise from its minimum, relative, that says "overfits"
BEHIND = 0.02  # at least this far behind the best on validation (the ensemble's margin is 0.01)
ONE_EPOCH_BEHIND = 0.10  # a one-epoch model (no curve to read) this far behind is flagged for its few steps


@dataclass
class Diagnosis:
    """One model's flag and its sentence."""

    model: str
    kind: str  # learned nothing | stopped early | overfits
    words: str


def chance(metric: str, valid_counts: list[int]) -> float:
    """What a model that learned nothing scores on validation in `metric`: the largest class's share for top-1,
    1/classes for balanced accuracy and macro-F1."""
    k = max(len(valid_counts), 1)
    if metric == "accuracy" and sum(valid_counts):
        return max(valid_counts) / sum(valid_counts)
    return 1 / k


def steps(m: MemberMetrics) -> int:
    """The optimizer steps a model took: images seen over its batch size (frozen epochs included)."""
    return max(1, m.seen() // max(m.bs, 1))


def learned_nothing(name: str, m: MemberMetrics, metric: str, floor: float) -> Diagnosis | None:
    """The flag where the validation interval reaches chance (`floor`)."""
    if m.valid is None or m.valid.interval(metric) is None:
        return None
    v, (lo, hi) = m.valid.value(metric), m.valid.interval(metric)
    if lo > floor:
        return None
    epochs, n = sum(e for _, e in m.phases) + m.freeze_epochs, steps(m)
    lr = f"lr {m.lr:.2g}" + (" (lr_find's)" if m.lr_found else " (fixed)")
    return Diagnosis(
        name,
        "learned nothing",
        f"{name} learned nothing: validation {METRIC_WORDS[metric]} {100 * v:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] "
        f"reaches chance ({100 * floor:.1f} %) after {n:,} optimizer step{'s' * (n != 1)} ({epochs} epoch"
        f"{'s' * (epochs != 1)} of {m.train_images:,} images at bs {m.bs}, {lr}). Give it more steps (`epochs`, "
        "`train_limit`, a smaller `bs`) or another `lr`; its rank says nothing about the architecture.",
    )


def stopped_early(name: str, train_loss: list[float], behind: float, m: MemberMetrics) -> Diagnosis | None:
    """The flag where the model is `behind` the best and its training loss still fell over its last epoch; a model
    of one epoch has no curve to read: far behind (by ONE_EPOCH_BEHIND), it is flagged for its few steps."""
    if behind <= 0:
        return None
    if len(train_loss) == 1 and behind > ONE_EPOCH_BEHIND:
        return Diagnosis(
            name,
            "stopped early",
            f"{name} stopped early: one epoch ({steps(m):,} optimizer steps of {m.train_images:,} images), "
            f"{100 * behind:.1f} points behind the best on validation; one epoch's curve cannot say it had finished "
            "learning: more epochs (or `time_budget`) before judging the architecture.",
        )
    if len(train_loss) < 2 or train_loss[-2] <= 0:
        return None
    fall = (train_loss[-2] - train_loss[-1]) / train_loss[-2]
    if fall <= STILL_FALLING:
        return None
    return Diagnosis(
        name,
        "stopped early",
        f"{name} stopped early: {100 * behind:.1f} points behind the best on validation while its training loss "
        f"still fell {100 * fall:.0f} % over its last epoch ({train_loss[-2]:.3f} → {train_loss[-1]:.3f}): more "
        "epochs (or `time_budget`) would likely raise it.",
    )


def overfits(name: str, train_loss: list[float], valid_loss: list[float]) -> Diagnosis | None:
    """The flag where the validation loss rose from its minimum while the training loss fell."""
    if len(valid_loss) < 2 or len(train_loss) < 2:
        return None
    best = min(range(len(valid_loss)), key=valid_loss.__getitem__)
    low, end = valid_loss[best], valid_loss[-1]
    if best == len(valid_loss) - 1 or low <= 0 or (end - low) / low <= LOSS_ROSE or train_loss[-1] >= train_loss[best]:
        return None
    return Diagnosis(
        name,
        "overfits",
        f"{name} overfits: validation loss rose from {low:.3f} (epoch {best + 1}) to {end:.3f} while its training "
        f"loss fell to {train_loss[-1]:.3f}: fewer epochs, more augmentation (`flip`, `pad`) or more `wd`.",
    )


def diagnose(
    models: dict[str, MemberMetrics], metric: str, valid_counts: list[int], curves: dict[str, dict] | None = None
) -> list[Diagnosis]:
    """Every model's flags, in the models' order. `curves`: name -> {"train/loss": [...], "eval/loss": [...]}
    per epoch (absent: only `learned nothing` is judged)."""
    floor = chance(metric, valid_counts)
    models = {n: m for n, m in models.items() if m.valid is not None and getattr(m.valid, metric) is not None}
    scored = {n: m.valid.value(metric) for n, m in models.items()}  # (metrics older than the metric: not judged)
    top = max(scored.values(), default=0.0)
    best = max(scored, key=scored.get) if scored else None
    half = 0.0
    if best is not None and models[best].valid.interval(metric):
        lo, hi = models[best].valid.interval(metric)
        half = (hi - lo) / 2
    out = []
    for n, m in models.items():
        d = learned_nothing(n, m, metric, floor)
        if d is None and curves and n in scored:
            c = curves.get(n, {})
            behind = top - scored[n]
            d = stopped_early(n, c.get("train/loss", []), behind if behind > max(BEHIND, half) else 0.0, m)
            d = d or overfits(n, c.get("train/loss", []), c.get("eval/loss", []))
        if d is not None:
            out.append(d)
    return out
