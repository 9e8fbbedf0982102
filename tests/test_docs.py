"""The docs' figures come from files (`make docs`, pipeline/commands/docs.py): regenerating changes no committed doc,
a marker is rewritten from its source or fails naming the file and key, every params key is in docs/reference.md
with its default, and no measurement-like number sits outside a marker."""

import json
import re
from pathlib import Path

import pytest

from ensembles.strategies import ENSEMBLE_SCHEMA
from pipeline.commands import docs
from pipeline.params import DATA_SCHEMA, TOP_LEVEL, TRAIN_SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def test_regenerating_the_docs_changes_nothing(capsys):
    """The committed README.md and docs/*.md are what their result files give: `make docs` after new results."""
    assert docs.main(["--check", "--root", str(ROOT)]) == 0, capsys.readouterr().out


@pytest.fixture
def project(tmp_path):
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "r.json").write_text(
        json.dumps({"rows": [{"name": "a", "acc": 0.9402, "n": 120003}, {"name": "b", "acc": 0.8}], "s": 752.8})
    )
    (tmp_path / "bench" / "results" / "r.md").write_text("head\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\ntail\n")
    return tmp_path


def test_a_wrong_figure_is_rewritten_and_check_reports_it(project, capsys):
    doc = project / "README.md"
    text = (
        "top-1 <!--f bench/results/r.json:rows[name=a].acc:%.2f-->93.42 % of <!--f bench/results/r.json:rows[0].n:_d-->5"
        " images in <!--f bench/results/r.json:s / 60:.1f-->16.2 min, <!--f bench/results/r.json:rows[1].acc - "
        "rows[0].acc:%+.1f-->−1.0 points\n\n<!--include bench/results/r.md#table-->\nold\n<!--/include-->\n"
    )
    doc.write_text(text)
    assert docs.main(["--check", "--root", str(project)]) == 1
    assert "--- README.md" in capsys.readouterr().out and doc.read_text() == text  # --check writes nothing
    assert docs.main(["--root", str(project)]) == 0
    assert doc.read_text() == (
        "top-1 <!--f bench/results/r.json:rows[name=a].acc:%.2f-->94.02 % of <!--f bench/results/r.json:rows[0].n:_d-->"
        "120 003 images in <!--f bench/results/r.json:s / 60:.1f-->12.5 min, <!--f bench/results/r.json:rows[1].acc - "
        "rows[0].acc:%+.1f-->−14.0 points\n\n<!--include bench/results/r.md#table-->\n| x | y |\n|---|---|\n| 1 | 2 |\n"
        "<!--/include-->\n"
    )
    assert docs.main(["--check", "--root", str(project)]) == 0


@pytest.mark.parametrize(
    "marker, words",
    [
        (
            "<!--f bench/results/r.json:rows[0].missing:.2f-->1.0",
            ["README.md:2", "bench/results/r.json", "rows[0].missing"],
        ),
        ("<!--f bench/results/gone.json:s:.1f-->1.0", ["README.md:2", "bench/results/gone.json", "s"]),
        ("<!--include bench/results/gone.md-->\n<!--/include-->", ["README.md:2", "bench/results/gone.md"]),
        ("<!--gen nothing-->\n<!--/gen-->", ["README.md:2", "nothing"]),
    ],
)
def test_a_marker_without_a_source_fails_naming_the_doc_file_and_key(project, capsys, marker, words):
    (project / "README.md").write_text(f"prose\n{marker}\n")
    assert docs.main(["--root", str(project)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


SECTIONS = {"data": DATA_SCHEMA, "train": TRAIN_SCHEMA, "ensemble": ENSEMBLE_SCHEMA}


def reference_rows() -> dict[str, str]:
    """docs/reference.md's key tables: `section.key` (or a top-level key) -> its row."""
    rows = {}
    for line in (ROOT / "docs" / "reference.md").read_text().splitlines():
        m = re.match(r"\|\s*`([a-z_]+(?:\.[A-Za-z_]+)?)`\s*\|", line)
        if m:
            rows.setdefault(m[1], line)
    return rows


@pytest.mark.parametrize("section", SECTIONS)
def test_every_schema_key_is_in_the_reference_with_its_default(section):
    """Section-aware: `train.size` and `data.size` are different rows, each with its own default."""
    rows = reference_rows()
    wrong = [
        f"{section}.{k}"
        for k, (default, _) in SECTIONS[section].items()
        if f"`{docs.yaml_word(default)}`" not in rows.get(f"{section}.{k}", "").split("|")[2]
    ]
    assert wrong == []


def test_every_top_level_key_is_in_the_reference():
    rows = reference_rows()
    assert [k for k in TOP_LEVEL if k not in rows] == []
    assert "`42`" not in rows["seed"] and "`0`" in rows["seed"] and "`auto`" in rows["metric"]


# Measurement-like numbers: speed ratios, accuracies as fractions, percentages, rates, memory, minutes.
MEASURE = re.compile(r"\d+(?:\.\d+)? ?x\b|0\.9\d{2,}|\d+(?:\.\d+)? ?(?:%|img/s|GiB|MiB|GB|min\b)")
# Numbers that look like measurements but are settings or definitions, each for a reason:
ALLOWED = [
    r"95 %",  # the level of every interval
    r"0\.999",  # `average_decay`'s default
    r"75 % of the steps",  # `average_start`'s default
    r"±10 %",  # the tolerance the time-budget figures are read against
    r"more than 3 %",  # time_budget's rule for taking one epoch more
    r"20 % seeded",  # the digits data set's test split
    r"64 MiB",  # the GPU bundle's size limit
    r"15 min",  # the default run's goal
    r"70 % weighs 0\.74 of one at 94 %",  # arithmetic of accuracy weights, not a result
    r"3x lr",  # a learning rate tried (members_imagenet_budget), a setting
    r"more than 5 % over its|rose more than 10 % from",  # the flags' thresholds (pipeline/inspect/diagnose.py)
]


def unmarked(text: str) -> str:
    """Text with what is sourced taken out: markers with their values (left as `FIG`), include and gen blocks, code
    blocks, goals (`≤ 15 min`, `≥ 94 %`) and paragraphs of external figures (said to be "not measured here")."""
    text = docs.BLOCK.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = docs.INLINE.sub("FIG", text)
    text = "\n\n".join(p for p in re.split(r"\n\s*\n", text) if not re.search(r"not\s+measured\s+here", p))
    text = re.sub(r"[≤≥]\s?[^|;,)]*", "", text)
    for a in ALLOWED:
        text = re.sub(a, "", text)
    return text


def test_no_measurement_sits_outside_a_marker():
    """README.md and docs/*.md outside markers, and params.yaml's comments (which point to the result files)."""
    found = []
    for p in docs.doc_files(ROOT):
        for line in unmarked(p.read_text()).splitlines():
            found += [f"{p.name}: {m[0]!r} in {line.strip()[:80]!r}" for m in MEASURE.finditer(line)]
    for i, line in enumerate((ROOT / "params.yaml").read_text().splitlines(), 1):
        comment = unmarked(line.partition("#")[2])
        found += [f"params.yaml:{i}: {m[0]!r}" for m in MEASURE.finditer(comment)]
    assert found == []


@pytest.mark.parametrize("line", ["fast 1.6x faster", "valid 0.9418", "93.42 %", "1 155 img/s", "1.52 GiB", "8 min"])
def test_the_lint_catches_a_hand_typed_figure(line):
    assert MEASURE.search(unmarked(line))
