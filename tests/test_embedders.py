"""Embedders: real weights give real answers; optional weights fail clearly offline."""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike import embedders
from lookalike.embedders import EmbedderError
from lookalike.embedders.networks import efficientnet_lite0_network, efficientnet_lite_network
from lookalike.embedders.pretrained import (
    EFFICIENTNET_LITE_PREPROCESSING,
    EFFICIENTNET_LITE_SIZES,
    efficientnet_lite_preprocessing,
)
from lookalike.embedders.runtime import onnxruntime_available
from lookalike.images import open_image

# ImageNet classes of domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = {281, 282, 283, 284, 285}


def test_efficientnet_lite0_head_calls_a_cat_a_cat(data_dir: Path) -> None:
    network = efficientnet_lite0_network()
    batch = torch.from_numpy(np.stack([EFFICIENTNET_LITE_PREPROCESSING(open_image(data_dir / "cat" / "cat.1.jpg"))]))
    with torch.inference_mode():
        top = int(network(batch).argmax(dim=1)[0])
    assert top in CAT_CLASSES


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_larger_efficientnet_lites_load_their_pip_weights_and_know_a_cat(name: str, data_dir: Path) -> None:
    network = efficientnet_lite_network(name)
    preprocessing = efficientnet_lite_preprocessing(name)
    assert preprocessing.crop == EFFICIENTNET_LITE_SIZES[name] and preprocessing.resize == preprocessing.crop + 32
    batch = torch.from_numpy(np.stack([preprocessing(open_image(data_dir / "cat" / "cat.1.jpg"))]))
    with torch.inference_mode():
        assert int(network(batch).argmax(dim=1)[0]) in CAT_CLASSES
    embedder = embedders.create(name)
    images = [open_image(data_dir / label / f"{label}.{i}.jpg") for label in ("cat", "dog") for i in (1, 2, 3)]
    vectors = embedder.embed_images(images)
    assert vectors.shape == (6, 1280)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert (sims[:3, :3].sum() - 3) / 6 > sims[:3, 3:].mean() + 0.05


def test_an_unknown_efficientnet_lite_is_a_clear_error() -> None:
    with pytest.raises(EmbedderError, match="efficientnet-lite2"):
        efficientnet_lite_network("efficientnet-lite4")


