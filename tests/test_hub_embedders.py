"""timm and open_clip embedders, offline: randomly initialised networks of the real architectures (or, for
CLIP in the fast suite, a small config of the same code), written to weights files by the tests themselves.

The whole path: weights file -> ONNX -> index -> image search -> text search, through PyTorch and
through ONNX Runtime, with the same answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike import Collection, embedders
from lookalike.embedders import EmbedderError, hub

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(autouse=True)
def empty_hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test sees the user's Hugging Face cache, nor the network."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def random_timm_weights(path: Path, architecture: str) -> Path:
    """A timm network of `architecture` at its default configuration, random weights, saved as a checkpoint.

    LayerScale factors (DINOv2, ConvNeXt) are set to 1: at their initial 1e-5 every image gets the
    same vector (pairwise cosine 0.9999999), and rankings would be decided by rounding.
    """
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = timm.create_model(architecture.split(".")[0], pretrained=False).state_dict()
    state = {k: torch.ones_like(v) if k.endswith("gamma") else v for k, v in state.items()}
    save_file(state, str(path))
    return path


@pytest.fixture()
def tiny_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A small open_clip config (2-layer towers), registered as an embedder for this test only, and
    random weights for it."""
    monkeypatch.setattr(hub, "MODELS", dict(hub.MODELS))
    monkeypatch.setattr(embedders, "_BUILTIN", dict(embedders._BUILTIN))
    from open_clip import factory

    config = tmp_path / "lookalike-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    factory.add_model_config(config)
    torch.manual_seed(0)
    weights = tmp_path / "tiny-clip.pt"
    torch.save(open_clip.create_model("lookalike-tiny-clip").state_dict(), weights)
    model = hub.HubModel(
        "tiny-clip", "open_clip", "lookalike-tiny-clip", "nobody/tiny-clip", ("open_clip_model.safetensors",),
        32, hub.CLIP_224,
    )  # fmt: skip
    embedders.register_hub_model(model)
    return "tiny-clip", weights


def index_both_ways(folder: Path, tmp_path: Path, name: str, weights: Path) -> dict[str, Collection]:
    """The folder indexed twice with the same weights: once run by PyTorch, once by ONNX Runtime."""
    collections = {}
    for runtime in ("torch", "onnx"):
        collection = Collection.open(tmp_path / f"collection-{runtime}", embedder=name)
        collection.use_embedder(embedders.create(name, weights=weights, runtime=runtime))
        report = collection.sync(folder)
        assert report.embedded == 24
        collections[runtime] = collection
    return collections


def same_answers(collections: dict[str, Collection], data_dir: Path, name: str) -> list:
    """Image searches (a new photo, an indexed one) give the same ids through both runtimes."""
    answers = {}
    for runtime, collection in collections.items():
        new = collection.search(data_dir / "cat" / "cat.100.jpg", k=5, expand=0)  # plain: scores in order
        indexed = collection.search_id(3, k=5)
        answers[runtime] = ([r.id for r in new], [r.id for r in indexed])
        scores = np.array([r.score for r in new])
        assert len(new) == 5 and np.all(np.diff(scores) <= 0)
    assert answers["torch"] == answers["onnx"]
    _, torch_vectors = collections["torch"].catalog.vectors(name)
    _, onnx_vectors = collections["onnx"].catalog.vectors(name)
    np.testing.assert_allclose(torch_vectors, onnx_vectors, atol=1e-4)
    return answers["onnx"]


def test_without_weights_or_network_the_message_says_how_to_get_them() -> None:
    for name in hub.MODELS:
        with pytest.raises(EmbedderError) as error:
            embedders.create(name)
        message = str(error.value)
        assert "--weights PATH" in message and "huggingface" in message and hub.MODELS[name].hf_repo in message


def test_weights_in_the_hugging_face_cache_are_found_without_a_download(empty_hugging_face_cache: Path) -> None:
    snapshot = empty_hugging_face_cache / "models--timm--efficientnet_b0.ra_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    random_timm_weights(snapshot / "model.safetensors", "efficientnet_b0")
    embedder = embedders.create("efficientnet-b0")
    assert embedder.source.weights_file() == snapshot / "model.safetensors"
    assert embedder.onnx_path().is_file() and embedder.classes == "imagenet-1k"


