"""Queries and added photos are decoded as indexing decodes them, so a photo finds its own stored vector.

Indexing decodes a large JPEG reduced in draft mode (`Collection.draft`). A query or an upload decoded
whole gets a different vector for the same file (on 12-megapixel photos a cosine as low as 0.96 to its
stored one), and costs ten times the decoding: both paths now decode as `sync` does (a region reduced no
further than keeps it as large as the network's input).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_files
from fastapi.testclient import TestClient
from PIL import Image
from servers import indexed

from lookalike import Collection
from lookalike.images import ImageError, open_image
from lookalike.server import create_app

EMBEDDER = "efficientnet-lite0"


def phone_sized(photo: Path, seed: int, size: tuple[int, int] = (2400, 1800)) -> bytes:
    """A real photo enlarged to a phone's size with sensor-like noise, saved as a phone saves (q90 JPEG): the
    fine detail draft decoding drops exists, as in a camera's photo."""
    pixels = np.asarray(Image.open(photo).convert("RGB").resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    noisy = pixels + np.random.default_rng(seed).normal(0.0, 3.0, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Collection]:
    """8 sample photos and 2 phone-sized ones (big-0.jpg, big-1.jpg), indexed."""
    root = tmp_path_factory.mktemp("query-decoding")
    photos = root / "photos"
    photos.mkdir()
    files = sample_files(data_dir, per_label=4)
    for path in files:
        shutil.copy(path, photos / path.name)
    for i, path in enumerate(files[:2]):
        (photos / f"big-{i}.jpg").write_bytes(phone_sized(path, seed=i))
    with indexed(photos, root / "collection", EMBEDDER) as opened:
        yield opened


def stored(collection: Collection, name: str) -> tuple[int, Path, np.ndarray]:
    """(id, path, stored vector) of the indexed photo called `name`."""
    (record,) = [r for r in collection.catalog.records() if Path(r.path).name == name]
    _, vectors = collection.catalog.vectors(EMBEDDER, [record.id])
    return record.id, Path(record.path), vectors[0]


def test_a_large_photo_searched_again_gets_its_stored_vector(collection: Collection) -> None:
    _, path, vector = stored(collection, "big-0.jpg")
    whole = collection.embed(open_image(path.read_bytes()))  # a Pillow image is embedded as given: every pixel
    assert float(whole @ vector) < 0.9999  # decoded whole, the same file is another vector
    for query in (path, path.read_bytes()):  # as the CLI and the Python API read a query
        assert float(collection.embed(query) @ vector) > 0.99999


def test_an_uploaded_large_photo_gets_its_stored_vector(collection: Collection) -> None:
    image_id, path, _ = stored(collection, "big-1.jpg")
    data = path.read_bytes()
    with TestClient(create_app(collection)) as client:
        body = client.post("/api/search?k=1&expand=0", files={"file": ("q.jpg", data, "image/jpeg")}).json()
    assert body["query"]["width"] == 2400 and body["query"]["height"] == 1800  # the original's size, still
    assert body["results"][0]["id"] == image_id
    assert body["results"][0]["score"] > 0.99999


def test_a_large_photo_added_through_the_api_is_stored_as_indexing_stores_it(
    collection: Collection, data_dir: Path
) -> None:
    photo = sample_files(data_dir, per_label=6)[-1]  # not among the indexed ones
    data = phone_sized(photo, seed=7)
    with TestClient(create_app(collection)) as client:
        added = client.post("/api/images", files={"file": ("new.jpg", data, "image/jpeg")})
    assert added.status_code == 201, added.text
    assert (added.json()["width"], added.json()["height"]) == (2400, 1800)
    _, (vector,) = collection.catalog.vectors(EMBEDDER, [added.json()["id"]])
    assert float(vector @ collection.embed(open_image(data, draft_size=collection.draft_size(EMBEDDER)))) > 0.99999
    assert float(vector @ collection.embed(open_image(data))) < 0.9999  # what it was when decoded whole


def test_a_region_is_reduced_no_further_than_keeps_it_as_large_as_the_network_input(collection: Collection) -> None:
    _, path, _ = stored(collection, "big-0.jpg")
    data = path.read_bytes()
    wanted = collection.embedder(EMBEDDER).preprocessing.draft_size  # 256 x 256
    # A 600-pixel square of a 2400 x 1800 photo: reduced by 2 it would be 300 pixels, but then the whole
    # image would be 1200 x 900, less than 1024 = 256 x 2400 / 600 wide: decoded whole, the same vector.
    small = (300.0, 200.0, 900.0, 800.0)
    assert collection.draft_size(EMBEDDER, box=small, size=(2400, 1800)) == (1024, 1024)
    whole = collection.embed(open_image(data), box=small)
    assert float(collection.embed(path, box=small) @ whole) > 0.99999
    # Half of each side: decoded at 1/2 (1200 x 900), the region 600 x 450 pixels, still above 256.
    half = (600.0, 450.0, 1800.0, 1350.0)
    draft = collection.draft_size(EMBEDDER, box=half, size=(2400, 1800))
    assert draft == (2 * wanted[0], 2 * wanted[1])
    assert open_image(data, draft_size=draft).size == (1200, 900)
    reduced = collection.embed(data, box=half)
    assert float(reduced @ collection.embed(open_image(data), box=half)) > 0.99  # close to every pixel's
    assert float(reduced @ collection.embed(path, box=half)) > 0.99999  # a path and its bytes alike
    with TestClient(create_app(collection)) as client:
        body = client.post(
            "/api/search?k=3&expand=0&box=600,450,1800,1350", files={"file": ("q.jpg", data, "image/jpeg")}
        ).json()
    expected = collection.search(data, k=3, box=half, expand=0)
    assert [h["id"] for h in body["results"]] == [r.id for r in expected]
    assert [h["score"] for h in body["results"]] == pytest.approx([r.score for r in expected], abs=1e-5)
    assert body["query"]["box"] == list(half)


def test_a_collection_told_not_to_draft_decodes_every_pixel(collection: Collection) -> None:
    _, path, _ = stored(collection, "big-0.jpg")
    whole = collection.embed(open_image(path.read_bytes()))
    collection.draft = False
    try:
        assert collection.draft_size(EMBEDDER) is None
        assert float(collection.embed(path) @ whole) > 0.99999
    finally:
        collection.draft = True
    assert collection.draft_size(EMBEDDER) == collection.embedder(EMBEDDER).preprocessing.draft_size


def test_a_query_path_that_is_not_a_regular_file_is_a_clear_image_error(collection: Collection, tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)  # opened for reading the usual way, it would wait for a writer for ever
    for path, kind in ((folder, "a folder"), (fifo, "a FIFO")):
        for box in (None, (0.0, 0.0, 10.0, 10.0)):
            with pytest.raises(ImageError, match=f"not a regular file \\({kind}\\)"):
                collection.embed(path, box=box)
