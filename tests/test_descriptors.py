"""Label-free descriptor options: GeM pooling and two-view embedders (issue 14)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike import embedders
from lookalike.embedders.networks import GeM
from lookalike.embedders.pretrained import whole_image
from lookalike.images import open_image


def _photos(data_dir: Path) -> list:
    return [open_image(data_dir / label / f"{label}.{i}.jpg") for label in ("cat", "dog") for i in (3, 4)]


def test_gem_is_average_pooling_at_p1_and_the_generalised_mean_otherwise() -> None:
    x = torch.rand(2, 5, 3, 4, generator=torch.Generator().manual_seed(0)) * 6
    np.testing.assert_allclose(GeM(1.0)(x).numpy(), x.mean(dim=(2, 3)).numpy(), rtol=1e-6)
    expected = (x.numpy().reshape(2, 5, -1) ** 3).mean(axis=2) ** (1 / 3)
    np.testing.assert_allclose(GeM(3.0)(x).numpy(), expected, rtol=1e-5)
    # between the mean and the max of each channel
    assert (GeM(3.0)(x) > x.mean(dim=(2, 3))).all() and (GeM(3.0)(x) < x.amax(dim=(2, 3))).all()
    learnable = GeM(3.0, learnable=True)
    assert [p.shape for p in learnable.parameters()] == [torch.Size([])]
    learnable(x).sum().backward()
    assert learnable.p.grad is not None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="p > 0"):
        GeM(0.0)


@pytest.mark.parametrize("name", ["efficientnet-lite0-gem", "efficientnet-lite0-gem-ms"])
def test_gem_and_two_view_embedders_onnx_matches_pytorch(name: str, data_dir: Path) -> None:
    """The exported file gives PyTorch's vectors and probabilities on real photos; the classes are those of
    the plain Lite0 (its head reads average-pooled features of the centre crop)."""
    embedder = embedders.create(name, runtime="onnx")
    photos = _photos(data_dir)
    batch = np.stack([embedder.preprocess(image) for image in photos])
    assert batch.shape == (4, *embedder.input_shape())
    onnx_outputs, torch_outputs = embedder.run_onnx(batch), embedder.run_torch(batch)
    assert [o.shape for o in onnx_outputs] == [(4, 1280), (4, 1000)]
    for got, expected in zip(onnx_outputs, torch_outputs, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(onnx_outputs[0], axis=1), 1.0, atol=1e-5)
    plain = embedders.create("efficientnet-lite0", runtime="onnx")
    plain_vectors, plain_probabilities = plain.embed_and_classify(np.stack([plain.preprocess(i) for i in photos]))
    np.testing.assert_allclose(onnx_outputs[1], plain_probabilities, atol=1e-5)
    # a different descriptor from the plain one, but of the same photos: close, not equal
    cosines = (onnx_outputs[0] * plain_vectors).sum(axis=1)
    assert (cosines > 0.85).all() and (cosines < 0.999).all()


def test_two_view_vector_is_the_normalised_sum_of_the_crop_and_whole_image_vectors(data_dir: Path) -> None:
    single = embedders.create("efficientnet-lite0-gem")
    both = embedders.create("efficientnet-lite0-gem-ms")
    photos = _photos(data_dir)
    crop = single.embed_arrays(np.stack([single.preprocess(p) for p in photos]))
    whole = single.embed_arrays(np.stack([whole_image(p, 224) for p in photos]))
    expected = crop + whole
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(both.embed_images(photos), expected, atol=1e-5)
    assert not np.allclose(crop, whole, atol=1e-2), "the two views differ"