@pytest.mark.parametrize(
    "name",
    [
        "efficientnet-b0",
        pytest.param("dinov2-vits14", marks=pytest.mark.slow),
        pytest.param("convnext-tiny", marks=pytest.mark.slow),
    ],
)
def test_a_timm_network_from_a_weights_file_indexes_and_searches_the_same_through_both_runtimes(
    name: str, sample_folder: Path, tmp_path: Path, data_dir: Path
) -> None:
    model = hub.MODELS[name]
    weights = random_timm_weights(tmp_path / "weights.safetensors", model.architecture)
    collections = index_both_ways(sample_folder, tmp_path, name, weights)
    same_answers(collections, data_dir, name)
    onnx = collections["onnx"]
    assert onnx.embedder(name).dim == model.dim and onnx.stats()["indexed_embedders"] == {name: 24}
    # A classifier head gives concepts too (meaningless for random weights, but stored and searchable).
    has_concepts = onnx.catalog.concept_ids(name) == onnx.vector_ids(name)
    assert has_concepts == (model.classes is not None)
    for collection in collections.values():
        collection.close()


def test_clip_indexes_and_reads_words_the_same_through_both_runtimes(
    tiny_clip: tuple[str, Path], sample_folder: Path, tmp_path: Path, data_dir: Path
) -> None:
    name, weights = tiny_clip
    collections = index_both_ways(sample_folder, tmp_path, name, weights)
    same_answers(collections, data_dir, name)
    texts = {}
    for runtime, collection in collections.items():
        found = collection.search_text("a photo of a dog", 5)
        assert found.method == "text-encoder" and found.embedder == name and len(found.results) == 5
        texts[runtime] = [r.id for r in found.results]
        vectors = collection.embedder(name).embed_texts(["a dog", "a cat on a sofa"])
        assert vectors.shape == (2, 32)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert texts["torch"] == texts["onnx"]
    onnx_text = collections["onnx"].embedder(name).embed_texts(["a dog", "a cat on a sofa"])
    torch_text = collections["torch"].embedder(name).embed_texts(["a dog", "a cat on a sofa"])
    np.testing.assert_allclose(onnx_text, torch_text, atol=1e-4)
    assert collections["onnx"].embedder(name).source.text_onnx_path().is_file()
    for collection in collections.values():
        collection.close()


def test_the_weights_given_when_indexing_are_remembered_by_the_collection(
    tiny_clip: tuple[str, Path], sample_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lookalike.cli.main import main

    name, weights = tiny_clip
    where = ["--collection", str(tmp_path / "collection")]
    assert main(["index", str(sample_folder), "--embedder", name, "--weights", str(weights), *where]) == 0
    capsys.readouterr()
    assert main(["search", "--text", "two dogs", "--embedder", name, "-k", "3", "--json", *where]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    config = json.loads((tmp_path / "collection" / "config.json").read_text())
    assert config["weights"] == {name: str(weights.resolve())} and config["default_embedder"] == name
    # The server builds it from the remembered file too, and reads words with its text encoder.
    from fastapi.testclient import TestClient

    from lookalike.server import create_app

    with Collection.open(tmp_path / "collection", create=False) as collection:
        body = TestClient(create_app(collection)).get("/api/search/text", params={"q": "a dog", "k": 4}).json()
    assert body["method"] == "text-encoder" and body["embedder"] == name and len(body["results"]) == 4


@pytest.mark.slow
def test_clip_vit_b32_itself_exports_both_towers(tmp_path: Path, data_dir: Path) -> None:
    """The registered architecture (random weights, 150 M parameters): both towers through ONNX Runtime."""
    torch.manual_seed(0)
    weights = tmp_path / "clip.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), weights)
    embedder = embedders.create("clip-vit-b32", weights=weights)
    from lookalike.images import open_image

    vectors = embedder.embed_images([open_image(data_dir / "cat" / "cat.1.jpg")])
    text = embedder.embed_texts(["a cat"])
    assert vectors.shape == (1, 512) and text.shape == (1, 512)


def test_the_facts_copied_from_timm_and_open_clip_still_agree() -> None:
    for model in hub.MODELS.values():
        if model.library == "timm":
            cfg = timm.create_model(model.architecture, pretrained=False, **model.options).pretrained_cfg
            size = model.options.get("img_size", cfg["input_size"][1])
            assert model.preprocessing.crop == size, model.name
            # DINOv2 runs at 224 px (timm's config says 518) with its authors' evaluation transform, 256 -> 224
            crop_pct = 0.875 if "img_size" in model.options else cfg["crop_pct"]
            assert model.preprocessing.resize == int(size / crop_pct), model.name
            assert (model.preprocessing.mean, model.preprocessing.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
            assert cfg["hf_hub_id"] == model.hf_repo
        else:
            cfg = open_clip.get_pretrained_cfg(model.architecture, model.pretrained)
            assert cfg["hf_hub"].rstrip("/") == model.hf_repo
            assert (model.preprocessing.mean, model.preprocessing.std) == (cfg["mean"], cfg["std"]) or (
                model.preprocessing.mean == open_clip.OPENAI_DATASET_MEAN
            )
