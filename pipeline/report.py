"""Stage `report`: the leaderboard (timm's results-CSV shape) and the figures of a benchmark run.

Reads:  params.yaml (`archs`, `variants`), data/prepared/, metrics/<name>.json, preds/<name>/, models/<best>/,
        ensemble/metrics.json, ensemble/preds/, dvclive/<name>/plots/ (training curves, lr_find curves).
Writes: reports/index.html (the run on one self-contained page: verdict, leaderboard, figures, per class, budgets),
        reports/summary.txt (what the stage prints: the verdict, the models flagged, the top rows),
        reports/leaderboard.csv and .md (one row per model and per ensemble strategy, best first; the models
        flagged as having learned nothing, stopped early or overfit: pipeline.inspect.diagnose),
        reports/figures/*.png (confusion matrices, top losses, confident right and wrong predictions,
        lr_find curves, training curves, accuracy against training time and against the number of members,
        Grad-CAM of the best model on right and wrong images, its feature maps after an early and a late conv).
        The "best model" of the figures is the best by validation accuracy, as the ensemble stage picked it.
Run:    python -m pipeline.report        (or `dvc repro report`)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ensembles.calibrate import apply_temperature
from pipeline.artifacts import (
    EQUAL_COMPUTE,
    RUNG_RE,
    ensemble_metrics_file,
    load_ensemble_metrics,
    load_equal_compute,
    load_metrics_of,
    load_preds,
    load_prepared,
    load_submission_preds,
    model_dir,
    read_live_curve,
    read_live_series,
    reports_dir,
    with_snapshots,
)
from pipeline.errors import PipelineError
from pipeline.inspect import figures as F
from pipeline.inspect.diagnose import diagnose
from pipeline.inspect.interpret import NUMBERED_CLASSES, confused_pairs, groups
from pipeline.inspect.leaderboard import (
    COLUMNS,
    budget_line,
    hardware_line,
    leaderboard,
    markdown,
    markdown_folds,
    markdown_groups,
    markdown_refit,
    metric_line,
)
from pipeline.inspect.page import page, short_log
from pipeline.inspect.racing import plan_md, race_md, read_json
from pipeline.inspect.tables import write_csv
from pipeline.inspect.verdicts import markdown_class_report, markdown_confused, markdown_per_class, verdicts_md
from pipeline.io import staged
from pipeline.params import group_of, load_params, model_names
from pipeline.records import EqualCompute, MemberMetrics

SERIES = ("train/loss", "eval/loss", "accuracy")  # the DVCLive series the training-curves figure draws


def look_inside(figs: Path, folder: Path, x, y, p: np.ndarray, classes: list[str], split: str) -> None:
    """gradcam.png and feature_maps.png of the model in `folder`; a note instead where the model is absent
    (predictions pulled without their models) or has no convolution (logreg, mlp)."""
    from pipeline.inspect.cam import conv_layers
    from pipeline.learn.trained import Model

    if not (folder / "spec.json").is_file():
        print(f"note: {folder} is absent: no Grad-CAM or feature-map figures", file=sys.stderr)
        return
    model = Model(folder)
    if not conv_layers(model.model):
        print(f"note: {model.name} has no convolution: no Grad-CAM or feature-map figures", file=sys.stderr)
        return
    F.fig_gradcam(figs / "gradcam.png", x, y, p, model, classes, split)
    F.fig_feature_maps(figs / "feature_maps.png", np.array(x[:1]), model)  # a writable copy of the memmap


def lr_curves(root: Path, models: dict[str, MemberMetrics]) -> dict[str, tuple[list, float | None]]:
    """Each model's lr_find curve (empty for a fixed lr) and the valley it chose."""
    return {n: (read_live_curve(root, n), m.lr if m.lr_found else None) for n, m in models.items()}


def equal_compute(root: Path) -> EqualCompute | None:
    """bench/results/equal_compute.json where it exists (a benchmark's, declared as the stage's dependency)."""
    f = root / EQUAL_COMPUTE
    return load_equal_compute(f) if f.is_file() else None


