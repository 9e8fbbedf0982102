"""Architecture registry: a name -> a model with a fastai head, built the way fastai's vision_learner does.

Names resolve in order: a local network (pipeline/learn/models.py), `torchvision.<name>`, any timm model name.
`build_model` is used both to train and to rebuild a saved model from its spec (no pickled learners).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.learn.models import LOCAL

IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@dataclass
class Arch:
    """A resolved architecture: its name, where it comes from and how to build it."""

    name: str
    source: str  # local | torchvision | timm
    target: Any  # builder function, torchvision constructor, or timm name


def torchvision_names() -> list[str]:
    """torchvision's classification model names."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def resolve(name: str) -> Arch:
    """Where `name` comes from; an unknown name fails listing the nearest valid ones."""
    if not isinstance(name, str) or not name:
        raise PipelineError(f"params.yaml: architecture name {name!r} must be a non-empty string")
    if name in LOCAL:
        return Arch(name, "local", LOCAL[name])
    if name.startswith("torchvision."):
        import torchvision

        short = name.removeprefix("torchvision.")
        if short in torchvision_names():
            return Arch(name, "torchvision", getattr(torchvision.models, short))
    else:
        import timm

        if timm.is_model(name):
            return Arch(name, "timm", name)
    import timm

    every = list(LOCAL) + [f"torchvision.{n}" for n in torchvision_names()] + timm.list_models()
    near = difflib.get_close_matches(name, every, n=6, cutoff=0.5)
    raise PipelineError(
        f"params.yaml: unknown architecture {name!r}. Nearest valid names: {', '.join(near) or 'none'}. "
        f"Valid: local {', '.join(LOCAL)}; torchvision.<name> for torchvision's models; any timm.list_models() name."
    )


def build_model(
    arch: Arch,
    n_in: int,
    n_out: int,
    size: int,
    pretrained: bool | str = False,
    ps: float = 0.5,
    model_kwargs: dict | None = None,
) -> tuple[nn.Module, Any]:
    """(model, splitter). Pretrained nets get fastai's head; `pretrained` is True (library loader) or a file."""
    from fastai.vision.learner import _default_meta, create_timm_model, create_vision_model, default_split, model_meta

    kw = dict(model_kwargs or {})
    if arch.source == "local":
        if pretrained:
            raise PipelineError(f"{arch.name}: local networks have no pretrained weights; set pretrained: false")
        try:
            model = arch.target(n_in, n_out, size, **kw)
        except TypeError as e:
            raise PipelineError(f"params.yaml: model_kwargs for {arch.name}: {e}") from e
        return model, None
    if arch.source == "timm":
        model, _ = create_timm_model(arch.target, n_out, default_split, pretrained is True, n_in=n_in, ps=ps, **kw)
        if isinstance(pretrained, str):
            load_weights(model[0].model, read_weights(pretrained, arch.name), pretrained)
        return model, default_split
    meta = model_meta.get(arch.target, _default_meta)
    if isinstance(pretrained, str):
        base = arch.target(weights=None, **kw)
        load_weights(base, read_weights(pretrained, arch.name), pretrained, n_in=3)
        model = create_vision_model(lambda *a, **k: base, n_out, pretrained=True, cut=meta["cut"], n_in=n_in, ps=ps)
    else:
        model = create_vision_model(arch.target, n_out, pretrained=pretrained, n_in=n_in, ps=ps, **kw)
    return model, meta["split"]


def read_weights(path: str, name: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch file loaded with weights_only (no arbitrary unpickling)."""
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"{name}: pretrained weights file {p} not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any exception: torch raises many types for a bad file
        raise PipelineError(f"{p}: cannot load weights ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PipelineError(f"{p}: not a state dict of tensors")
    return sd


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], where: str, n_in: int | None = None) -> None:
    """Load a state dict whose keys match `model`'s or map to them in order, checked by shape.

    The classifier of the source is dropped; a 3-channel first conv is adapted to a 1-channel model
    (timm's adapt_input_conv). Any remaining mismatch is an error naming the key and both shapes.
    """
    from timm.models import adapt_input_conv

    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    src = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    if not set(target) <= set(src):  # different naming: map in order, dropping the source's trailing classifier
        src_items = list(src.items())[: len(target)]
        if len(src_items) < len(target):
            raise PipelineError(f"{where}: has {len(src)} tensors, the model needs {len(target)}")
        src = {tk: v for tk, (_, v) in zip(target, src_items)}
        mapped = True
    else:
        mapped = False
    out = {}
    for k, t in target.items():
        v = src[k]
        if v.shape != t.shape and v.ndim == 4 and v.shape[1] == 3 and t.shape[1] != 3 and v.shape[0] == t.shape[0]:
            v = adapt_input_conv(t.shape[1], v)
        if v.shape != t.shape:
            how = " (keys mapped in order)" if mapped else ""
            raise PipelineError(
                f"{where}: weights for `{k}` have shape {tuple(v.shape)}, the model needs {tuple(t.shape)}{how}"
            )
        out[k] = v
    model.load_state_dict(out, strict=False)


def norm_stats(arch: Arch, pretrained, n_in: int, data_mean: list[float], data_std: list[float]):
    """Pretrained nets see the statistics they were trained with (timm's pretrained_cfg, else ImageNet's;
    averaged for gray input); scratch nets the data's own."""
    if pretrained:
        mean, std = IMAGENET_STATS
        if arch.source == "timm":
            import timm

            cfg = timm.models.get_pretrained_cfg(arch.target)
            if cfg is not None and cfg.mean and cfg.std and len(cfg.mean) == 3:
                mean, std = list(cfg.mean), list(cfg.std)
        if n_in == 1:
            return [sum(mean) / 3], [sum(std) / 3]
        return mean, std
    return data_mean, data_std
