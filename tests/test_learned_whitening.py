"""Learned whitening (`lookalike train siamese|triplet --whiten`): the closed-form fit, and a trained model
that ends with it saves, exports and reloads with the layer, or without it when validation says no."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike import Collection
from lookalike.training import TrainingRun, train
from lookalike.training.split import SplitRule
from lookalike.training.whitening import fit_learned_whitening

RULE = SplitRule(test_fraction=0.25, val_fraction=0.25)


def nearest_label_accuracy(vectors: np.ndarray, labels: np.ndarray) -> float:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ unit.T
    np.fill_diagonal(scores, -np.inf)
    return float((labels[scores.argmax(axis=1)] == labels).mean())


def clustered(rng: np.random.Generator, classes: int, per_class: int, noisy_axes: int = 8, dim: int = 32):
    """Class centres that differ a little in every axis, plus large noise shared by all classes along a few
    axes (the way photos of one kind vary in lighting or background): raw cosine is dominated by the noise."""
    centres = rng.normal(size=(classes, dim))
    noise = np.zeros((classes * per_class, dim))
    noise[:, :noisy_axes] = rng.normal(scale=6.0, size=(classes * per_class, noisy_axes))
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + noise + 10.0, labels


def test_whitening_fit_on_some_labels_separates_labels_it_never_saw() -> None:
    rng = np.random.default_rng(0)
    vectors, labels = clustered(rng, 40, 10)
    seen, unseen = labels < 20, labels >= 20
    mean, projection = fit_learned_whitening(vectors[seen], labels[seen])
    assert mean.dtype == projection.dtype == np.float32 and projection.shape == (32, 32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    raw = nearest_label_accuracy(vectors[unseen], labels[unseen])
    whitened = nearest_label_accuracy((unit[unseen] - mean) @ projection.T, labels[unseen])
    assert whitened > raw + 0.2, (raw, whitened)


def test_full_shrinkage_only_centres() -> None:
    rng = np.random.default_rng(1)
    vectors, labels = clustered(rng, 5, 6)
    mean, projection = fit_learned_whitening(vectors, labels, shrinkage=1.0)
    np.testing.assert_allclose(projection, np.eye(32), atol=1e-5)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(mean, unit.mean(axis=0), atol=1e-6)


@pytest.mark.parametrize(
    ("labels", "shrinkage", "message"),
    [([0, 1, 2, 3], 0.5, "at least two vectors"), ([0, 0, 1, 1], 0.0, "shrinkage"), ([0, 0, 1], 0.5, "one label")],
)
def test_bad_input_is_refused(labels: list[int], shrinkage: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_learned_whitening(np.eye(4), np.array(labels), shrinkage)


def training(folder: Path, **extra: object) -> TrainingRun:
    spec = {"backbone": "frozen", "head": "residual", "batch_size": 8, "whiten": True, "views": 2, **extra}
    return TrainingRun(method="siamese", folder=folder, split=RULE, spec=spec, epochs=1, lr=3e-3)


#: Caltech-101 kinds: 120 photos, 60 to train on (the 24 cat and dog photos are too few to fit 1,280 axes)
KINDS = ("Motorbikes", "airplanes", "butterfly", "crab", "pizza", "windsor_chair")


@pytest.fixture()
def kinds_folder(data_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "kinds"
    for kind in KINDS:
        (root / kind).mkdir(parents=True)
        for photo in sorted((data_dir.parent / "caltech101-dev" / kind).iterdir()):
            (root / kind / photo.name).write_bytes(photo.read_bytes())
    return root


def test_a_trained_model_ends_with_the_whitening_and_reloads_with_it(
    kinds_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lookalike.cli.main import main
    from lookalike.training.saved import load_module

    photos = sorted(kinds_folder.rglob("*.jpg"))[::30]
    argv = ["train", "siamese", str(kinds_folder), "--collection", str(tmp_path / "col"), "--backbone", "frozen"]
    argv += ["--head", "residual", "--whiten", "--views", "2", "--batch-size", "8", "--epochs", "1", "--lr", "3e-3"]
    assert main([*argv, "--val-fraction", "0.25", "--test-fraction", "0.25"]) == 0
    printed = capsys.readouterr().out
    with Collection.open(tmp_path / "col") as collection:
        info = json.loads((collection.models_dir / "siamese" / "model.json").read_text())
        whitening = info["whitening"]
        before, after = whitening["validation_before"]["MAP@R"], whitening["validation_after"]["MAP@R"]
        assert f"learned whitening: validation MAP@R {before:.4f} -> {after:.4f}, kept" in printed
        assert whitening["fit_on"] == 2 * info["split"]["counts"]["train"]  # every cached view
        assert whitening["validation_after"]["MAP@R"] >= whitening["validation_before"]["MAP@R"]
        assert whitening["kept"] and info["architecture"]["whiten"] is True
        vectors = np.stack([collection.embed(p, embedder="siamese") for p in photos])
    module, saved = load_module(tmp_path / "col" / "models" / "siamese")
    assert saved == json.loads((tmp_path / "col" / "models" / "siamese" / "model.json").read_text())
    layer = module.whitening
    assert layer is not None and not torch.equal(layer.projection, torch.eye(len(layer.mean)))
    # The exported file runs the layer: its vectors are the head's, centred and projected.
    from lookalike.embedders.networks import NormalisedFeatures
    from lookalike.embedders.trained import preprocessing_for
    from lookalike.images import open_image

    preprocessing = preprocessing_for(saved["architecture"])
    pixels = torch.from_numpy(np.stack([preprocessing.resize_and_crop(open_image(p)) for p in photos]))
    with torch.no_grad():
        module.whitening = None
        unwhitened = NormalisedFeatures(module, preprocessing)(pixels).numpy()
    expected = (unwhitened - layer.mean.numpy()) @ layer.projection.numpy().T
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-4)
    assert np.abs(vectors - unwhitened).max() > 1e-2  # the layer changed them


def test_whitening_that_lowers_validation_is_dropped(
    sample_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A harmful fit (a random projection onto 2 axes) is measured, refused and not saved."""
    from lookalike.training import metric_learning

    def harmful(vectors: np.ndarray, labels: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
        projection = np.zeros((vectors.shape[1], vectors.shape[1]), np.float32)
        projection[:2] = np.random.default_rng(0).normal(size=(2, vectors.shape[1]))
        return np.zeros(vectors.shape[1], np.float32), projection

    monkeypatch.setattr(metric_learning, "fit_learned_whitening", harmful)
    with Collection.open(tmp_path / "col") as collection:
        info = train(collection, training(sample_folder)).info
        assert info["whitening"]["kept"] is False
        assert info["whitening"]["validation_after"]["MAP@R"] < info["whitening"]["validation_before"]["MAP@R"]
        assert "whiten" not in info["architecture"]
        plain = collection.embed(sorted(sample_folder.rglob("*.jpg"))[0], embedder="siamese")
    from lookalike.training.saved import load_module

    module, _ = load_module(tmp_path / "col" / "models" / "siamese")
    assert module.whitening is None
    assert plain.shape == (1280,) and abs(float(np.linalg.norm(plain)) - 1.0) < 1e-5
