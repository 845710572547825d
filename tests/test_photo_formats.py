"""Phones' photo formats: HEIC/HEIF (with pillow-heif, the `heif` extra) and AVIF (Pillow's own) are indexed,
searched with, uploaded and added like JPEGs; without pillow-heif a HEIC file is skipped with what to install.

Every HEIC and AVIF file here is a real photo the test encodes itself (pillow-heif's encoder, Pillow's AVIF).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_files
from fastapi.testclient import TestClient
from PIL import Image
from servers import indexed

from lookalike import Collection
from lookalike.images import ORIENTATION_TAG, ImageError, open_image
from lookalike.server import create_app

pillow_heif = pytest.importorskip("pillow_heif", reason="the heif extra (pillow-heif) is not installed")

EMBEDDER = "efficientnet-lite0"


def heic(image: Image.Image, orientation: int = 1) -> bytes:
    """`image` as a phone's HEIC (HEVC, quality 90), its EXIF orientation `orientation` (pillow-heif writes
    a quarter turn as the HEIF rotation box, as iPhones do, and the pixels as given)."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def avif(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="AVIF", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """6 sample JPEGs, and the first two again as photo-0.heic and photo-1.avif, the third as a HEIC stored
    sideways (pixels turned a quarter, EXIF orientation 6 to turn them back: rotated-2.heic)."""
    folder = tmp_path_factory.mktemp("formats") / "photos"
    folder.mkdir()
    files = sample_files(data_dir, per_label=3)
    for path in files:
        shutil.copy(path, folder / path.name)
    first, second, third = (Image.open(p).convert("RGB") for p in files[:3])
    (folder / "photo-0.heic").write_bytes(heic(first))
    (folder / "photo-1.avif").write_bytes(avif(second))
    (folder / "rotated-2.heic").write_bytes(heic(third.transpose(Image.Transpose.ROTATE_90), orientation=6))
    return folder


@pytest.fixture(scope="module")
def collection(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collection]:
    with indexed(photos, tmp_path_factory.mktemp("formats-collection") / "c", EMBEDDER) as opened:
        yield opened


def vector_of(collection: Collection, name: str) -> tuple[int, np.ndarray]:
    (record,) = [r for r in collection.catalog.records() if Path(r.path).name == name]
    _, vectors = collection.catalog.vectors(EMBEDDER, [record.id])
    return record.id, vectors[0]


def test_heic_and_avif_photos_are_indexed_as_the_same_photo(collection: Collection, data_dir: Path) -> None:
    names = {Path(r.path).name for r in collection.catalog.records()}
    assert {"photo-0.heic", "photo-1.avif", "rotated-2.heic"} <= names and len(names) == 9
    first, second, third = (p.name for p in sample_files(data_dir, per_label=3)[:3])
    other = vector_of(collection, sample_files(data_dir, per_label=3)[4].name)[1]
    for encoded, original in (("photo-0.heic", first), ("photo-1.avif", second), ("rotated-2.heic", third)):
        same = float(vector_of(collection, encoded)[1] @ vector_of(collection, original)[1])
        assert same > 0.97, (encoded, same)  # a re-encode of the same photo, turned upright
        assert same > float(vector_of(collection, encoded)[1] @ other) + 0.1


def test_a_sideways_heic_is_decoded_upright(photos: Path, data_dir: Path) -> None:
    upright = np.asarray(Image.open(sample_files(data_dir, per_label=3)[2]).convert("RGB"), dtype=np.float32)
    image = open_image(photos / "rotated-2.heic")
    assert image.size == (upright.shape[1], upright.shape[0]) == image.info["original_size"]
    assert np.abs(np.asarray(image, dtype=np.float32) - upright).mean() < 4  # HEVC's loss, not a quarter turn


def test_the_page_gets_an_upright_jpeg_preview_of_a_heic(collection: Collection, photos: Path, data_dir: Path) -> None:
    """For browsers that cannot show HEIC: the server's JPEG of an upload or an indexed photo, upright and one pixel
    per photo pixel (a region drawn on it is in the coordinates a search's box uses); reads need no token with
    --public-read, so neither does a preview."""
    upright = np.asarray(Image.open(sample_files(data_dir, per_label=3)[2]).convert("RGB"), dtype=np.float32)
    sideways = (photos / "rotated-2.heic").read_bytes()
    with TestClient(create_app(collection, token="t" * 32, public_read=True)) as client:
        answer = client.post("/api/preview", files={"file": ("IMG_0002.HEIC", sideways, "")})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "image/jpeg" and answer.headers["cache-control"] == "no-store"
        preview = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"), dtype=np.float32)
        assert preview.shape == upright.shape
        assert np.abs(preview - upright).mean() < 5  # HEVC's and JPEG's losses, not a quarter turn
        searched = client.post("/api/search?k=1", files={"file": ("IMG_0002.HEIC", sideways, "")})
        assert searched.json()["query"]["width"] == upright.shape[1]  # the search's pixels are the preview's
        broken = client.post("/api/preview", files={"file": ("IMG_0003.HEIC", sideways[: len(sideways) // 3], "")})
        assert broken.status_code == 422 and "not a readable image" in broken.json()["detail"]
        assert str(photos) not in broken.text and "/tmp" not in broken.text
        # an indexed HEIC: the same, from the checked file
        image_id, _ = vector_of(collection, "rotated-2.heic")
        indexed = client.get(f"/api/images/{image_id}/preview")
        assert indexed.status_code == 200 and indexed.headers["content-type"] == "image/jpeg"
        assert indexed.content == answer.content  # the same bytes decode to the same pixels
        assert client.get(f"/api/images/{image_id}").json()["width"] == upright.shape[1]
        assert client.get(f"/api/images/{10**6}/preview").status_code == 404


def test_a_heic_query_finds_its_jpeg(collection: Collection, photos: Path, data_dir: Path) -> None:
    jpeg_id, _ = vector_of(collection, sample_files(data_dir, per_label=3)[0].name)
    heic_id, stored = vector_of(collection, "photo-0.heic")
    assert float(collection.embed(photos / "photo-0.heic") @ stored) > 0.99999  # read as indexing read it
    hits = collection.search(photos / "photo-0.heic", k=2, expand=0)
    assert hits[0].id == jpeg_id and heic_id not in [h.id for h in hits]  # an indexed query leaves itself out


def test_heic_and_avif_uploads_search_and_add(collection: Collection, photos: Path, data_dir: Path) -> None:
    jpeg_id, _ = vector_of(collection, sample_files(data_dir, per_label=3)[0].name)
    avif_jpeg_id, _ = vector_of(collection, sample_files(data_dir, per_label=3)[1].name)
    heic_data, avif_data = (photos / "photo-0.heic").read_bytes(), (photos / "photo-1.avif").read_bytes()
    with TestClient(create_app(collection)) as client:
        for data, original in ((heic_data, jpeg_id), (avif_data, avif_jpeg_id)):
            found = client.post("/api/search?k=3&expand=0", files={"file": ("q", data, "application/octet-stream")})
            assert found.status_code == 200, found.text
            assert original in [hit["id"] for hit in found.json()["results"][:2]]
        new_photo = heic(Image.open(sample_files(data_dir, per_label=3)[5]).convert("RGB"))
        added = client.post("/api/images", files={"file": ("IMG_0001.HEIC", new_photo, "image/heic")})
        assert added.status_code == 201, added.text
        image_id = added.json()["id"]
        try:
            assert added.json()["name"].endswith(".heic")  # kept under a name the next index run reads
            assert added.json()["width"] == Image.open(sample_files(data_dir, per_label=3)[5]).width
            served = client.get(f"/api/images/{image_id}/file")
            assert served.status_code == 200 and served.headers["content-type"] == "image/heic"
            assert served.content == new_photo
            thumbnail = client.get(f"/api/images/{image_id}/thumbnail")
            assert thumbnail.status_code == 200 and thumbnail.content[:3] == b"\xff\xd8\xff"  # a JPEG to show
        finally:
            assert client.delete(f"/api/images/{image_id}").status_code in (200, 204)


def test_a_heic_and_the_jpeg_of_the_same_shot_are_near_duplicates(collection: Collection, data_dir: Path) -> None:
    """A phone's export often keeps both: each HEIC or AVIF is grouped with its JPEG, and with nothing else."""
    jpegs = [p.name for p in sample_files(data_dir, per_label=3)[:3]]
    near = collection.duplicates("near")
    groups = sorted(sorted(Path(m.path).name for m in group.members) for group in near.groups)
    assert groups == sorted(
        sorted(pair) for pair in zip(jpegs, ["photo-0.heic", "photo-1.avif", "rotated-2.heic"], strict=True)
    )


def test_a_corrupt_heic_is_a_clear_error(photos: Path) -> None:
    data = (photos / "photo-0.heic").read_bytes()
    for cut in (len(data) // 2, 200, 24):  # the image data cut short, or the boxes that describe it
        with pytest.raises(ImageError, match="corrupt or truncated"):
            open_image(data[:cut])


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )


def test_without_pillow_heif_a_heic_is_skipped_with_what_to_install(photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "phone"
    folder.mkdir()
    for name in ("photo-0.heic", "photo-1.avif", "cat.1.jpg"):
        shutil.copy(photos / name, folder / name)
    code = (
        "import sys, json; sys.modules['pillow_heif'] = None\n"  # as if not installed: its import fails
        "from lookalike import Collection\n"
        f"with Collection.open({str(tmp_path / 'c')!r}, embedder={EMBEDDER!r}) as c:\n"
        f"    r = c.sync({str(folder)!r})\n"
        "print(json.dumps({'added': r.added, 'skipped': r.skipped}))\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(Path(p).name for p in report["added"]) == ["cat.1.jpg", "photo-1.avif"]
    assert report["skipped"] == [
        [str(folder / "photo-0.heic"), "HEIC/HEIF image: decoding it needs pillow-heif (pip install 'lookalike[heif]')"]
    ]
    with Collection.open(tmp_path / "c") as collection:  # pillow-heif installed since: the file is read again
        again = collection.sync(folder)
    assert again.updated == [str(folder / "photo-0.heic")] and again.skipped == [] and again.unchanged == 2
    assert again.embedded == 1  # its row existed (as unreadable); now it has its vector


def test_indexing_jpegs_does_not_load_pillow_heif(photos: Path, tmp_path: Path) -> None:
    """pillow-heif takes about 0.3 s to import: it is loaded for the first HEIF file, never for JPEGs."""
    folder = tmp_path / "jpegs"
    folder.mkdir()
    shutil.copy(photos / "cat.1.jpg", folder / "cat.1.jpg")
    code = (
        "import sys\n"
        "from lookalike import Collection\n"
        f"with Collection.open({str(tmp_path / 'c')!r}, embedder={EMBEDDER!r}) as c:\n"
        f"    c.sync({str(folder)!r}); loaded_for_jpegs = 'pillow_heif' in sys.modules\n"
        f"    c.search({str(photos / 'photo-0.heic')!r}, k=1)\n"
        "print(loaded_for_jpegs, 'pillow_heif' in sys.modules)\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["False", "True"]
