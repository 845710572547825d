"""Training that keeps general similarity (issue 14): the residual head, the distillation term, the
self-supervised method, and the seen/unseen class split of benchmarks/bench_generalise.py."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from lookalike import Collection
from lookalike.images import open_image
from lookalike.training import TrainingRun, train
from lookalike.training.split import SplitRule

RULE = SplitRule(test_fraction=0.25, val_fraction=0.25)
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_generalise.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_generalise", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _neighbours(vectors: np.ndarray, k: int = 5) -> np.ndarray:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("method", ["siamese", "selfsup"])
def test_a_residual_head_at_initialisation_ranks_exactly_as_the_pretrained_embedder(
    shared_collection: Collection, method: str
) -> None:
    from lookalike.embedders.networks import EFFICIENTNET_FEATURES, EfficientNetBackbone, Embedding
    from lookalike.training import methods
    from lookalike.training.metric_learning import build_head, build_network

    records = shared_collection.records()
    ids = np.asarray(sorted(r.id for r in records))
    paths = {r.id: r.path for r in records}
    pretrained = shared_collection.vectors_of(ids, "efficientnet-lite0")
    options = {"backbone": "frozen", "backbone_model": "efficientnet-lite0", "head": "residual", "flip_average": False}
    spec = methods.get(method).make_spec(options if method == "siamese" else {"head": "residual"})
    torch.manual_seed(0)
    if method == "siamese":
        module = build_network(spec)
    else:  # SelfSupTask's network, built without filling its caches
        module = Embedding(EfficientNetBackbone(0, True, spec.backbone_model), build_head(spec, EFFICIENTNET_FEATURES))
    preprocessing = shared_collection.embedder("efficientnet-lite0").preprocessing
    pixels = torch.from_numpy(np.stack([preprocessing(open_image(paths[int(i)])) for i in ids]))
    with torch.no_grad():
        vectors = torch.nn.functional.normalize(module.eval()(pixels), dim=1).numpy()
    assert vectors.shape == pretrained.shape == (len(ids), 1280)
    np.testing.assert_allclose(vectors, pretrained, atol=2e-3)
    np.testing.assert_array_equal(_neighbours(vectors), _neighbours(pretrained))


def test_neighbourhood_distillation_is_zero_only_when_the_neighbourhoods_are_kept() -> None:
    from lookalike.training.metric_learning import neighbourhood_distillation

    torch.manual_seed(0)
    teacher = torch.randn(16, 32)
    assert float(neighbourhood_distillation(teacher * 3.0, teacher)) == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert float(neighbourhood_distillation(torch.randn(16, 32), teacher)) > 0.1
    rotated = teacher @ torch.linalg.qr(torch.randn(32, 32))[0]  # same cosines, other coordinates
    assert float(neighbourhood_distillation(rotated, teacher)) == pytest.approx(0.0, abs=1e-4)


def test_siamese_with_a_residual_head_and_distillation_trains_and_keeps_the_feature_size(
    sample_folder: Path, tmp_path: Path
) -> None:
    spec = {"backbone": "frozen", "backbone_model": "efficientnet-lite0", "head": "residual", "distill": 1.0}
    request = TrainingRun(
        method="siamese", folder=sample_folder, split=RULE, epochs=2, patience=5, spec={**spec, "batch_size": 8}
    )
    with Collection.open(tmp_path / "col") as collection:
        trained = train(collection, request)
        assert trained.info["dim"] == trained.info["architecture"]["dim"] == 1280
        assert trained.info["architecture"]["head"] == "residual"
        assert all(np.isfinite(h["train_loss"]) for h in trained.info["history"])
        query = sample_folder / "dog" / "dog.3.jpg"
        collection.sync(sample_folder, embedder="siamese")
        stored = {Path(r.path).name: r.id for r in collection.records()}
        vector = collection.embed(query, embedder="siamese")
        assert vector.shape == (1280,)
        np.testing.assert_allclose(collection.stored_vector(stored[query.name], "siamese"), vector, atol=1e-4)
        assert Path(collection.search(query, k=1, embedder="siamese")[0].path).parent.name == "dog"
    with pytest.raises(ValueError, match="scratch backbone has none"):
        TrainingRun(method="siamese", folder=sample_folder, spec={"backbone": "scratch", "distill": 1.0}).resolve()


def test_selfsup_trains_without_labels_and_its_model_finds_edited_copies(sample_folder: Path, tmp_path: Path) -> None:
    # The labels of the sample folder are ignored: the same photos in one flat folder train the same way.
    flat = tmp_path / "flat"
    flat.mkdir()
    for photo in sorted(sample_folder.rglob("*.jpg")):
        (flat / photo.name).write_bytes(photo.read_bytes())
    request = TrainingRun(
        method="selfsup", folder=flat, split=RULE, epochs=2, patience=5, spec={"batch_size": 8, "views": 3}
    )
    with Collection.open(tmp_path / "col") as collection:
        trained = train(collection, request)
        info = trained.info
        assert info["method"] == "selfsup" and info["monitor"] == "view-margin" and info["dim"] == 1280
        assert info["labels"] == ["flat"]  # no sub-folders: one label, the folder, so nothing to separate
        history = info["history"]
        assert 1 <= len(history) <= 2 and all(np.isfinite(h["train_loss"]) for h in history)
        assert {"view-margin", "view-recall@1"} <= set(history[0]["validation"])
        assert (tmp_path / "col" / "models" / "selfsup" / "model.onnx").is_file()
        collection.sync(flat, embedder="selfsup")
        # An edited copy (mirrored, darker, strong JPEG) finds its original first.
        original = flat / "cat.5.jpg"
        edited = ImageOps.mirror(open_image(original)).point(lambda v: int(v * 0.7))
        buffer = io.BytesIO()
        edited.save(buffer, "JPEG", quality=30)
        found = collection.search(Image.open(io.BytesIO(buffer.getvalue())), k=1, embedder="selfsup")
        assert Path(found[0].path).name == original.name


def test_the_split_protocol_takes_the_first_classes_by_sorted_name(tmp_path: Path, data_dir: Path) -> None:
    bench = _bench()
    for name in ["b", "Zebra", "a", "C", "d"]:
        (tmp_path / "classes" / name).mkdir(parents=True)
    (tmp_path / "classes" / "not-a-class.jpg").write_bytes(b"")
    assert bench.class_split(tmp_path / "classes", 2) == (["C", "Zebra"], ["a", "b", "d"])
    with pytest.raises(ValueError, match="need more than 5"):
        bench.class_split(tmp_path / "classes", 5)
    caltech = data_dir.parent / "caltech101-dev"
    seen, unseen = bench.class_split(caltech)
    assert (len(seen), len(unseen)) == (50, 51)
    assert seen[:4] == ["Faces", "Faces_easy", "Leopards", "Motorbikes"] and seen + unseen == sorted(seen + unseen)
    links = bench.link_classes(caltech, unseen[:1], tmp_path / "unseen", per_class=3)
    files = sorted((links / unseen[0]).iterdir())
    # Regular files (hard links or copies), which indexing reads; it skips symbolic links.
    assert len(files) == 3 and all(
        not f.is_symlink() and f.read_bytes() == (caltech / unseen[0] / f.name).read_bytes() for f in files
    )


def test_the_teacher_of_a_fine_tuned_backbone_keeps_the_pretrained_blocks() -> None:
    from lookalike.embedders.networks import EfficientNetBackbone
    from lookalike.training.metric_learning import PretrainedTeacher

    backbone = EfficientNetBackbone(2, True, "efficientnet-lite0")
    teacher = PretrainedTeacher(backbone)
    with torch.no_grad():
        cached = backbone.before_cut(torch.randn(2, 3, 224, 224))
        before = backbone.after_cut(cached)
        torch.testing.assert_close(teacher(cached), before)
        for p in backbone.parameters():
            if p.requires_grad:
                p.add_(0.05)  # training moves the trainable blocks ...
        assert not torch.allclose(backbone.after_cut(cached), before, atol=1e-3)
        torch.testing.assert_close(teacher(cached), before)  # ... the teacher's stay pretrained
    assert not any(p.requires_grad for p in teacher.blocks.parameters())
    frozen = EfficientNetBackbone(0, True, "efficientnet-lite0")
    features = torch.randn(3, 1280)
    assert PretrainedTeacher(frozen)(features) is features  # the cached pooled features are the teacher's
