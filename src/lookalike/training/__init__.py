"""Embedders trained on the user's own images: autoencoder, siamese and triplet networks.

Importing this package registers the loader of every training method with
`lookalike.embedders`, so a trained model is created by name like a pretrained one.
"""

from . import saved  # noqa: F401  (registers the loaders)
from .session import METHODS, Trained, TrainingRun, train

__all__ = ["METHODS", "Trained", "TrainingRun", "train"]
