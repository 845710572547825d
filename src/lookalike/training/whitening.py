"""Learned whitening: a linear map fit in closed form on a trained embedder's vectors of labelled photos.

Radenović, Tolias & Chum (2018) learn it from matching pairs; here the pairs are the photos that share a
label. Centre the (unit) vectors, then whiten the covariance *within* labels: the directions in which
photos of one label differ (viewpoint, lighting, background) are scaled down, the others kept, so the
cosine weighs what tells labels apart. It is a property of the features, not of the labels' identities,
which is why it carries over to labels training never saw (docs/training.md has the figures).

Shrinkage pulls the within-label covariance's eigenvalues towards their mean before the inverse square
root, lambda' = (1 - s) * lambda + s * mean(lambda): a thousand photos do not pin down 1,280 axes, and
s = 1 leaves only the centring. No dimension is dropped, so the output keeps the input's size.
Numpy only: `MetricTask.finish` (training/metric_learning.py) fits it and installs it as the
`embedders.networks.LearnedWhitening` layer of the saved network.
"""

from __future__ import annotations

import numpy as np


def fit_learned_whitening(
    vectors: np.ndarray, labels: np.ndarray, shrinkage: float = 0.7
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection): whitened = (unit(x) - mean) @ projection.T; float32, projection square.

    `vectors` (n, d) are L2-normalised here; `labels` (n,) any hashable kind. Labels with one
    vector add nothing to the within-label covariance; at least one label needs two.
    """
    if not 0.0 < shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
    x = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError("vectors must be (n, d) with one label each")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mean = x.mean(axis=0)
    within = np.zeros((x.shape[1], x.shape[1]))
    counted = 0
    for label in np.unique(labels):
        group = x[labels == label]
        if len(group) < 2:
            continue
        centred = group - group.mean(axis=0)
        within += centred.T @ centred
        counted += len(group)
    if not counted:
        raise ValueError("learned whitening needs a label with at least two vectors")
    within /= counted
    eigenvalues, axes = np.linalg.eigh(within)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    shrunk = (1.0 - shrinkage) * eigenvalues + shrinkage * eigenvalues.mean()
    if shrunk.min() <= 0:  # every vector of a label identical: nothing to whiten
        shrunk = np.ones_like(shrunk)
    projection = (axes / np.sqrt(shrunk)) @ axes.T
    projection /= np.sqrt(np.mean(shrunk**-1.0))  # unit average gain: the scale has no effect on cosines
    return mean.astype(np.float32), projection.astype(np.float32)
