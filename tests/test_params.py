"""params.yaml and the schemas in pipeline/params.py: each default is defined once, and they cannot drift."""

from dataclasses import fields

import pytest
import yaml
from conftest import ROOT

from ensembles.strategies import ENSEMBLE_SCHEMA
from pipeline.errors import PipelineError
from pipeline.params import (
    DATA_SCHEMA,
    TRAIN_SCHEMA,
    TrainSpec,
    group_of,
    make_spec,
    model_names,
    train_spec,
)

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
# data.path names where the benchmark's raw files are; the schema cannot default it (it depends on data.name)
# ensemble.calibrate: the default run calibrates (chosen on validation: NLL 0.24 -> 0.16, ECE 0.09 -> 0.01, the
# same accuracy); the code's default leaves the members' probabilities as trained
CHOICES = {("data", "path"), ("ensemble", "calibrate")}


@pytest.mark.parametrize(
    "section,schema", [("data", DATA_SCHEMA), ("train", TRAIN_SCHEMA), ("ensemble", ENSEMBLE_SCHEMA)]
)
def test_params_yaml_states_the_schema_defaults(section, schema):
    """Every key params.yaml writes in a defaults section is the schema's default: the comment beside it is the
    default's reason, and nothing else says otherwise."""
    written = PARAMS[section]
    drift = {k: (v, schema[k][0]) for k, v in written.items() if (section, k) not in CHOICES and schema[k][0] != v}
    assert drift == {}, f"params.yaml `{section}` vs pipeline/params.py (yaml, schema): {drift}"
    assert set(written) <= set(schema)


BASE = {"seed": 3, "train": {"epochs": 2}, "archs": {"fast": {"arch": "resnet9", "lr": 0.005}, "mlp": {}}}


def test_a_variant_is_its_entry_with_a_few_keys_overridden():
    params = {**BASE, "variants": {"fast-s1": {"of": "fast", "seed": 1, "flip": False}}}
    assert model_names(params) == ["fast", "mlp", "fast-s1"]
    assert group_of(params, "fast-s1") == "fast" and group_of(params, "mlp") == "mlp"
    entry, variant = train_spec(params, "fast").to_dict(), train_spec(params, "fast-s1").to_dict()
    assert {k for k in entry if entry[k] != variant[k]} == {"seed", "flip"}
    assert variant["arch"] == "resnet9" and variant["lr"] == 0.005 and variant["seed"] == 1 and entry["seed"] is None


def test_train_spec_fields_are_the_schema_keys():
    """TrainSpec names the fields; TRAIN_SCHEMA holds their defaults and checks: one cannot gain a key alone."""
    assert [f.name for f in fields(TrainSpec)] == list(TRAIN_SCHEMA)
    spec = make_spec({"epochs": 2})
    assert spec.epochs == 2 and spec.bs == TRAIN_SCHEMA["bs"][0]
    with pytest.raises(AttributeError):
        spec.epoch  # noqa: B018 - a typo fails at once, where a dict's .get would have returned None


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "variants,match",
    [
        ({"fast-s1": {"seed": 1}}, r"variants.fast-s1. needs `of: <an archs entry>` \(got None\); entries: fast, mlp"),
        ({"fast-s1": {"of": "fsat"}}, r"got 'fsat'\); did you mean fast"),
        ({"mlp": {"of": "fast"}}, r"`variants.mlp` has the name of an `archs` entry"),
        ({"fast-s1": {"of": "fast", "epoch": 3}}, r"unknown key `variants.fast-s1.epoch` \(did you mean epochs"),
        ({"fast/1": {"of": "fast"}}, r"key 'fast/1' cannot name a stage"),
        ([1, 2], r"`variants` must be a mapping"),
    ],
)
def test_bad_variants_name_the_key(variants, match):
    with pytest.raises(PipelineError, match=match):
        train_spec({**BASE, "variants": variants}, "fast")
        train_spec({**BASE, "variants": variants}, "fast-s1")


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "entry,match",
    [
        ({"average": "swa", "average_start": 1.0}, r"archs.fast.average_start. = 1.0: must be below 1.0: SWA"),
        ({"snapshots": 3}, r"`archs.fast.snapshots` = 3 members from the last epochs, but it trains 2 epochs"),
        ({"snapshots": 3, "phases": [[16, 1], [24, 1]]}, r"trains 2 epochs: set snapshots ≤ 2"),
    ],
)
def test_settings_that_would_do_nothing_are_errors(entry, match):
    with pytest.raises(PipelineError, match=match):
        train_spec({**BASE, "archs": {**BASE["archs"], "fast": {**BASE["archs"]["fast"], **entry}}}, "fast")


def test_snapshots_within_the_epochs_or_a_time_budget_pass():
    ok = {"snapshots": 2, "average_start": 0.9}
    assert train_spec({**BASE, "archs": {"fast": ok}}, "fast").snapshots == 2
    assert train_spec({**BASE, "archs": {"fast": {"snapshots": 5, "time_budget": 60}}}, "fast").snapshots == 5


@pytest.mark.bad_input
def test_an_unknown_top_level_key_is_named_with_the_nearest(tmp_path):
    from pipeline.params import load_params

    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({**BASE, "ensemle": {"method": "uniform"}, "trian": {}}))
    with pytest.raises(
        PipelineError,
        match=r"unknown top-level key `ensemle` \(did you mean `ensemble`\?\), `trian` "
        r"\(did you mean `train`\?\); the keys are seed, metric",
    ):
        load_params(f)
    f.write_text(yaml.safe_dump(BASE))
    assert load_params(f) == BASE
    assert set(load_params(ROOT / "params.yaml")) <= set(PARAMS)  # the project's own passes


def test_seeds_command_adds_variants_and_keeps_comments(tmp_path, capsys):
    import shutil
    from pathlib import Path

    from pipeline.commands import seeds
    from pipeline.params import group_of, model_names, train_spec

    p = tmp_path / "params.yaml"
    shutil.copy(Path(__file__).parents[1] / "params.yaml", p)
    before = p.read_text()
    assert seeds.main(["fast", "2", "--params", str(p)]) == 0
    params = yaml.safe_load(p.read_text())
    base = params["seed"]
    names = [f"fast-s{base + 1}", f"fast-s{base + 2}"]
    assert all(n in model_names(params) and group_of(params, n) == "fast" for n in names)
    new, entry = train_spec(params, names[0]), train_spec(params, "fast")
    assert new.seed == base + 1 and new.epochs == entry.epochs and new.average == entry.average
    kept = [line for line in before.splitlines() if line.strip().startswith("#")]
    assert all(line in p.read_text() for line in kept)  # every comment survives
    assert seeds.add_seeds(p, "fast", 2) == []  # a rerun adds nothing
    assert seeds.main(["fsat", "2", "--params", str(p)]) == 1
    assert "did you mean fast" in capsys.readouterr().err
