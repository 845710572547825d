"""Training embedders on the user's own images: autoencoder, siamese and triplet networks.

Training depends on `lookalike.embedders` (the networks it trains and the ONNX export of the
result), never the reverse: a trained model is loaded by `lookalike.embedders.trained`.
"""

from .session import METHODS, Trained, TrainingRun, train

__all__ = ["METHODS", "Trained", "TrainingRun", "train"]
