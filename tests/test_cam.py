"""Grad-CAM and feature maps (pipeline/inspect/cam.py): the layer picked for every kind of network, heatmaps that point
at the evidence, the report's figures and `pipeline.commands.predict --cam`."""

import json

import numpy as np
import pytest
import torch
from conftest import write_image
from safetensors.torch import save_file

from pipeline.artifacts import model_dir
from pipeline.commands import predict
from pipeline.data.loaders import BatchTfm, to_tensor
from pipeline.errors import PipelineError
from pipeline.inspect import cam
from pipeline.learn import archs, member
from pipeline.params import make_spec
from pipeline.records import PreparedMeta


@pytest.mark.parametrize("name", ["resnet9", "cnn4", "resnet34", "torchvision.vgg19_bn", "efficientnet_b0"])
@pytest.mark.parametrize("c", [1, 3])
def test_the_last_convolution_of_every_kind_of_network(name, c):
    model, _ = archs.build_model(archs.resolve(name), c, 5, 32)
    layer_name, layer = cam.pick_layer(model)
    assert isinstance(layer, torch.nn.Conv2d) and layer_name == cam.conv_layers(model)[-1]
    heat = cam.grad_cam(model, torch.randn(2, c, 32, 32), layer)
    # an untrained network's map may be all zero (ReLU of a negative sum); scaled to at most 1 otherwise
    assert heat.shape == (2, 32, 32) and np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1 + 1e-6


def test_a_named_layer_and_a_wrong_name():
    model, _ = archs.build_model(archs.resolve("cnn4"), 1, 3, 16)
    first = cam.conv_layers(model)[0]
    assert cam.pick_layer(model, first)[1] is dict(model.named_modules())[first]
    maps = cam.feature_maps(model, torch.randn(1, 1, 16, 16), cam.pick_layer(model, first)[1])
    assert maps.shape == (32, 16, 16)
    with pytest.raises(PipelineError, match=r"cam_layer 'head' is not a layer of the model; its convolutions: 0.0"):
        cam.pick_layer(model, "head")
    mlp, _ = archs.build_model(archs.resolve("mlp"), 1, 3, 16)
    with pytest.raises(PipelineError, match="has no convolution"):
        cam.pick_layer(mlp)


def bars(n=256, size=16, seed=0):
    """Two classes, a horizontal or a vertical bright bar, at a random place in a random quadrant of a noisy
    image: the bar is the only evidence of its class, and where it lies says nothing about the class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 80, (n, size, size, 1), dtype=np.uint8)
    quad = rng.integers(0, 4, n)
    for i in range(n):
        r = (quad[i] // 2) * 8 + rng.integers(1, 3)
        c = (quad[i] % 2) * 8 + rng.integers(1, 3)
        if y[i]:
            x[i, r : r + 5, c + 2, 0] = 255
        else:
            x[i, r + 2, c : c + 5, 0] = 255
    y = y.astype(np.int64)
    arrays = {"train_x": x, "train_y": y, "valid_x": x[:32], "valid_y": y[:32], "test_x": x[:4], "test_y": y[:4]}
    meta = PreparedMeta(
        classes=["horizontal", "vertical"], image_shape=[size, size, 1], train_mean=[0.0], train_std=[0.0]
    )
    meta.train_mean, meta.train_std = [float(x.mean() / 255)], [float(x.std() / 255)]
    return arrays, meta, quad


@pytest.fixture(scope="module")
def trained():
    arrays, meta, quad = bars()
    s = make_spec({"arch": "cnn4", "epochs": 6, "bs": 32, "lr": 3e-3, "flip": False, "pad": 0, "tta": False})
    res = member.train_arch("cnn4", s, arrays, meta, seed=0)
    assert res.metrics.valid.accuracy >= 0.9
    return res, arrays, quad


def test_grad_cam_points_at_the_evidence(trained):
    """For each image, the quadrant where its class's heatmap is hottest holds the bar (chance: 1/4)."""
    res, arrays, quad = trained
    x, y = arrays["train_x"], arrays["train_y"]
    (xb,) = BatchTfm(16, res.spec.mean, res.spec.std, train=False)((to_tensor(x),))
    heat = cam.grad_cam(res.model, xb, cam.pick_layer(res.model)[1], torch.as_tensor(y))
    hottest = heat.reshape(len(y), 2, 8, 2, 8).mean(axis=(2, 4)).reshape(len(y), 4).argmax(1)  # row-major quadrants
    assert (hottest == quad).mean() >= 0.6, list(zip(quad[:16].tolist(), hottest[:16].tolist()))


def saved(res, root, key="best"):
    d = model_dir(root, key)
    d.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in res.model.state_dict().items()}, str(d / "model.safetensors"))
    (d / "spec.json").write_text(json.dumps({**res.spec.to_json(), "key": key}))
    return d


def test_predict_writes_one_overlay_per_image(trained, tmp_path):
    from PIL import Image

    res, _, _ = trained
    saved(res, tmp_path)
    for i in range(3):
        write_image(tmp_path / "in" / ("a" if i < 2 else "b") / "same.png", size=(16, 16), seed=i)
    write_image(tmp_path / "in" / "c.png", size=(16, 16), mode="L")
    out = tmp_path / "cams"
    args = [str(tmp_path / "in"), "--model", "best", "--root", str(tmp_path), "--cam", str(out), "--out", "-"]
    assert predict.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["c.png", "same-2.png", "same.png"]
    assert Image.open(out / "c.png").size == (128, 128) and Image.open(out / "c.png").mode == "RGB"


def test_predict_cam_on_a_model_without_convolutions_fails_first(trained, tmp_path, capsys):
    _, arrays, _ = trained
    s = make_spec({"arch": "mlp", "epochs": 1, "bs": 16, "lr": 1e-3, "flip": False, "pad": 0})
    saved(member.train_arch("mlp", s, arrays, bars()[1], seed=0), tmp_path, "mlp")
    write_image(tmp_path / "x.png", size=(16, 16))
    assert (
        predict.main([str(tmp_path / "x.png"), "--model", "mlp", "--root", str(tmp_path), "--cam", str(tmp_path / "c")])
        == 1
    )
    assert "has no convolution" in capsys.readouterr().err and not (tmp_path / "c").exists()
