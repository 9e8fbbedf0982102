"""The files the stages hand each other that are read back as records: a member's spec (models/<key>/spec.json,
written by train, read by pipeline.trained for predict and the report) and the ensemble's model
(ensemble/model.json, written by the ensemble stage, read by pipeline.trained). Each has its typed shape here and
one save and one load; a load checks the keys it needs and names the file and the key when one is missing.
"""

import json
from pathlib import Path
from typing import NotRequired, TypedDict

from pipeline.errors import PipelineError


class MemberSpec(TypedDict):
    """models/<key>/spec.json: everything pipeline.trained needs to rebuild and run one model."""

    key: str
    arch: str
    source: NotRequired[str]
    n_in: int
    n_out: int
    size: int  # the image side it was last trained at (and evaluates at)
    native_size: int  # the prepared image side
    mean: list[float]
    std: list[float]
    classes: list[str]
    ps: float
    model_kwargs: dict
    pretrained: NotRequired[bool | str]
    tta: bool
    channels_last: bool
    precision: NotRequired[str]  # what the train stage evaluated with: fp32 | bf16 | fp16 (older specs: fp32)
    device: NotRequired[str]  # where (older specs: cpu)
    seed: NotRequired[int]
    train: NotRequired[dict]  # the whole TrainSpec
    folds: NotRequired[list[str]]  # `folds: K`: the fold models' sub-folders
    refit: NotRequired[dict]  # `refit: true`: the refit's training images and the validated lr


class EnsembleModel(TypedDict):
    """ensemble/model.json: how pipeline.trained.Ensemble blends its members' probabilities."""

    method: str
    members: list[str]
    weights: dict[str, float]
    classes: list[str]
    stacker: dict | None  # stacking: the fitted model as plain numbers
    temperatures: NotRequired[dict[str, float] | None]  # `calibrate: temperature`: each member's, before blending
    temperature: NotRequired[float | None]  # and the blend's, after


def required(record: type) -> list[str]:
    """The keys a record must have (its NotRequired ones aside; needs evaluated annotations: no
    `from __future__ import annotations` in this module)."""
    return sorted(record.__required_keys__)


def _save(path: Path, record: dict, indent: int) -> None:
    path.write_text(json.dumps(record, indent=indent) + "\n")


def _load(path: Path, record: type, missing_hint: str) -> dict:
    if not path.is_file():
        raise PipelineError(f"{path}: missing; {missing_hint}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: cannot be read ({e}); {missing_hint}") from e
    absent = [k for k in required(record) if k not in data]
    if not isinstance(data, dict) or absent:
        raise PipelineError(
            f"{path}: no `{absent[0] if absent else '{...}'}` key; written by another version? {missing_hint}"
        )
    return data


def save_member_spec(path: Path, spec: MemberSpec) -> None:
    _save(path, spec, 2)


def load_member_spec(path: Path, stage_key: str) -> MemberSpec:
    """A spec.json; `stage_key` names the stage to run when it is missing or unreadable."""
    return _load(path, MemberSpec, f"train the model first (dvc repro train@{stage_key})")


def save_ensemble_model(path: Path, model: EnsembleModel) -> None:
    _save(path, model, 1)


def load_ensemble_model(path: Path) -> EnsembleModel:
    return _load(path, EnsembleModel, "run `dvc repro ensemble` first")
