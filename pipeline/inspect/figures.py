"""The report's figures as pure functions: arrays and records in, one PNG out (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.inspect.interpret import NUMBERED_CLASSES
from pipeline.inspect.scores import METRIC_WORDS, confusion, reliability, row_losses
from pipeline.records import SizeStep


# ----------------------------------------------------------------------------------------------- figures
def fig_members(path: Path, by_size: list[SizeStep], metric: str = "accuracy") -> None:
    """The run's metric of the metric-weighted blend of the k best models (by validation) against k."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    k = [r.k for r in by_size]
    ax.plot(k, [100 * r.valid for r in by_size], "o-", label="valid")
    if all(r.test is not None for r in by_size):
        ax.plot(k, [100 * r.test for r in by_size], "s--", label="test")
    ax.set_xticks(k, [f"{r.k}\n{r.added}" for r in by_size], fontsize=7)
    words = METRIC_WORDS[metric]
    ax.set(xlabel=f"models (best first by validation {words}; the one added)", ylabel=f"{words} %")
    ax.set_title(f"{'accuracy' if metric == 'accuracy' else words}-weighted ensemble of the k best models")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _imshow(ax, img: np.ndarray) -> None:
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
    ax.set_xticks([])
    ax.set_yticks([])


def fig_confusion(path: Path, y: np.ndarray, probs: dict[str, np.ndarray], classes: list[str], split: str) -> None:
    """Counts in the cells up to NUMBERED_CLASSES classes; beyond, a heatmap of each true class's share (log
    colour scale, so off-diagonal mistakes stay visible beside the diagonal) and the most-confused pairs go to
    the leaderboard's table instead."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    n = len(classes)
    fig, axes = plt.subplots(1, len(probs), figsize=(7.5 * len(probs), 7), squeeze=False)
    for ax, (name, p) in zip(axes[0], probs.items()):
        acc = (p.argmax(1) == y).mean()
        if n <= NUMBERED_CLASSES:
            from sklearn.metrics import ConfusionMatrixDisplay

            ConfusionMatrixDisplay.from_predictions(
                y,
                p.argmax(1),
                labels=range(n),
                display_labels=classes,
                ax=ax,
                colorbar=False,
                xticks_rotation=90,
                values_format="d",
            )
        else:
            cm = confusion(y, p.argmax(1), n).astype(np.float64)
            share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            floor = 1.0 / max(int(cm.sum(1).max()), 1)
            im = ax.imshow(np.where(share > 0, share, np.nan), cmap="viridis", norm=LogNorm(floor, 1.0))
            ax.set_facecolor("black")
            ax.set(xlabel="predicted class (index)", ylabel="true class (index)")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class (log)")
        ax.set_title(f"{name}: {split} accuracy {acc:.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_top_losses(path: Path, x: np.ndarray, y: np.ndarray, p: np.ndarray, classes: list[str], k: int = 16) -> None:
    """fastai's plot_top_losses, from arrays: the k rows with the highest loss, predicted/actual/loss/probability."""
    import matplotlib.pyplot as plt

    loss = row_losses(p, y)
    idx = np.argsort(-loss, kind="stable")[:k]
    cols = 4
    fig, axes = plt.subplots(
        (len(idx) + cols - 1) // cols, cols, figsize=(3 * cols, 3.3 * ((len(idx) + cols - 1) // cols)), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        pred = int(p[i].argmax())
        _imshow(ax, x[i])
        ax.axis("on")
        ax.set_title(f"{classes[pred]}/{classes[y[i]]}\n{loss[i]:.2f} / {p[i, y[i]]:.2f}", fontsize=9)
    fig.suptitle("Prediction/Actual / Loss/Probability of the actual class")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_predictions(
    path: Path, x: np.ndarray, y: np.ndarray, p: np.ndarray, classes: list[str], seed: int, k: int = 8
) -> None:
    """Random correct and wrong predictions with their confidence, and the confidence histogram of each."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    pred, conf = p.argmax(1), p.max(1)
    ok = pred == y
    fig = plt.figure(figsize=(2.2 * k, 8))
    for row, (mask, what) in enumerate(((ok, "correct"), (~ok, "wrong"))):
        pick = rng.permutation(np.flatnonzero(mask))[:k]
        for j, i in enumerate(pick):
            ax = fig.add_subplot(3, k, row * k + j + 1)
            _imshow(ax, x[i])
            color = "green" if what == "correct" else "red"
            ax.set_title(
                f"{classes[pred[i]]} {conf[i]:.2f}" + ("" if ok[i] else f"\n(is {classes[y[i]]})"),
                fontsize=8,
                color=color,
            )
    ax = fig.add_subplot(3, 1, 3)
    bins = np.linspace(0, 1, 41)
    ax.hist(conf[ok], bins=bins, alpha=0.6, label=f"correct ({ok.sum()})", color="green")
    ax.hist(conf[~ok], bins=bins, alpha=0.6, label=f"wrong ({(~ok).sum()})", color="red")
    ax.set_xlabel("confidence (top probability)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_lr_find(path: Path, curves: dict[str, tuple[list, float | None]]) -> None:
    """Each model's lr_find loss curve, with the lr it used dotted."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (pts, lr) in curves.items():
        if pts:
            line = ax.plot([q["lr"] for q in pts], [q["loss"] for q in pts], label=name)[0]
            if lr:
                ax.axvline(lr, color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("lr_find (dotted: the lr used)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_training(path: Path, curves: dict[str, dict[str, tuple[list, list]]]) -> None:
    """Each model's loss (train solid, valid dashed) and validation accuracy by epoch; `curves`: name -> series
    (`train/loss`, `eval/loss`, `accuracy`) -> (steps, values), as pipeline.artifacts.read_live_series gives."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    for name, c in curves.items():
        steps, tl = c["train/loss"]
        line = a1.plot([s + 1 for s in steps], tl, label=f"{name} train")[0] if steps else None
        steps, vl = c["eval/loss"]
        if steps:
            a1.plot([s + 1 for s in steps], vl, ls="--", color=line.get_color() if line else None)
        steps, acc = c["accuracy"]
        if steps:
            a2.plot([s + 1 for s in steps], acc, marker="o", label=name)
    a1.set(xlabel="epoch", ylabel="loss", title="loss (solid: train, dashed: valid)")
    a2.set(xlabel="epoch", ylabel="valid accuracy", title="validation accuracy")
    for a in (a1, a2):
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


COLUMN = {"accuracy": "top1", "balanced_accuracy": "bal_acc", "macro_f1": "macro_f1"}  # the leaderboard's


def point_groups(rows: list[dict], metric: str) -> list[tuple[float, float, list[str]]]:
    """The leaderboard's rows as (training seconds, score, names) points; rows on the same point (strategies that
    blend the same members to the same score) share one, best first."""
    groups: dict[tuple[float, float], list[str]] = {}
    for r in rows:
        v = r[COLUMN[metric]]
        if v == "":  # metrics that predate the metric
            continue
        groups.setdefault((max(float(r["train_s"]), 0.1), float(v)), []).append(r["model"])
    return sorted(((t, v, names) for (t, v), names in groups.items()), key=lambda g: (-g[1], g[0]))


def spread_labels(ys: list[float], gap: float) -> list[float]:
    """Label heights near ys (same order) at least `gap` apart: nearby points get labels that do not overlap."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    out = list(ys)
    for a, b in zip(order, order[1:]):
        out[b] = max(out[b], out[a] + gap)
    return out


def fig_acc_time(path: Path, rows: list[dict], metric: str = "accuracy") -> None:
    """The run's metric against training time (log scale): which models are worth their cost. Each point is
    numbered (points of equal cost and score merged) and the numbers are named in a table beside the plot."""
    import matplotlib.pyplot as plt

    points = point_groups(rows, metric)
    fig, (ax, side) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    lo, hi = (min(v for _, v, _ in points), max(v for _, v, _ in points)) if points else (0.0, 1.0)
    heights = spread_labels([v for _, v, _ in points], gap=max(hi - lo, 1.0) / 28)
    for i, ((t, v, names), h) in enumerate(zip(points, heights), 1):
        ens = any(n.startswith("ensemble:") for n in names)
        ax.scatter(t, v, marker="*" if ens else "o", s=120 if ens else 50, color="C3" if ens else "C0", zorder=3)
        ax.annotate(
            str(i), (t, v), xytext=(t * 1.06, h), fontsize=8, va="center", arrowprops={"arrowstyle": "-", "lw": 0.4}
        )
    ax.set_xscale("log")
    words = METRIC_WORDS[metric]
    ax.set(
        xlabel="training seconds (ensembles: sum of members')", ylabel=f"{words} %", title=f"{words} vs training time"
    )
    ax.grid(alpha=0.3)
    side.axis("off")
    lines = [f"{i:>2}  {v:g} %  {t:,.0f} s  {', '.join(names)}" for i, (t, v, names) in enumerate(points, 1)]
    side.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def reliability_points(p: np.ndarray, y: np.ndarray, few: int = 30) -> list[tuple[float, float, int, bool]]:
    """The reliability diagram's points: (mean confidence, accuracy, rows, whether the bin has under `few` rows)
    of each of the 15 confidence bins that holds a row."""
    r = reliability(p, y)
    return [(r["confidence"][k], r["accuracy"][k], n, n < few) for k, n in enumerate(r["rows"]) if n > 0]


def fig_reliability(path: Path, y: np.ndarray, probs: dict[str, np.ndarray], split: str, few: int = 30) -> None:
    """Reliability diagram: accuracy against confidence in 15 bins, each model's curve beside the diagonal, and
    below it how many rows each bin holds (a bin of under `few` rows is drawn hollow: its accuracy is noise)."""
    import matplotlib.pyplot as plt

    from pipeline.inspect.scores import ece

    fig, (ax, counts) = plt.subplots(2, 1, figsize=(6, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--", label="perfectly calibrated")
    width = 1 / 15 / (len(probs) + 1)
    for i, (name, p) in enumerate(probs.items()):
        conf, acc, rows, thin = zip(*reliability_points(p, y, few)) if len(y) else ((), (), (), ())
        ax.plot(conf, acc, color=f"C{i}", label=f"{name} (ECE {ece(p, y):.3f})")
        ax.scatter(conf, acc, color=["white" if s else f"C{i}" for s in thin], edgecolors=f"C{i}", zorder=3)
        counts.bar([c + (i - len(probs) / 2) * width for c in conf], rows, width, color=f"C{i}")
    ax.set(ylabel="accuracy", title=f"reliability on {split} (hollow: a bin of under {few} rows)")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    counts.set_yscale("log")
    counts.set(xlabel="confidence (top-class probability)", ylabel="rows in the bin")
    counts.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_gradcam(path: Path, x, y, p: np.ndarray, model, classes: list[str], split: str, k: int = 8) -> None:
    """Grad-CAM of the best model on k right and k wrong images of the split (seeded choice), each titled
    predicted/actual: where the network looked for the class it chose."""
    import matplotlib.pyplot as plt

    from pipeline.inspect.cam import overlay

    rng = np.random.default_rng(0)
    pred = p.argmax(1)
    right, wrong = np.flatnonzero(pred == y), np.flatnonzero(pred != y)
    idx = [*rng.permutation(right)[:k], *rng.permutation(wrong)[:k]]
    if not idx:
        return
    imgs = np.asarray(x[np.sort(idx)])
    cams = model.cam(imgs)
    cols = 8
    fig, axes = plt.subplots((len(idx) + cols - 1) // cols, cols, figsize=(2 * cols, 2.3 * ((len(idx) + 7) // 8)))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, i, img, cam in zip(np.ravel(axes), np.sort(idx), imgs, cams):
        ax.imshow(overlay(img, cam))
        ok = pred[i] == y[i]
        ax.set_title(f"{classes[pred[i]]}/{classes[y[i]]}", fontsize=8, color="green" if ok else "red")
    fig.suptitle(f"Grad-CAM of {model.name} on {split} images (predicted/actual; green right, red wrong)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_feature_maps(path: Path, img: np.ndarray, model, n: int = 8) -> None:
    """The first n channels after the first and after the last convolution (the Grad-CAM layer) for one image."""
    import matplotlib.pyplot as plt

    from pipeline.inspect.cam import conv_layers, feature_maps, pick_layer

    xb = model.inputs(img)
    layers = [pick_layer(model.model, conv_layers(model.model)[0]), pick_layer(model.model, None)]
    fig, axes = plt.subplots(len(layers), n + 1, figsize=(2 * (n + 1), 2.2 * len(layers)))
    for row, (name, layer) in zip(axes, layers):
        maps = feature_maps(model.model, xb, layer)
        _imshow(row[0], img[0])
        row[0].set_title("input", fontsize=8)
        for j, ax in enumerate(row[1:]):
            ax.axis("off")
            if j < len(maps):
                ax.imshow(maps[j], cmap="viridis")
                ax.set_title(f"{name} #{j}", fontsize=7)
    fig.suptitle(f"{model.name}: feature maps after an early and a late convolution")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
