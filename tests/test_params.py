"""params.yaml and the schemas in pipeline/params.py: each default is defined once, and they cannot drift."""

import pytest
import yaml
from conftest import ROOT

from pipeline.params import DATA_SCHEMA, ENSEMBLE_SCHEMA, TRAIN_SCHEMA

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
# data.path names where the benchmark's raw files are; the schema cannot default it (it depends on data.name)
CHOICES = {("data", "path")}


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
