"""Where a model looks: Grad-CAM heatmaps and the feature maps of a convolution, through fastai's hooks.

Grad-CAM (Selvaraju et al., 2017), as fastai's book computes it: the activations of a convolution (fastai's
`hook_output`), weighted by the mean gradient of the class score over each channel, summed, ReLU, upsampled to
the image. The layer is the model's last nn.Conv2d unless `cam_layer` (an entry's param, a name from
`model.named_modules()`) names another; that works alike for timm, torchvision and the local networks.
Used by the report stage (the best model's right and wrong test images) and `pipeline.commands.predict --cam DIR`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.hook import hook_output
from torch import nn

from pipeline.errors import PipelineError


def conv_layers(model: nn.Module) -> list[str]:
    """The names of the model's 2-d convolutions, in order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def pick_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """(name, module): `name` from model.named_modules(), or the last convolution."""
    convs = conv_layers(model)
    if name is None:
        if not convs:
            raise PipelineError(
                f"{type(model).__name__} has no convolution: Grad-CAM needs one (a CNN, not logreg or mlp)"
            )
        name = convs[-1]
    modules = dict(model.named_modules())
    if name not in modules:
        raise PipelineError(f"cam_layer {name!r} is not a layer of the model; its convolutions: {', '.join(convs)}")
    return name, modules[name]


def grad_cam(model: nn.Module, x: torch.Tensor, layer: nn.Module, targets: torch.Tensor | None = None) -> np.ndarray:
    """Heatmaps in [0, 1] (N × H × W, the input's size) for normalised inputs `x` (N × C × H × W), for the classes
    `targets` (default: each row's predicted class)."""
    model.eval()
    with torch.enable_grad(), hook_output(layer, detach=False) as hook:
        out = model(x)
        cls = out.argmax(1) if targets is None else targets
        score = out.gather(1, cls.view(-1, 1)).sum()
        (grads,) = torch.autograd.grad(score, hook.stored)
    acts = hook.stored.detach().float()
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    top = cam.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (cam / top).detach().cpu().numpy()


def feature_maps(model: nn.Module, x: torch.Tensor, layer: nn.Module) -> np.ndarray:
    """The activations of `layer` for one normalised image `x` (1 × C × H × W): K × h × w."""
    model.eval()
    with torch.inference_mode(), hook_output(layer) as hook:
        model(x)
    return hook.stored[0].float().detach().cpu().numpy()


def overlay(img: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 H×W×C image with a heatmap (values in [0, 1], any size) blended over it: uint8 H×W×3."""
    import matplotlib

    h, w = img.shape[:2]
    if cam.shape != (h, w):
        cam = F.interpolate(torch.from_numpy(cam)[None, None].float(), size=(h, w), mode="bilinear")[0, 0].numpy()
    rgb = img if img.shape[-1] == 3 else np.repeat(img[..., :1], 3, axis=-1)
    heat = matplotlib.colormaps["jet"](cam)[..., :3] * 255
    return np.clip((1 - alpha) * rgb + alpha * heat, 0, 255).astype(np.uint8)