def test_default_embedder_gives_unit_vectors_that_separate_cats_from_dogs(data_dir: Path) -> None:
    embedder = embedders.create("efficientnet-lite0")
    images = [open_image(data_dir / label / f"{label}.{i}.jpg") for label in ("cat", "dog") for i in (1, 2, 3)]
    vectors = embedder.embed_images(images)
    assert vectors.shape == (6, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    same = (sims[:3, :3].sum() - 3) / 6 + (sims[3:, 3:].sum() - 3) / 6
    assert same / 2 > sims[:3, 3:].mean() + 0.05


def _photos(data_dir: Path) -> list[Image.Image]:
    return [open_image(data_dir / label / f"{label}.{i}.jpg") for label in ("cat", "dog") for i in (4, 5)]


def _embedder_args(name: str, tmp_path: Path) -> dict[str, object]:
    """Pip weights for the EfficientNet-Lites; random local weights for the torchvision networks (offline)."""
    return {"weights": _random_weights(tmp_path, name)} if name in ("resnet50", "vgg16") else {}


@pytest.mark.parametrize(
    "name",
    [
        "efficientnet-lite0",
        pytest.param("efficientnet-lite1", marks=pytest.mark.slow),
        pytest.param("efficientnet-lite2", marks=pytest.mark.slow),
        pytest.param("resnet50", marks=pytest.mark.slow),
        pytest.param("vgg16", marks=pytest.mark.slow),
    ],
)
def test_onnx_runtime_matches_pytorch_within_1e_4(name: str, tmp_path: Path, data_dir: Path) -> None:
    """Every pretrained embedder: its exported ONNX file gives PyTorch's vectors on real photos."""
    embedder = embedders.create(name, runtime="onnx", **_embedder_args(name, tmp_path))
    assert embedder.runtime == "onnx" and embedder.onnx_path().is_file()
    batch = np.stack([embedder.preprocess(image) for image in _photos(data_dir)])
    onnx_outputs, torch_outputs = embedder.run_onnx(batch), embedder.run_torch(batch)
    # the vectors, and the class probabilities where the embedder is an ImageNet classifier
    assert [o.shape for o in onnx_outputs] == [(4, embedder.dim)] + ([(4, 1000)] if embedder.classes else [])
    for got, expected in zip(onnx_outputs, torch_outputs, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-4)
    onnx_vectors = onnx_outputs[0]
    assert not np.allclose(onnx_vectors[0], onnx_vectors[3], atol=1e-3), "different photos, different vectors"


def test_auto_runtime_falls_back_to_pytorch_without_onnx_runtime(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    images = _photos(data_dir)
    expected = embedders.create("efficientnet-lite0", runtime="onnx").embed_images(images)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert not onnxruntime_available()
    embedder = embedders.create("efficientnet-lite0")  # runtime "auto"
    assert embedder.runtime == "torch"
    np.testing.assert_allclose(embedder.embed_images(images), expected, atol=1e-4)
    with pytest.raises(EmbedderError, match="pip install onnxruntime"):
        embedders.create("efficientnet-lite0", runtime="onnx")


def test_a_classifier_embedder_gives_its_classes_from_the_same_run(data_dir: Path) -> None:
    """The vectors are those of `embed_arrays`; the probabilities sum to 1 and call a cat a cat."""
    embedder = embedders.create("efficientnet-lite0")
    assert embedder.classes == "imagenet-1k"
    batch = np.stack([embedder.preprocess(open_image(data_dir / "cat" / f"cat.{i}.jpg")) for i in (1, 2)])
    vectors, probabilities = embedder.embed_and_classify(batch)
    np.testing.assert_array_equal(vectors, embedder.embed_arrays(batch))
    assert probabilities is not None and probabilities.shape == (2, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert set(probabilities.argmax(axis=1).tolist()) <= CAT_CLASSES


def test_an_embedder_on_fewer_threads_has_its_own_session_and_the_same_vectors(data_dir: Path) -> None:
    """`on_threads(n)` (the server's adds: 1) runs the same network file on its own ONNX Runtime session of
    n intra-op threads, made once; the embedder's own session keeps its threads."""
    embedder = embedders.create("efficientnet-lite0", runtime="onnx")
    n = 1 if embedder.threads != 1 else 2
    other = embedder.on_threads(n)
    assert other is not embedder and other.on_threads(n) is other and embedder.on_threads(n) is other
    assert other.on_threads(embedder.threads) is embedder and embedder.on_threads(embedder.threads) is embedder
    batch = np.stack([embedder.preprocess(open_image(data_dir / "dog" / f"dog.{i}.jpg")) for i in (1, 2)])
    vectors, probabilities = other.embed_and_classify(batch)
    expected, expected_probabilities = embedder.embed_and_classify(batch)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-5)
    assert other._session is not embedder._session
    assert other._session.get_session_options().intra_op_num_threads == n
    assert embedder._session.get_session_options().intra_op_num_threads == embedder.threads


def test_torch_runtime_is_the_fallback(data_dir: Path) -> None:
    embedder = embedders.create("efficientnet-lite0", runtime="torch")
    assert embedder.runtime == "torch"
    vectors = embedder.embed_images([open_image(data_dir / "cat" / "cat.2.jpg")])
    assert vectors.shape == (1, 1280)


def _random_weights(tmp_path: Path, name: str) -> Path:
    from torchvision import models

    torch.manual_seed(0)
    network = getattr(models, name)(weights=None)
    path = tmp_path / f"{name}-random.pth"
    state = network.state_dict()
    if name == "vgg16":  # only the convolutional trunk is used; keep the test file small
        state = {k: v for k, v in state.items() if k.startswith("features.")}
    torch.save(state, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dim"), [("resnet50", 2048), ("vgg16", 512)])
def test_torchvision_embedders_load_a_local_weights_file(tmp_path: Path, data_dir: Path, name: str, dim: int) -> None:
    embedder = embedders.create(name, weights=_random_weights(tmp_path, name), runtime="torch")
    images = [open_image(data_dir / "cat" / "cat.3.jpg"), open_image(data_dir / "dog" / "dog.3.jpg")]
    vectors = embedder.embed_images(images)
    assert vectors.shape == (2, dim)
    _, probabilities = embedder.embed_and_classify(np.stack([embedder.preprocess(im) for im in images]))
    # ResNet-50 is used as the classifier it is; VGG-16's 120 M-parameter classifier is not loaded
    assert (probabilities is not None and probabilities.shape == (2, 1000)) == (name == "resnet50")
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_torchvision_embedders_fail_clearly_offline(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    import torchvision.models._api as api

    monkeypatch.setattr(api, "load_state_dict_from_url", offline, raising=False)
    with pytest.raises(EmbedderError, match="--weights PATH"):
        embedders.create(name)


def test_wrong_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    path = _random_weights(tmp_path, "vgg16")
    with pytest.raises(EmbedderError, match="do not fit"):
        embedders.create("resnet50", weights=path)
    with pytest.raises(EmbedderError, match="not found"):
        embedders.create("resnet50", weights=tmp_path / "missing.pth")


def test_unknown_embedder_lists_the_available_ones() -> None:
    with pytest.raises(EmbedderError, match="efficientnet-lite0"):
        embedders.create("no-such-net")


def _framed(size: tuple[int, int], white: tuple[int, int, int, int]) -> Image.Image:
    """A black image with one white rectangle (x0, y0, x1, y1), end exclusive."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 255, 255), white)
    return image


@pytest.mark.parametrize("transpose", [False, True], ids=["landscape", "portrait"])
def test_preprocessing_resizes_the_short_side_to_256_and_centre_crops_224(transpose: bool) -> None:
    """A 500x100 image: the short side becomes 256 (scale 2.56), and the central 224x224 of the 1280x256
    picture is kept, i.e. the source window x 206.25..293.75, y 6.25..93.75. A squash, a corner crop or a
    crop without the 32-pixel margin would show the black outside it."""

    def made(white: tuple[int, int, int, int]) -> np.ndarray:
        image = _framed((500, 100), white)
        arr = EFFICIENTNET_LITE_PREPROCESSING(image.transpose(Image.Transpose.TRANSPOSE) if transpose else image)
        assert arr.shape == (3, 224, 224)
        return arr.transpose(0, 2, 1) if transpose else arr  # back to landscape orientation

    # White a little beyond the window (bicubic reads 2 source pixels around each sample): all white.
    inside = made((200, 3, 300, 97))
    assert inside.min() == pytest.approx(1.0) and inside.max() == pytest.approx(1.0)  # white -> +1 in [-1, 1]
    # White a little inside the window: every edge of the crop is black, its centre white.
    window = made((215, 12, 285, 88))
    for edge in (window[:, 0, :], window[:, -1, :], window[:, :, 0], window[:, :, -1]):
        assert edge.max() == pytest.approx(-1.0)
    assert window[:, 112, 112] == pytest.approx([1.0, 1.0, 1.0])
