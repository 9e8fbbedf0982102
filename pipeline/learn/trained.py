"""A trained model or the ensemble, loaded from the stages' outputs and run on new images: what pipeline.commands.predict,
the report and notebooks use.

Model: models/<key>/{spec.json, model.safetensors}, rebuilt from the spec (no pickled learners, no code from model
files); `folds` entries average their fold models. Ensemble: ensemble/model.json (members, weights or the
stacker's numbers, temperatures, logit adjustment) over its members' Models.
Python: load_ensemble() or load_model("resnet9") -> .predict(images) -> probabilities (N × classes)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.artifacts import ensemble_model_file, load_ensemble_model, load_member_spec, model_dir, rerun
from pipeline.data.images import decode, to_channels
from pipeline.errors import PipelineError
from pipeline.learn.hardware import concrete, eval_dtype, settings
from pipeline.params import auto_eval_bs

CAM_BS = 32  # Grad-CAM images per forward and backward pass


def eval_batch_size(recorded, trained_on: str, device: torch.device) -> int:
    """The batch size the stage evaluated with (spec.json's resolved `train.eval_bs`) on the device type it ran on;
    elsewhere `auto`'s for `device` (a GPU's 1024 would not fit a CPU's memory for a big net)."""
    if isinstance(recorded, int) and torch.device(trained_on).type == device.type:
        return recorded
    return auto_eval_bs(device.type)


def to_array(image, size: int, n_in: int) -> np.ndarray:
    """A PIL image, a path or an H×W(×C) uint8 array -> uint8 size×size×n_in, as the prepare stage makes them."""
    return to_channels({"x": decode(image, size)[None]}, n_in)["x"][0]


class Model:
    """One trained architecture, rebuilt from models/<key>/spec.json and its safetensors weights."""

    def __init__(self, folder: Path, device: str | torch.device = "cpu", stage_key: str | None = None):
        from safetensors.torch import load_file

        from pipeline.data.loaders import BatchTfm
        from pipeline.learn import archs

        weights = folder / "model.safetensors"
        self.spec = s = load_member_spec(folder / "spec.json", stage_key or folder.name)
        self.name, self.classes, self.device = s.key, s.classes, concrete(device)
        self.deterministic = bool(s.train.get("deterministic", False))
        self.eval_bs = eval_batch_size(s.train.get("eval_bs"), s.device, self.device)
        # `folds: K`: the entry is its K fold models, averaged as the train stage averaged them; Grad-CAM looks at
        # the first one
        self.folds = [Model(folder / f, device, s.key) for f in s.folds or []]
        if self.folds:
            self.model, self.tfm, self.dtype = self.folds[0].model, self.folds[0].tfm, self.folds[0].dtype
            return
        if not weights.is_file():
            raise PipelineError(f"{weights}: missing; train the model first: {rerun(s.key)}")
        self.model, _ = archs.build_model(
            archs.resolve(s.arch),
            s.n_in,
            s.n_out,
            s.native_size,
            pretrained=False,
            ps=s.ps,
            model_kwargs=s.model_kwargs,
        )
        try:
            state = load_file(str(weights))
        except Exception as e:  # any exception: safetensors raises its own types for a damaged header or body
            raise PipelineError(
                f"{weights}: damaged, cannot be read ({type(e).__name__}: {e}); restore it with "
                f"`dvc checkout {folder}` or rebuild it with {rerun(s.key)}"
            ) from e
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise PipelineError(
                f"{weights}: does not fit {s.arch} (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        self.model.to(self.device).eval()
        # as the train stage ran it, so predictions reproduce preds/<key>/: the device's settings (cuDNN
        # autotuning, TF32, deterministic kernels: applied around each prediction, `settings`, so every member of an
        # ensemble predicts under its own), the stage's evaluation batch size, the model's memory format
        if s.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.tfm = BatchTfm(s.size, s.mean, s.std, train=False, channels_last=s.channels_last)
        # on the device type it trained on, the precision the stage evaluated with (fp32 and cpu where the spec has neither), so
        # predictions match preds/<key>/; on another, that device's own (a GPU's bf16 model runs fp32 on a CPU)
        self.dtype = eval_dtype(s.precision, s.device, self.device, str(s.train.get("precision", "auto")))

    def inputs(self, x: np.ndarray) -> torch.Tensor:
        """Prepared-format uint8 arrays -> the normalised batch the network takes."""
        from pipeline.data.loaders import to_tensor

        (xb,) = self.tfm((to_tensor(x).to(self.device),))
        return xb

    def cam(self, x: np.ndarray, targets: np.ndarray | None = None) -> np.ndarray:
        """Grad-CAM heatmaps (N × size × size, in [0, 1]) of prepared-format uint8 arrays, for `targets` (default:
        the predicted classes), at the entry's `cam_layer` or the last convolution."""
        from pipeline.inspect.cam import grad_cam, pick_layer

        _, layer = pick_layer(self.model, self.spec.cam_layer)
        out = []
        with settings(self.device, self.deterministic):
            for i in range(
                0, len(x), CAM_BS
            ):  # a whole batch's fp32 graph may not fit a 16 GB GPU (VGG19 at 224; an estimate)
                t = None if targets is None else torch.as_tensor(targets[i : i + CAM_BS], device=self.device)
                out.append(grad_cam(self.model, self.inputs(x[i : i + CAM_BS]), layer, t))
        return np.concatenate(out) if out else np.zeros((0, self.spec.size, self.spec.size), np.float32)

    def arrays(self, images: Iterable) -> np.ndarray:
        """Images (paths or PIL images) as the prepared uint8 arrays this model was trained on."""
        return np.stack([to_array(im, self.spec.native_size, self.spec.n_in) for im in images])

    def predict_arrays(self, x: np.ndarray, bs: int | None = None) -> np.ndarray:
        """Probabilities for prepared-format uint8 N×H×W×C arrays (as data/prepared holds them), `bs` at a time
        (default: the stage's `eval_bs`, so a GPU's batches, and its cuDNN kernels, are the stage's)."""
        from pipeline.learn.infer import predict_probs

        if self.folds:
            return np.mean([m.predict_arrays(x, bs) for m in self.folds], axis=0)
        with settings(self.device, self.deterministic):
            return predict_probs(
                self.model, x, self.tfm, bs or self.eval_bs, self.spec.tta, self.device, self.dtype, self.spec.n_out
            )

    def predict(self, images: Sequence, bs: int | None = None) -> np.ndarray:
        """Probabilities for images (paths or PIL images)."""
        return self.predict_arrays(self.arrays(images), bs)


class Ensemble:
    """The ensemble the `ensemble` stage chose: its members' probabilities blended by ensemble/model.json."""

    def __init__(self, root: Path = Path("."), device: str | torch.device = "cpu"):
        self.spec = load_ensemble_model(ensemble_model_file(root))
        self.name, self.classes = "ensemble", self.spec.classes
        self.members = [Model(model_dir(root, m), device, m) for m in self.spec.members]
        for m in self.members:
            if m.classes != self.classes:
                raise PipelineError(f"models/{m.name}: classes differ from the ensemble's; rerun `dvc repro`")

    def predict(self, images: Sequence, bs: int | None = None) -> np.ndarray:
        """The submission's probabilities for images (paths or PIL images)."""
        return self.predict_arrays(self.members[0].arrays(images), bs)

    def predict_arrays(self, x: np.ndarray, bs: int | None = None) -> np.ndarray:
        """Probabilities for prepared-format uint8 arrays (every member was trained on the same prepared data)."""
        from ensembles.calibrate import adjust_logits, apply_temperature
        from ensembles.weights import blend, stacker_apply

        P = np.stack([m.predict_arrays(x, bs) for m in self.members]).astype(np.float64)
        temps = self.spec.temperatures or {}  # `calibrate: temperature`: each member's, then the blend's
        for i, m in enumerate(self.members):
            if m.name in temps:
                P[i] = apply_temperature(P[i], temps[m.name])
        if self.spec.stacker:
            out = stacker_apply(self.spec.stacker, P, len(self.classes))
        else:
            out = blend(P, np.array([self.spec.weights[m.name] for m in self.members]))
        t = self.spec.temperature
        out = apply_temperature(out, t) if t else out
        if self.spec.tau:  # `adjust: logit`: the training prior's logits taken off, as the stage did
            out = adjust_logits(out, np.asarray(self.spec.log_prior), self.spec.tau)
        return out.astype(np.float32)


def load_model(name: str, root: str | Path = ".", device: str = "cpu") -> Model:
    """A trained model of the run, by its `archs` or `variants` key (or a `snapshots` member's `<key>@e<epoch>`)."""
    return Model(model_dir(Path(root), name), device, name)


def load_ensemble(root: str | Path = ".", device: str = "cpu") -> Ensemble:
    """The run's ensemble (ensemble/model.json and its members' models)."""
    return Ensemble(Path(root), device)
