"""The weak-match threshold, calibrated on a collection's own nearest-neighbour similarities."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from lookalike import Collection
from lookalike.confidence import calibrate_weak_match, nearest_neighbour_similarities


def test_threshold_is_a_low_quantile_of_each_images_nearest_neighbour(shared_collection: Collection) -> None:
    ids, vectors = shared_collection.catalog.vectors(shared_collection.default_embedder)
    similarities = vectors @ vectors.T
    np.fill_diagonal(similarities, -np.inf)
    exact = np.sort(similarities.max(axis=1))
    found = nearest_neighbour_similarities(shared_collection)
    assert np.sort(found) == pytest.approx(exact, abs=1e-5)  # 24 images: all of them are the sample
    assert calibrate_weak_match(shared_collection) == pytest.approx(np.quantile(exact, 0.05), abs=1e-5)
    assert calibrate_weak_match(shared_collection, quantile=0.0) == pytest.approx(exact[0], abs=1e-5)
    low, high = (calibrate_weak_match(shared_collection, quantile=q) for q in (0.05, 0.5))
    assert low is not None and high is not None and low < high
    # A sample smaller than the collection: a subset of the same similarities.
    sampled = nearest_neighbour_similarities(shared_collection, sample=10, seed=3)
    assert len(sampled) == 10
    assert all(np.isclose(exact, s, atol=1e-5).any() for s in sampled)
    with pytest.raises(ValueError, match="quantile"):
        calibrate_weak_match(shared_collection, quantile=1.5)


def test_too_small_a_collection_has_no_threshold(tmp_path: Path, data_dir: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(1, 4):
        shutil.copy2(data_dir / "cat" / f"cat.{i}.jpg", root)
    with Collection.open(tmp_path / "collection") as collection:
        assert calibrate_weak_match(collection) is None
        collection.sync(root)
        assert len(nearest_neighbour_similarities(collection)) == 3
        assert calibrate_weak_match(collection) is None  # 3 images say too little


def test_region_calibration_reads_only_the_files_indexed_and_locks_only_its_search(
    tmp_path: Path, data_dir: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(1, 13):
        shutil.copy2(data_dir / "cat" / f"cat.{i}.jpg", root)
    entered: list[int] = []

    @contextmanager
    def searching() -> Iterator[None]:
        entered.append(1)
        yield

    with Collection.open(tmp_path / "collection") as collection:
        collection.sync(root)
        assert len(nearest_neighbour_similarities(collection, region=True)) == 12
        # One file now holds other bytes, another is a FIFO: both are left out, neither is read.
        shutil.copy2(data_dir / "dog" / "dog.1.jpg", root / "cat.3.jpg")
        (root / "cat.5.jpg").unlink()
        os.mkfifo(root / "cat.5.jpg")
        found = nearest_neighbour_similarities(collection, region=True, searching=searching)
        assert len(found) == 10
        assert entered == [1]  # held once, for the index search of all crops together
        assert calibrate_weak_match(collection, region=True, searching=searching) == pytest.approx(
            calibrate_weak_match(collection, region=True), abs=1e-6
        )
