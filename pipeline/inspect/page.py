"""reports/index.html: the run on one self-contained page (figures embedded, no network), and the stage's short log.

The verdict first (what was submitted, how good and how sure, whether the ensemble paid, the models flagged), then
the leaderboard's columns that matter (every column behind a toggle, and in leaderboard.csv), the figures each
with a line saying what it shows, the per-class tables, and the budgets and hardware. The page is built from the
same markdown the report writes to leaderboard.md (one implementation of each table), turned into HTML here.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from pipeline.inspect.diagnose import Diagnosis
from pipeline.inspect.scores import METRIC_WORDS
from pipeline.records import EnsembleMetrics

# the leaderboard's columns shown on the page; the rest behind the toggle
MAIN = ["model", "top1", "top1_ci95", "bal_acc", "macro_f1", "valid_top1", "valid_bal_acc", "images_seen", "train_s"]
MAIN += ["weight"]

# each figure of reports/figures/ and the line saying what it shows, in the page's order
CAPTIONS = {
    "accuracy_vs_time.png": "Score against training seconds: what each model's budget bought.",
    "accuracy_vs_members.png": "The blend of the k best models by validation, k = 1, 2, …: where more members stop paying.",
    "confusion_matrix.png": "Which classes the best model and the submission confuse, rows the true class.",
    "reliability.png": "Calibration: predicted confidence against observed accuracy (the diagonal is perfect).",
    "training_curves.png": "Training and validation loss and accuracy per epoch: a curve still falling could train longer.",
    "lr_find.png": "lr_find's loss against learning rate, with the valley each model trained at.",
    "top_losses.png": "The images the submission got most confidently wrong (test; validation where test is unlabelled).",
    "predictions.png": "A sample of predictions, right and wrong, with their confidence.",
    "gradcam.png": "Grad-CAM of the best model: where it looked, on right and wrong images.",
    "feature_maps.png": "The best model's feature maps after an early and a late convolution.",
}

CSS = """body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1340px;padding:16px 24px;
color:#1d2330}h1{font-size:22px;margin:4px 0 10px}h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid #dde}
.verdict{background:#f1f6ff;border:1px solid #c8dafc;border-radius:8px;padding:10px 16px}.verdict p{margin:6px 0}
.big{font-size:18px;font-weight:600}.flag{background:#fff4e5;border:1px solid #f5c26b;border-radius:6px;
padding:6px 10px;margin:6px 0}table{border-collapse:collapse;margin:6px 0;font-size:13.5px}
td,th{border:1px solid #d6d9e0;padding:3px 8px;text-align:right}th{background:#f4f5f8}td:first-child,th:first-child
{text-align:left}tr.chosen td{font-weight:600;background:#f3fbf3}figure{display:inline-block;margin:8px 12px 8px 0;
vertical-align:top;max-width:640px}figure img{max-width:100%;border:1px solid #e3e5ea}figcaption{font-size:13px;
color:#4a5160}details{margin:6px 0}summary{cursor:pointer;color:#2456b8}code{background:#f4f5f8;padding:0 3px}"""


def inline(text: str) -> str:
    """Markdown's inline bits the report uses (`code`, **bold**), escaped."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)


def table_html(header: list[str], rows: list[list], chosen: str | None = None) -> str:
    """An HTML table; a row whose first cell is `chosen` is marked."""
    head = "".join(f"<th>{inline(str(h))}</th>" for h in header)
    body = []
    for r in rows:
        cls = ' class="chosen"' if chosen is not None and str(r[0]) == chosen else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{inline(str(c))}</td>" for c in r) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def md_html(md: str) -> str:
    """The report's markdown (paragraphs and pipe tables) as HTML."""
    out, para, rows = [], [], []

    def flush():
        if para:
            out.append(f"<p>{inline(' '.join(para))}</p>")
            para.clear()
        if rows:
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            body = [c for c in cells[1:] if not all(set(x) <= set("-: ") for x in c)]
            out.append(table_html(cells[0], body))
            rows.clear()

    for line in md.splitlines():
        if line.lstrip().startswith("|"):
            if para:
                flush()
            rows.append(line)
        elif not line.strip():
            flush()
        else:
            if rows:
                flush()
            para.append(line.strip())
    flush()
    return "\n".join(out)


def headline(ens: EnsembleMetrics) -> str:
    """One sentence: what was submitted and how good, how sure (the report's split, the run's metric)."""
    metric, used = ens.judged_by(), [n for n, w in ens.weights.items() if w > 0]
    split, s = ("test", ens.test) if ens.test is not None else ("validation", ens.valid)
    lo_hi = s.interval(metric)
    ci = f" [{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]" if lo_hi else ""
    if len(used) == 1:
        alone = all(st.used() == used for st in ens.strategies.values())
        what = f"one model, {used[0]}" + (" (every strategy gave it the whole weight)" if alone else "")
    else:
        what = f"ensemble:{ens.chosen} of {len(used)} models ({', '.join(used)})"
    return f"Submitted {what}: {split} {METRIC_WORDS[metric]} {100 * s.value(metric):.2f} %{ci}."


def short_log(ens: EnsembleMetrics, rows: list[dict], flags: list[Diagnosis], page: Path, top: int = 5) -> str:
    """What the report stage prints: the headline, the verdict, the flags, the top rows, where the page is."""
    lines = [headline(ens)]
    lines += [f"flag: {d.words}" for d in flags] or ["No model flagged (learned nothing, stopped early, overfits)."]
    cols = [
        "model",
        "top1",
        "top1_ci95",
        "bal_acc",
        *(["macro_f1"] if ens.judged_by() == "macro_f1" else []),
        "train_s",
    ]
    lines.append(f"Top {min(top, len(rows))} of {len(rows)} rows (all in reports/leaderboard.md):")
    lines += ["  " + "  ".join(f"{c}={r[c]}" for c in cols) for r in rows[:top]]
    lines.append(f"The whole report: {page} (open it in a browser; reports/leaderboard.md for diffs)")
    return "\n".join(lines) + "\n"


def figures_html(figs: Path) -> str:
    """Every PNG of the figures folder embedded, with its caption, in CAPTIONS' order."""
    out = []
    names = [n for n in CAPTIONS if (figs / n).is_file()] + sorted(
        p.name for p in figs.glob("*.png") if p.name not in CAPTIONS
    )
    for n in names:
        data = base64.b64encode((figs / n).read_bytes()).decode()
        cap = CAPTIONS.get(n, n)
        out.append(
            f'<figure><img alt="{html.escape(n)}" src="data:image/png;base64,{data}"><figcaption>'
            f"<b>{html.escape(n)}</b>: {html.escape(cap)}</figcaption></figure>"
        )
    return "\n".join(out)


def page(
    title: str,
    ens: EnsembleMetrics,
    rows: list[dict],
    columns: list[str],
    flags: list[Diagnosis],
    parts: dict[str, str],
    figs: Path,
) -> str:
    """The page. `parts`: the report's markdown pieces by section (verdict, per_class, budgets)."""
    chosen = next((r["model"] for r in rows if "*" in str(r["model"])), None)
    main = [c for c in MAIN if c in columns]
    flagged = "".join(f'<div class="flag">{inline(d.words)}</div>' for d in flags) or (
        "<p>No model flagged: none learned nothing, stopped while still learning or overfit.</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{html.escape(title)}</title><style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<section class="verdict"><p class="big">{inline(headline(ens))}</p>
{md_html(parts.get("verdict", ""))}
{flagged}</section>
<h2>Leaderboard</h2>
{table_html(main, [[r[c] for c in main] for r in rows], chosen)}
<details><summary>Every column (also reports/leaderboard.csv)</summary>
{table_html(columns, [[r[c] for c in columns] for r in rows], chosen)}</details>
{md_html(parts.get("leaderboard", ""))}
<h2>Figures</h2>
{figures_html(figs)}
<h2>Per class</h2>
{md_html(parts.get("per_class", "")) or "<p>-</p>"}
<h2>Budgets and hardware</h2>
{md_html(parts.get("budgets", ""))}
</body></html>
"""
