"""Which models join the ensemble, by validation score in the run's metric: those within a margin of the best (the
default), or the benchmark's literal rule, an absolute threshold plus the best model of each family.

Plain functions on plain values (names, accuracies, architecture names); the stage is ensembles/ensemble.py.
"""

from __future__ import annotations

import re
import warnings

from pipeline.errors import PipelineError

# (family, pattern on the architecture name without a `torchvision.` prefix); first match wins.
FAMILIES: list[tuple[str, str]] = [
    ("VGG", r"^vgg"),
    ("DenseNet", r"^densenet"),
    ("EfficientNet", r"^(tf_)?efficientnet|^efficientvit"),
    ("MobileNet", r"^(tf_)?mobilenet"),
    ("ConvNeXt", r"^convnext"),
    ("RegNet", r"^regnet"),
    ("ViT", r"^(vit|deit|beit|eva)_"),
    ("ResNet", r"^(resnet|resnext|wide_resnet|seresnet|seresnext|resnetv2|ecaresnet)\d*"),
]


def family(arch: str, source: str = "timm") -> str:
    """The family an architecture belongs to. Local networks are one family: `scratch`."""
    if source == "local":
        return "scratch"
    name = arch.removeprefix("torchvision.")
    for fam, pattern in FAMILIES:
        if re.match(pattern, name):
            return fam
    return re.split(r"[_\d]", name, maxsplit=1)[0] or name  # e.g. `convit_tiny` -> `convit`


def select(
    valid_acc: dict[str, float],
    families: dict[str, str],
    threshold: float,
    per_family: bool,
    on_empty: str = "warn",
    rule: str = "threshold",
    margin: float = 0.01,
    noise: float = 0.0,
) -> list[str]:
    """Members in order of decreasing validation score (`valid_acc`: in the run's metric).

    rule `margin`: every model whose valid score is at most max(`margin`, `noise`) below the best one's (`noise`:
    the half-width of the best's 95 % validation interval, so that a model the validation split cannot tell from
    the best is not dropped for a difference of a few rows), so a family is represented only when it is competitive
    (with weights ∝ accuracy, a model 15 points behind still gets nearly an equal share). rule `threshold`: every
    model with valid score ≥ threshold; with `per_family`, the best model of every family too, however weak. Nothing selected: the best single model with a warning, or an error when
    `on_empty` is `fail`.
    """
    if not valid_acc:
        raise PipelineError("ensemble: no models to choose from")
    ranked = sorted(valid_acc, key=lambda n: (-valid_acc[n], n))
    if rule == "margin":
        return [n for n in ranked if valid_acc[n] >= valid_acc[ranked[0]] - max(margin, noise) - 1e-12]
    chosen = {n for n in ranked if valid_acc[n] >= threshold}
    if per_family:
        best: dict[str, str] = {}
        for n in ranked:
            best.setdefault(families[n], n)
        chosen |= set(best.values())
    if not chosen:
        msg = (
            f"ensemble: no model reaches the validation accuracy threshold {threshold} "
            f"(best: {ranked[0]} at {valid_acc[ranked[0]]:.4f})"
        )
        if on_empty == "fail":
            raise PipelineError(msg + "; lower `ensemble.threshold` or set `ensemble.on_empty: warn`")
        warnings.warn(msg + f"; using {ranked[0]} alone", stacklevel=2)
        chosen = {ranked[0]}
    return [n for n in ranked if n in chosen]
