"""From-scratch networks, registered by name (as timm's register_model does).

Every builder takes (n_in, n_out, size, **kwargs): input channels, classes, and the prepared image side,
and returns an nn.Module that accepts any input side (dense nets pool to `size` first).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LOCAL: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Make a builder available by its function name."""
    LOCAL[fn.__name__] = fn
    return fn


def conv_bn(ni: int, nf: int, ks: int = 3, stride: int = 1) -> nn.Sequential:
    """Convolution, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(ni, nf, ks, stride, ks // 2, bias=False), nn.BatchNorm2d(nf), nn.ReLU(inplace=True))


def dense_input(size: int) -> list[nn.Module]:
    """Pool any input side to size×size and flatten (n_in × size² features), so dense nets survive progressive
    resizing."""
    return [nn.AdaptiveAvgPool2d(size), nn.Flatten()]


@register
def logreg(n_in: int, n_out: int, size: int) -> nn.Module:
    """One dense layer on the pixels: the baseline every other model must beat."""
    return nn.Sequential(*dense_input(size), nn.Linear(n_in * size * size, n_out))


@register
def mlp(n_in: int, n_out: int, size: int, hidden=(200, 60), dropout: float = 0.25) -> nn.Module:
    """Dense layers 200 and 60 with ReLU and dropout."""
    layers, ni = dense_input(size), n_in * size * size
    for nf in hidden:
        layers += [nn.Linear(ni, nf), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        ni = nf
    return nn.Sequential(*layers, nn.Linear(ni, n_out))


@register
def cnn_small(n_in: int, n_out: int, size: int) -> nn.Module:
    """Two convolutions, 12 filters of 3×3 then 24 of 6×6, ReLU, each followed by 2×2 max pooling."""
    return nn.Sequential(
        nn.Conv2d(n_in, 12, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(12, 24, 6, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(24 * 9, n_out),
    )


@register
def cnn4(n_in: int, n_out: int, size: int, widths=(32, 32, 64, 64), dropout: float = 0.25) -> nn.Module:
    """Four conv-BN-ReLU layers, max pooling and dropout after each pair."""
    w = widths
    return nn.Sequential(
        conv_bn(n_in, w[0]),
        conv_bn(w[0], w[1]),
        nn.MaxPool2d(2),
        nn.Dropout(dropout),
        conv_bn(w[1], w[2]),
        conv_bn(w[2], w[3]),
        nn.MaxPool2d(2),
        nn.Dropout(dropout),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(w[3], n_out),
    )


@register
def cnn6(n_in: int, n_out: int, size: int, widths=(32, 32, 64, 64, 128, 128), dropout: float = 0.25) -> nn.Module:
    """Six conv-BN-ReLU layers in three pairs, max pooling and dropout after each pair."""
    layers, ni = [], n_in
    for i in range(0, 6, 2):
        layers += [conv_bn(ni, widths[i]), conv_bn(widths[i], widths[i + 1]), nn.MaxPool2d(2), nn.Dropout(dropout)]
        ni = widths[i + 1]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ni, n_out))


class Residual(nn.Module):
    """x + two conv_bn blocks of x (ResNet-9's residual)."""

    def __init__(self, nf: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(nf, nf), conv_bn(nf, nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x plus its residual."""
        return x + self.body(x)


class Mul(nn.Module):
    """Scale the logits (ResNet-9 / airbench: a small output scale trains faster)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x times the fixed scale."""
        return x * self.scale


@register
def resnet9(n_in: int, n_out: int, size: int, widths=(64, 128, 256, 512), scale: float = 0.125) -> nn.Module:
    """ResNet-9 of the CIFAR speed records: prep conv, three stages (conv, pool, residual on 1 and 3)."""
    w = widths
    return nn.Sequential(
        conv_bn(n_in, w[0]),
        conv_bn(w[0], w[1]),
        nn.MaxPool2d(2),
        Residual(w[1]),
        conv_bn(w[1], w[2]),
        nn.MaxPool2d(2),
        conv_bn(w[2], w[3]),
        nn.MaxPool2d(2),
        Residual(w[3]),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(w[3], n_out, bias=False),
        Mul(scale),
    )