def run(params: dict, root: Path = Path(".")) -> list[dict]:
    """The whole stage: reads the run's files, writes reports/ whole; returns the leaderboard's rows."""
    import matplotlib

    matplotlib.use("Agg")
    names = with_snapshots(root, model_names(params))
    models = load_metrics_of(root, names)
    ens = load_ensemble_metrics(ensemble_metrics_file(root))
    missing = sorted(set(names) - set(ens.models))
    if missing:
        raise PipelineError(f"ensemble/metrics.json has no entry for {', '.join(missing)}; rerun `dvc repro ensemble`")
    prep = load_prepared(root)
    meta, labeled = prep.meta, ens.test is not None
    split = "test" if labeled else "valid"
    x, y = prep.arrays[f"{split}_x"], prep.labels(split)
    ens_p = load_submission_preds(root, split)
    best = ens.best_model  # by validation
    best_p = load_preds(root, best, split)
    rows = leaderboard(models, ens)
    classes, metric = meta.names, ens.judged_by()
    curves = {n: {s: read_live_series(root, n, s) for s in SERIES} for n in names}
    flags = diagnose(models, metric, list(meta.counts_per_class.get("valid", {}).values()), values(curves))
    with staged(reports_dir(root)) as (out,):
        figs = out / "figures"
        figs.mkdir(parents=True)
        write_csv(out / "leaderboard.csv", COLUMNS, rows)
        group_rows = groups(models, entries_of(params, names), labeled, metric)
        confused = confused_pairs(y, ens_p, classes) if len(classes) > NUMBERED_CLASSES else []
        parts = {
            "verdict": verdicts_md(ens, classes, equal_compute(root), labeled, per_class=False),
            "leaderboard": markdown_groups(group_rows, labeled, metric) + markdown_folds(models),
            "per_class": per_class_md(ens, classes, confused, split),
            "budgets": budgets_md(ens, models, root, labeled),
        }
        (out / "leaderboard.md").write_text(
            parts["budgets"]
            + flags_md(flags)
            + markdown(rows, labeled, meta.counts.get("test", 1), metric)
            + parts["verdict"]
            + parts["per_class"]
            + parts["leaderboard"]
        )
        if ens.by_size:
            F.fig_members(figs / "accuracy_vs_members.png", ens.by_size, metric)
        F.fig_confusion(
            figs / "confusion_matrix.png", y, {best: best_p, f"ensemble ({ens.chosen})": ens_p}, classes, split
        )
        t = ens.models[best].temperature  # `calibrate: temperature`: the member as the blend saw it
        best_cal = apply_temperature(best_p.astype(np.float64), t) if t else best_p
        F.fig_reliability(figs / "reliability.png", y, {best: best_cal, f"ensemble ({ens.chosen})": ens_p}, split)
        F.fig_top_losses(figs / "top_losses.png", x, y, ens_p, classes)
        F.fig_predictions(figs / "predictions.png", x, y, ens_p, classes, seed=0)
        F.fig_lr_find(figs / "lr_find.png", lr_curves(root, models))
        F.fig_training(figs / "training_curves.png", curves)
        F.fig_acc_time(figs / "accuracy_vs_time.png", rows, metric)
        look_inside(figs, model_dir(root, best), x, y, best_p, classes, split)
        title = f"Benchmark of {len(names)} models on {meta.source.get('name') or meta.source.get('path', 'the data')}"
        (out / "index.html").write_text(page(title, ens, rows, COLUMNS, flags, parts, figs))
        (out / "summary.txt").write_text(short_log(ens, rows, flags, reports_dir(root) / "index.html"))
    return rows


def entries_of(params: dict, names: list[str]) -> dict[str, str]:
    """Each model's entry, whose models the report averages; a race's runs are the same entry at other budgets:
    entries of their own, never replicas."""
    return {n: n if RUNG_RE.fullmatch(n) else group_of(params, n) for n in names}


def budgets_md(ens, models: dict, root: Path, labeled: bool) -> str:
    """The metric, the budget the rows compare at, what `budget` gave each, the race, the hardware, any refit."""
    race = race_md(read_json(root / "race" / "race.json"))
    return (
        metric_line(ens)
        + budget_line(models)
        + plan_md(root)
        + race
        + hardware_line(models)
        + markdown_refit(models, labeled)
    )


def values(curves: dict) -> dict:
    """The DVCLive series without their steps: name -> series -> values per epoch."""
    return {n: {s: c[1] for s, c in cs.items()} for n, cs in curves.items()}


def per_class_md(ens, classes: list[str], confused: list[dict], split: str) -> str:
    """The per-class tables: against the best member, precision / recall / F1, the most-confused pairs."""
    return (
        markdown_per_class(ens, classes)
        + markdown_class_report(ens, classes)
        + markdown_confused(confused, f"the ensemble ({ens.chosen})", split)
    )


def flags_md(flags: list) -> str:
    """The models flagged (pipeline.inspect.diagnose), one line each, above the table."""
    if not flags:
        return ""
    return "Flags:\n\n" + "".join(f"- **{d.kind}**: {d.words}\n" for d in flags) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.report`: the stage, then its short summary printed (reports/index.html has it all)."""
    argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n")[0]).parse_args(argv)
    try:
        run(load_params())
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print((reports_dir() / "summary.txt").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
