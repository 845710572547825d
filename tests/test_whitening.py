"""PCA-whitening fit on a collection's own stored vectors: the fit, its persistence, refits, and searches using it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lookalike import Collection
from lookalike.index.whitening import Whitening, WhiteningSettings, fit_whitening

# small enough for the 24 sample photos: 16 vectors are enough to fit, +50 % triggers a refit
SMALL = WhiteningSettings(dim=8, power=0.5, shrinkage=0.1, refit_growth=0.5, min_vectors=10)


@pytest.fixture(scope="module")
def photo_vectors(data_dir: Path) -> np.ndarray:
    from lookalike import embedders
    from lookalike.images import open_image

    paths = [data_dir / label / f"{label}.{i}.jpg" for label in ("cat", "dog") for i in range(1, 13)]
    return embedders.create("efficientnet-lite0").embed_images([open_image(p) for p in paths])


def test_full_whitening_makes_the_fitted_vectors_uncorrelated_with_unit_variance(photo_vectors: np.ndarray) -> None:
    fit = fit_whitening(photo_vectors, WhiteningSettings(dim=10, power=1.0, shrinkage=0.0, min_vectors=2))
    assert fit.mean.shape == (1280,) and fit.projection.shape == (1280, 10) and fit.fitted_on == 24
    np.testing.assert_allclose(fit.mean, photo_vectors.mean(axis=0), atol=1e-6)
    projected = (photo_vectors - fit.mean) @ fit.projection
    np.testing.assert_allclose(np.cov(projected, rowvar=False), np.eye(10), atol=1e-3)
    applied = fit.apply(photo_vectors)
    np.testing.assert_allclose(np.linalg.norm(applied, axis=1), 1.0, atol=1e-5)


def test_power_and_shrinkage_scale_the_axes_between_pca_and_full_whitening(photo_vectors: np.ndarray) -> None:
    def settings(power: float, shrinkage: float) -> WhiteningSettings:
        return WhiteningSettings(dim=6, power=power, shrinkage=shrinkage, min_vectors=2)

    pca = fit_whitening(photo_vectors, settings(0.0, 0.0))
    variances = np.var((photo_vectors - pca.mean) @ pca.projection, axis=0, ddof=1)
    assert np.all(np.diff(variances) <= 1e-7), "PCA axes come in decreasing variance"
    # full shrinkage makes every axis' eigenvalue the same: whitening is then a plain rescaling of PCA
    shrunk = fit_whitening(photo_vectors, settings(1.0, 1.0))
    np.testing.assert_allclose(shrunk.apply(photo_vectors), pca.apply(photo_vectors), atol=1e-5)
    # power 0.5 divides each axis by the fourth root of its (shrunk) variance, by hand:
    half = fit_whitening(photo_vectors, settings(0.5, 0.2))
    total = np.var(photo_vectors, axis=0, ddof=1).sum() / 1280
    expected = pca.projection / ((0.8 * variances + 0.2 * total) ** 0.25)
    np.testing.assert_allclose(np.abs(half.projection), np.abs(expected), rtol=1e-3, atol=1e-6)


def test_output_size_follows_the_collection_unless_fixed() -> None:
    rule = WhiteningSettings()
    assert [rule.output_dim(n, 1280) for n in (300, 1010, 2020, 8000, 100_000)] == [32, 63, 126, 256, 256]
    assert WhiteningSettings(dim=64).output_dim(20, 1280) == 19  # never more than n - 1
    with pytest.raises(ValueError, match="shrinkage"):
        WhiteningSettings(shrinkage=1.5)
    with pytest.raises(ValueError, match="unknown whitening settings: colour"):
        WhiteningSettings.from_dict({"colour": 1})


def test_a_fit_survives_saving_and_loading(photo_vectors: np.ndarray, tmp_path: Path) -> None:
    fit = fit_whitening(photo_vectors, SMALL)
    fit.save(tmp_path / "w.npz")
    loaded = Whitening.load(tmp_path / "w.npz")
    assert loaded.key == fit.key and loaded.settings == SMALL and loaded.fitted_on == 24
    np.testing.assert_array_equal(loaded.apply(photo_vectors), fit.apply(photo_vectors))


def _ranking_by_hand(collection: Collection, fit: Whitening, query_id: int, k: int) -> list[int]:
    ids = np.asarray(sorted(collection.vector_ids()), dtype=np.int64)
    raw = collection.vectors_of(ids)
    scores = fit.apply(raw) @ fit.apply(collection.vectors_of([query_id]))[0]
    order = [int(i) for i in ids[np.argsort(-scores, kind="stable")] if i != query_id]
    return order[:k]


def test_collection_whitens_its_index_refits_when_grown_and_keeps_raw_vectors(
    sample_folder: Path, tmp_path: Path
) -> None:
    # start with 8 cats and 8 dogs; the other 8 photos come later
    later = tmp_path / "later"
    for label in ("cat", "dog"):
        (later / label).mkdir(parents=True)
        for i in range(9, 13):
            shutil.move(sample_folder / label / f"{label}.{i}.jpg", later / label / f"{label}.{i}.jpg")
    collection = Collection.open(tmp_path / "coll", embedder="efficientnet-lite0")
    collection.set_default_expand(0)  # rankings by hand below are plain cosine ones
    collection.set_whitening(SMALL)
    collection.sync(sample_folder)
    fit = collection.whitening()
    assert fit is not None and fit.fitted_on == 16 and fit.dim == 8
    assert (tmp_path / "coll" / "whitening" / "efficientnet-lite0.npz").is_file()
    assert collection.index().dim == 8  # the index holds transformed vectors ...
    ids = np.asarray(sorted(collection.vector_ids()), dtype=np.int64)
    raw = collection.vectors_of(ids)
    assert raw.shape == (16, 1280)  # ... the catalog the raw ones
    np.testing.assert_array_equal(fit_whitening(raw, SMALL).apply(raw), fit.apply(raw))  # fit on stored vectors

    # every search path ranks by the whitened vectors, and the scores are their cosines
    query = int(ids[0])
    expected = _ranking_by_hand(collection, fit, query, 5)
    by_id = collection.search_id(query, k=5)
    assert [r.id for r in by_id] == expected
    assert by_id[0].score == pytest.approx(float(fit.apply(raw[:1])[0] @ fit.apply(raw[ids == expected[0]])[0]), 1e-5)
    exact = collection.search_vectors(raw[:1], 5, exclude=[query], exact=True)
    assert exact.ids[0].tolist() == expected
    path_query = collection.search(collection.image(query).path, k=5)  # type: ignore[union-attr]
    assert [r.id for r in path_query] == expected
    plain_cosines = raw[1:] @ raw[0]
    assert by_id[0].score != pytest.approx(float(plain_cosines.max()), abs=1e-3), "not the raw cosine"

    # reopened: the same fit is loaded, not fit again
    collection.close()
    collection = Collection.open(tmp_path / "coll")
    assert collection.whitening_settings == SMALL
    assert collection.whitening().key == fit.key  # type: ignore[union-attr]

    # +4 images (25 %): below the refit fraction, the old fit stays and the new images are transformed by it
    for label in ("cat", "dog"):
        for i in (9, 10):
            shutil.move(later / label / f"{label}.{i}.jpg", sample_folder / label / f"{label}.{i}.jpg")
    collection.sync(sample_folder)
    assert collection.whitening().key == fit.key  # type: ignore[union-attr]
    assert len(collection.index()) == 20
    # +4 more (24 = 16 * 1.5): fit again on all 24 stored vectors, index rebuilt from them, nothing re-embedded
    for label in ("cat", "dog"):
        for i in (11, 12):
            shutil.move(later / label / f"{label}.{i}.jpg", sample_folder / label / f"{label}.{i}.jpg")
    report = collection.sync(sample_folder)
    assert report.embedded == 4
    refit = collection.whitening()
    assert refit is not None and refit.fitted_on == 24 and refit.key != fit.key
    all_ids = np.asarray(sorted(collection.vector_ids()), dtype=np.int64)
    np.testing.assert_allclose(refit.mean, collection.vectors_of(all_ids).mean(axis=0), atol=1e-6)
    assert [r.id for r in collection.search_id(query, k=5)] == _ranking_by_hand(collection, refit, query, 5)

    # whitening off: the raw vectors are searched again, from the catalog
    collection.set_whitening(None)
    assert collection.whitening() is None and collection.index().dim == 1280
    assert not (tmp_path / "coll" / "whitening" / "efficientnet-lite0.npz").exists()
    collection.close()


def test_too_few_vectors_are_searched_raw_until_there_are_enough(sample_folder: Path, tmp_path: Path) -> None:
    collection = Collection.open(tmp_path / "coll", embedder="efficientnet-lite0")
    collection.set_whitening(WhiteningSettings(dim=4, min_vectors=30))
    collection.sync(sample_folder)  # 24 photos
    assert collection.whitening() is None and collection.index().dim == 1280
    collection.close()
