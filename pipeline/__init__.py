"""Ensemble benchmark pipeline: prepare data, train one fastai learner per architecture, ensemble, report."""
