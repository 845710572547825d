"""Region search: a box searches exactly the crop of the upright picture, through the library, REST and the CLI.

`embed(image, box=b)` must equal `embed(image cropped to b)`, where b is in pixels of the picture as it is
shown: for a photo whose EXIF orientation says "turn a quarter", in the turned picture. The expected crops
here are made by hand (Pillow's transpose of the stored pixels), not by lookalike's own decoding.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lookalike import Collection
from lookalike.cli.main import main
from lookalike.server import create_app

ORIENTATION = 0x0112
# EXIF orientation -> how to turn the stored pixels to show them (Pillow's turns are counter-clockwise).
UPRIGHT = {6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}
PLAIN_BOX = (40, 60, 300, 320)
# In upright pixels of a 300x400 portrait: y up to 390 exists only once the stored 400x300 picture is turned.
ROTATED_BOX = (30, 200, 260, 390)
NEW_CAT = "cat/cat.100.jpg"  # not among the 12 + 12 sample photos


def rotated_jpeg(data_dir: Path, folder: Path, orientation: int) -> Path:
    """A JPEG stored landscape (400x300) whose EXIF orientation says to show it as a 300x400 portrait."""
    with Image.open(data_dir / NEW_CAT) as photo:
        stored = photo.convert("RGB").crop((0, 0, 400, 300))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rotated-{orientation}.jpg"
    stored.save(path, format="JPEG", quality=95, exif=exif)
    return path


def upright(path: Path) -> Image.Image:
    """The picture as a viewer shows it, turned by hand from the stored pixels."""
    with Image.open(path) as stored:
        orientation = stored.getexif().get(ORIENTATION, 1)
        assert stored.size == (400, 300)
        return stored.convert("RGB").transpose(UPRIGHT[orientation])


def hits(results) -> list[tuple[int, float]]:
    """(id, score) of each result: `SearchResult`s, or the dicts the REST API and the CLI print."""
    return [(r["id"], r["score"]) if isinstance(r, dict) else (r.id, r.score) for r in results]


def same(found, expected) -> bool:
    """The same ids in the same order with the same scores (REST rounds scores to 6 decimals)."""
    a, b = hits(found), hits(expected)
    return [i for i, _ in a] == [i for i, _ in b] and [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-5)


# --- the library ----------------------------------------------------------------------------------


def test_a_box_embeds_exactly_the_crop(shared_collection: Collection, data_dir: Path) -> None:
    path = data_dir / NEW_CAT
    with Image.open(path) as photo:
        crop = photo.convert("RGB").crop(PLAIN_BOX)
    expected = shared_collection.embed(crop)
    for source in (path, str(path), path.read_bytes()):
        np.testing.assert_allclose(shared_collection.embed(source, box=PLAIN_BOX), expected, atol=1e-6)
    assert not np.allclose(shared_collection.embed(path), expected, atol=1e-3), "the box changes the vector"
    assert same(shared_collection.search(path, k=6, box=PLAIN_BOX), shared_collection.search_vector(expected, k=6))


@pytest.mark.parametrize("orientation", [6, 8])
def test_a_box_on_an_exif_rotated_photo_is_in_upright_pixels(
    shared_collection: Collection, data_dir: Path, tmp_path: Path, orientation: int
) -> None:
    path = rotated_jpeg(data_dir, tmp_path, orientation)
    picture = upright(path)
    assert picture.size == (300, 400)
    expected = shared_collection.embed(picture.crop(ROTATED_BOX))
    for source in (path, path.read_bytes()):
        np.testing.assert_allclose(shared_collection.embed(source, box=ROTATED_BOX), expected, atol=1e-6)
        np.testing.assert_allclose(shared_collection.embed(source), shared_collection.embed(picture), atol=1e-6)
    # The same numbers read as pixels of the stored (unturned) picture are another region.
    with Image.open(path) as stored:
        unturned = shared_collection.embed(stored.convert("RGB").crop((30, 200, 260, 300)))
    assert not np.allclose(unturned, expected, atol=1e-3)
    assert same(shared_collection.search(path, k=6, box=ROTATED_BOX), shared_collection.search_vector(expected, k=6))


def test_a_box_on_an_indexed_image_searches_the_crop_and_leaves_the_image_out(shared_collection: Collection) -> None:
    record = shared_collection.records()[7]
    with Image.open(record.path) as photo:
        expected = shared_collection.embed(photo.convert("RGB").crop((0, 0, 150, 120)))
    found = shared_collection.search(record.path, k=8, box=(0, 0, 150, 120))
    assert same(found, shared_collection.search_vector(expected, k=8, exclude=record.id))
    assert record.id not in [r.id for r in found]


# --- REST ---------------------------------------------------------------------------------------------


@pytest.fixture()
def rotated_collection(tmp_path: Path, data_dir: Path) -> Iterator[tuple[Collection, dict[int, Path]]]:
    """Three cats, three dogs and two EXIF-rotated photos (orientations 6 and 8), indexed."""
    root = tmp_path / "photos"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(1, 4):
            shutil.copy2(data_dir / label / f"{label}.{i}.jpg", root / label)
    rotated = {o: rotated_jpeg(data_dir, root / "cat", o) for o in UPRIGHT}
    collection = Collection.open(tmp_path / "collection")
    collection.sync(root)
    yield collection, rotated
    collection.close()


def test_rest_search_with_a_box_searches_the_upright_crop(
    rotated_collection: tuple[Collection, dict[int, Path]], data_dir: Path, tmp_path: Path
) -> None:
    collection, _ = rotated_collection
    client = TestClient(create_app(collection))
    upload = rotated_jpeg(data_dir, tmp_path / "upload", 6)
    expected = collection.embed(upright(upload).crop(ROTATED_BOX))
    response = client.post(
        "/api/search",
        params={"k": 5, "box": ",".join(map(str, ROTATED_BOX))},
        files={"file": ("q.jpg", upload.read_bytes(), "image/jpeg")},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["query"]["width"], body["query"]["height"]) == (300, 400)
    assert body["query"]["box"] == list(ROTATED_BOX)
    assert same(body["results"], collection.search_vector(expected, k=5))


@pytest.mark.parametrize("orientation", [6, 8])
def test_rest_similar_with_a_box_on_an_indexed_rotated_photo(
    rotated_collection: tuple[Collection, dict[int, Path]], orientation: int
) -> None:
    collection, rotated = rotated_collection
    client = TestClient(create_app(collection))
    record = collection.catalog.get_by_path(str(rotated[orientation].resolve()))
    assert (record.width, record.height) == (300, 400)
    expected = collection.embed(upright(rotated[orientation]).crop(ROTATED_BOX))
    response = client.get(f"/api/images/{record.id}/similar", params={"k": 5, "box": ",".join(map(str, ROTATED_BOX))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["id"] == record.id and body["query"]["box"] == list(ROTATED_BOX)
    assert same(body["results"], collection.search_vector(expected, k=5, exclude=record.id))
    whole = client.get(f"/api/images/{record.id}/similar", params={"k": 5}).json()
    assert not same(whole["results"], body["results"])


# --- the command line ---------------------------------------------------------------------------------


def test_cli_search_box(
    shared_collection: Collection, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = rotated_jpeg(data_dir, tmp_path, 6)
    expected = shared_collection.search_vector(shared_collection.embed(upright(path).crop(ROTATED_BOX)), k=4)
    box = [str(v) for v in ROTATED_BOX]
    col = str(shared_collection.path)
    assert main(["search", str(path), "-k", "4", "--box", *box, "--collection", col, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert same(printed, expected)
    assert main(["search", str(path), "-k", "4", "--collection", col, "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert not same(whole, expected), "without --box: the whole photo"
