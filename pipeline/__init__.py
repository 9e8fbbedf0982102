"""Ensemble benchmark pipeline: prepare data, train one fastai learner per architecture, ensemble, report."""

import warnings

# torch 2.14 deprecates torch.jit.script, which an import of fastai/timm calls once per process: harmless here
# (nothing of ours scripts a model), and otherwise printed by every stage
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
