"""The files the stages hand each other (pipeline.records): each read and written through its record."""

import json
import re
from pathlib import Path

import pytest
from conftest import metrics_json

from pipeline.artifacts import load_member_metrics, load_member_spec, save_member_metrics
from pipeline.errors import PipelineError
from pipeline.records import EnsembleMetrics, EnsembleModel, MemberMetrics, MemberSpec, Score

ROOT = Path(__file__).resolve().parents[1]


def committed(pattern: str) -> list[Path]:
    return sorted(ROOT.glob(pattern))


@pytest.mark.parametrize(
    "record, pattern",
    [(MemberMetrics, "metrics/*.json"), (EnsembleMetrics, "ensemble/metrics.json")],
)
def test_the_committed_run_reads_and_writes_back_byte_for_byte(record, pattern):
    """Every key of the default run's files is a field (strict), and writing the record gives the file back."""
    files = committed(pattern)
    assert files, pattern
    for f in files:
        text = f.read_text()
        r = record.from_json(json.loads(text), str(f), strict=True)
        assert json.dumps(r.to_json(), indent=2) + "\n" == text, f


def test_a_member_round_trips_through_save_and_load(tmp_path):
    m = MemberMetrics.from_json(metrics_json(test={"accuracy": 0.4, "ci95": [0.3, 0.5], "n": 10}), strict=True)
    save_member_metrics(tmp_path / "m.json", m)
    back = load_member_metrics(tmp_path / "m.json", "m")
    assert back == m and isinstance(back.test, Score) and back.test.n == 10
    assert "folds" not in json.loads((tmp_path / "m.json").read_text())  # an unset optional key stays out
    assert back.seen() == 1 * 10  # images seen computed from the recipe where the file predates the field


def test_a_missing_or_mistyped_key_names_the_file_and_the_key(tmp_path):
    f = tmp_path / "metrics.json"
    f.write_text(json.dumps({k: v for k, v in metrics_json().items() if k != "train_s"}))
    with pytest.raises(PipelineError, match=r"metrics.json: no `train_s` key.*dvc repro train@fast"):
        load_member_metrics(f, "fast")
    f.write_text(json.dumps(metrics_json(valid={"accuracy": "high"})))
    with pytest.raises(PipelineError, match=r"metrics.json: `valid`: `accuracy`: 'high' is not a float"):
        load_member_metrics(f, "fast")
    f.write_text("{not json")
    with pytest.raises(PipelineError, match=r"metrics.json: cannot be read"):
        load_member_metrics(f, "fast")
    with pytest.raises(
        PipelineError,
        match=r"spec.json: missing; train the model first: `dvc repro train@k` \(`variant@k` for a variant\)",
    ):
        load_member_spec(tmp_path / "spec.json", "k")


def test_a_key_no_record_knows_is_refused_when_writing_and_ignored_when_reading():
    d = metrics_json(newer_key=1)
    with pytest.raises(PipelineError, match=r"`newer_key` is not a field of MemberMetrics"):
        MemberMetrics.from_json(d, "metrics/x.json", strict=True)
    assert not hasattr(MemberMetrics.from_json(d, "metrics/x.json"), "newer_key")


def test_records_written_by_an_older_version_still_load():
    """Keys added later default: a spec without precision/device, ensemble metrics without the verdicts."""
    spec = {"key": "k", "arch": "mlp", "n_in": 1, "n_out": 3, "size": 8, "native_size": 8, "mean": [0.5]}
    spec |= {"std": [0.2], "classes": ["a", "b", "c"], "ps": 0.5, "model_kwargs": {}, "tta": False}
    s = MemberSpec.from_json(spec | {"channels_last": True})
    assert (s.precision, s.device, s.cam_layer, s.folds) == ("fp32", "cpu", None, None)
    old = {"method": "accuracy", "chosen": "accuracy", "members": ["a"], "weights": {"a": 1.0}}
    old |= {"valid": {"accuracy": 0.9}, "best_model": "a", "gain": {"valid": 0.0}, "strategies": {}, "models": {}}
    e = EnsembleMetrics.from_json(old)
    assert e.comparisons == [] and e.best_member is None and e.comparison("a") is None
    m = EnsembleModel.from_json({"method": "uniform", "members": [], "weights": {}, "classes": [], "stacker": None})
    assert m.temperatures is None and m.temperature is None


def test_no_module_reads_a_stage_file_by_its_keys_outside_the_artifacts():
    """data/prepared/meta.json, metrics/<key>.json, ensemble/metrics.json, spec.json, model.json and
    bench/results/equal_compute.json are read through pipeline.artifacts only: no json.loads of them elsewhere in
    pipeline/, ensembles/ or bench/ (subpackages included)."""
    pattern = re.compile(r"json\.loads?\(.*(metrics|meta\.json|spec\.json|model\.json|equal_compute)")
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for d in ("pipeline", "ensembles", "bench")
        for p in sorted((ROOT / d).rglob("*.py"))
        if p.name != "artifacts.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
