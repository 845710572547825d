"""The REST API, through FastAPI's TestClient, on real photos."""

from __future__ import annotations

import io
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import copy_samples, embedding_held
from fastapi.testclient import TestClient
from PIL import Image
from servers import free_port, indexed, start_process, stop_serve, wait_until_answering

from lookalike import Collection
from lookalike import embedders as embedder_registry
from lookalike.confidence import calibrate_weak_match
from lookalike.images import open_image
from lookalike.server import create_app
from lookalike.server.batching import BatchedSearch
from lookalike.server.locking import FifoSemaphore, ReadWriteLock

# Photos outside the 12+12 sample, so they are new to every collection built here.
NEW_CAT = "cat/cat.100.jpg"
NEW_CAT_2 = "cat/cat.101.jpg"
NEW_DOG = "dog/dog.100.jpg"


def jpeg_upload(data: bytes, name: str = "query.jpg") -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name, data, "image/jpeg")}


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Collection]:
    """Its own collection of the 24 sample photos: the API writes thumbnails into it."""
    root = tmp_path_factory.mktemp("api")
    with indexed(copy_samples(data_dir, root / "photos"), root / "collection") as collection:
        yield collection


@pytest.fixture(scope="module")
def client(collection: Collection) -> Iterator[TestClient]:
    with TestClient(create_app(collection)) as client:  # runs the app's start and shutdown
        yield client


# --- search -------------------------------------------------------------------------------------


def test_search_by_upload_returns_mostly_the_same_kind(client: TestClient, data_dir: Path) -> None:
    response = client.post("/api/search?k=6", files=jpeg_upload((data_dir / NEW_CAT).read_bytes()))
    assert response.status_code == 200
    body = response.json()
    assert body["embedder"] == "efficientnet-lite0"
    assert body["query"] == {"id": None, "width": 403, "height": 499, "box": None}
    labels = [hit["label"] for hit in body["results"]]
    assert len(labels) == 6
    assert labels.count("cat") >= 5, labels
    assert body["expand"] == 5  # a new collection's default: query expansion, the query's nearest kept first
    plain = client.post("/api/search?k=6&expand=0", files=jpeg_upload((data_dir / NEW_CAT).read_bytes())).json()
    assert plain["expand"] == 0 and plain["results"][0]["id"] == body["results"][0]["id"]
    scores = [hit["score"] for hit in plain["results"]]
    assert scores == sorted(scores, reverse=True)  # by plain cosine; an expanded order need not be
    expanded_scores = {hit["id"]: hit["score"] for hit in body["results"]}
    for hit in plain["results"]:  # a result's score is its cosine to the query, expanded or not
        if hit["id"] in expanded_scores:
            assert expanded_scores[hit["id"]] == pytest.approx(hit["score"], abs=1e-5)
    assert [hit["rank"] for hit in body["results"]] == list(range(1, 7))
    assert all("/" not in hit["name"] for hit in body["results"])  # file names only, never server paths


def test_search_by_upload_matches_the_library(client: TestClient, collection: Collection, data_dir: Path) -> None:
    data = (data_dir / NEW_DOG).read_bytes()
    body = client.post("/api/search?k=5", files=jpeg_upload(data)).json()
    expected = collection.search(data, k=5)
    assert [hit["id"] for hit in body["results"]] == [r.id for r in expected]
    assert [hit["score"] for hit in body["results"]] == pytest.approx([r.score for r in expected], abs=1e-5)


def test_uploading_an_indexed_photo_finds_it_first(client: TestClient, collection: Collection) -> None:
    record = collection.catalog.records()[3]
    body = client.post("/api/search?k=3", files=jpeg_upload(Path(record.path).read_bytes())).json()
    assert body["results"][0]["id"] == record.id
    assert body["results"][0]["score"] > 0.999


def test_search_by_id_excludes_the_query(client: TestClient, collection: Collection) -> None:
    record = collection.catalog.records()[0]
    response = client.get(f"/api/images/{record.id}/similar", params={"k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["query"]["id"] == record.id
    ids = [hit["id"] for hit in body["results"]]
    assert record.id not in ids
    assert ids == [r.id for r in collection.search_id(record.id, k=5)]


def test_label_filter_only_returns_that_label(client: TestClient, data_dir: Path) -> None:
    body = client.post("/api/search?k=8&label=dog", files=jpeg_upload((data_dir / NEW_CAT).read_bytes())).json()
    assert len(body["results"]) == 8
    assert {hit["label"] for hit in body["results"]} == {"dog"}
    record_id = body["results"][0]["id"]
    by_id = client.get(f"/api/images/{record_id}/similar", params={"k": 20, "label": "cat"}).json()
    assert len(by_id["results"]) == 12
    assert {hit["label"] for hit in by_id["results"]} == {"cat"}
    nothing = client.get(f"/api/images/{record_id}/similar", params={"label": "horse"})
    assert nothing.status_code == 200
    assert nothing.json()["results"] == []


def test_box_searches_only_that_region(client: TestClient, collection: Collection, data_dir: Path) -> None:
    data = (data_dir / NEW_CAT).read_bytes()
    box = (40.0, 60.0, 300.0, 320.0)
    response = client.post("/api/search", params={"k": 5, "box": "40,60,300,320"}, files=jpeg_upload(data))
    assert response.status_code == 200
    body = response.json()
    assert body["query"]["box"] == list(box)
    expected = collection.search(data, k=5, box=box)
    assert [hit["id"] for hit in body["results"]] == [r.id for r in expected]
    assert [hit["score"] for hit in body["results"]] == pytest.approx([r.score for r in expected], abs=1e-5)
    whole = client.post("/api/search", params={"k": 5}, files=jpeg_upload(data)).json()
    assert [h["score"] for h in whole["results"]] != pytest.approx([h["score"] for h in body["results"]], abs=1e-3)


def test_box_on_an_indexed_image(client: TestClient, collection: Collection) -> None:
    record = collection.catalog.records()[15]
    # plain ranking: with expansion, the image searched as a picture would expand over itself
    response = client.get(f"/api/images/{record.id}/similar", params={"k": 4, "box": "0,0,120,100", "expand": 0})
    assert response.status_code == 200
    body = response.json()
    assert body["query"]["box"] == [0, 0, 120, 100]
    expected = collection.search(Image.open(record.path), k=5, box=(0, 0, 120, 100), expand=0)
    assert [h["id"] for h in body["results"]] == [r.id for r in expected if r.id != record.id][:4]


def test_box_is_in_upright_pixels_of_a_rotated_photo(client: TestClient, data_dir: Path) -> None:
    # A landscape JPEG whose EXIF says "rotate 90 degrees": browsers show it as portrait, and so does the box.
    photo = Image.open(data_dir / NEW_CAT).crop((0, 0, 400, 300))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", exif=exif)
    response = client.post("/api/search", params={"box": "10,350,290,390"}, files=jpeg_upload(buffer.getvalue()))
    assert response.status_code == 200, response.text  # y = 350 exists only in the upright 300x400 picture
    assert response.json()["query"]["width"] == 300
    assert response.json()["query"]["height"] == 400


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ("1,2,3", "four numbers"),
        ("a,b,c,d", "four numbers"),
        ("10,10,nan,40", "four numbers"),
        ("50,10,20,40", "x1 > x0"),
        ("5000,5000,6000,6000", "outside"),
    ],
)
def test_bad_boxes_are_refused(client: TestClient, data_dir: Path, box: str, message: str) -> None:
    response = client.post("/api/search", params={"box": box}, files=jpeg_upload((data_dir / NEW_CAT).read_bytes()))
    assert response.status_code == 422
    assert message in response.json()["detail"]


@pytest.mark.parametrize(("k", "status", "count"), [(0, 422, None), (101, 422, None), (3, 200, 3), (100, 200, 23)])
def test_k_is_bounded(client: TestClient, collection: Collection, k: int, status: int, count: int | None) -> None:
    record_id = collection.catalog.records()[0].id
    response = client.get(f"/api/images/{record_id}/similar", params={"k": k})
    assert response.status_code == status
    if count is not None:
        assert len(response.json()["results"]) == count


def test_unknown_or_unindexed_embedder_is_refused(client: TestClient, collection: Collection) -> None:
    record_id = collection.catalog.records()[0].id
    for name in ("no-such-embedder", "resnet50"):  # resnet50 exists but this collection has no vectors of it
        response = client.get(f"/api/images/{record_id}/similar", params={"embedder": name})
        assert response.status_code == 422
        assert "efficientnet-lite0" in response.json()["detail"]


def test_embedders_are_loaded_at_startup_not_per_request(
    collection: Collection, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh `Collection` object (no embedder built yet): `create_app` builds the embedder once, and no
    request of any kind (upload, id, region, label filter, query expansion) builds another."""
    created: list[str] = []
    real_create = embedder_registry.create

    def counting_create(name: str, **kwargs: object):
        created.append(name)
        return real_create(name, **kwargs)

    monkeypatch.setattr(embedder_registry, "create", counting_create)
    with Collection.open(collection.path, create=False) as fresh:
        app_client = TestClient(create_app(fresh))
        assert created == ["efficientnet-lite0"]
        record_id = fresh.records()[0].id
        data = (data_dir / NEW_CAT).read_bytes()
        responses = [
            app_client.post("/api/search", files=jpeg_upload(data)),
            app_client.post("/api/search", params={"box": "10,10,200,200", "label": "dog"}, files=jpeg_upload(data)),
            app_client.get(f"/api/images/{record_id}/similar"),
            app_client.get(f"/api/images/{record_id}/similar", params={"box": "0,0,100,100", "expand": 3}),
            app_client.get("/api/embedders"),
        ]
        assert [r.status_code for r in responses] == [200] * len(responses)
        assert created == ["efficientnet-lite0"], "an embedder was built while serving a request"


def test_a_foreign_photo_is_marked_as_no_close_match(
    client: TestClient, collection: Collection, data_dir: Path
) -> None:
    """A motorbike among cats and dogs: every result is weak; a new cat's best matches are not."""
    threshold = calibrate_weak_match(collection)
    assert threshold is not None
    motorbike = min((data_dir.parent / "caltech101-dev" / "Motorbikes").iterdir()).read_bytes()
    body = client.post("/api/search?k=6", files=jpeg_upload(motorbike)).json()
    assert body["weak_below"] == pytest.approx(threshold, abs=1e-4)
    assert body["no_close_match"] is True
    assert all(hit["weak"] for hit in body["results"])
    assert max(hit["score"] for hit in body["results"]) < threshold
    cat = client.post("/api/search?k=6", files=jpeg_upload((data_dir / NEW_CAT).read_bytes())).json()
    assert cat["no_close_match"] is False
    assert cat["results"][0]["weak"] is False
    assert [hit["weak"] for hit in cat["results"]] == [hit["score"] < threshold for hit in cat["results"]]
    # A region has its own threshold: crops are less like anything than whole photos.
    region_threshold = calibrate_weak_match(collection, region=True)
    assert region_threshold is not None and region_threshold < threshold
    region = client.post("/api/search?k=6&box=40,60,300,320", files=jpeg_upload((data_dir / NEW_CAT).read_bytes()))
    assert region.json()["weak_below"] == pytest.approx(region_threshold, abs=1e-4)
    # Searching by id and with a label filter carry the same marks.
    by_id = client.get(f"/api/images/{cat['results'][0]['id']}/similar", params={"k": 3, "label": "dog"}).json()
    assert by_id["weak_below"] == body["weak_below"]
    assert [hit["weak"] for hit in by_id["results"]] == [hit["score"] < threshold for hit in by_id["results"]]


# --- bad uploads --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "make_data", "reason"),
    [
        ("empty.jpg", lambda cat: b"", "empty file"),
        ("notes.txt", lambda cat: b"just some text, not an image\n" * 20, "not a recognised image format"),
        ("truncated.jpg", lambda cat: cat[: len(cat) // 2], "truncated"),
        ("garbage.png", lambda cat: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image"),
    ],
)
def test_unreadable_uploads_get_a_clear_422(client: TestClient, data_dir: Path, name, make_data, reason) -> None:
    data = make_data((data_dir / NEW_CAT).read_bytes())
    for url in ("/api/search", "/api/images"):
        response = client.post(url, files={"file": (name, data, "application/octet-stream")})
        assert response.status_code == 422, (url, response.text)
        assert response.headers["content-type"] == "application/json"
        detail = response.json()["detail"]
        assert "not a readable image" in detail
        assert reason in detail


def test_missing_file_field_is_a_422(client: TestClient) -> None:
    assert client.post("/api/search").status_code == 422


def test_oversize_uploads_get_413(collection: Collection, data_dir: Path) -> None:
    data = (data_dir / NEW_CAT).read_bytes()  # about 30 KB
    limited = TestClient(create_app(collection, max_upload_bytes=len(data) - 1))
    for url in ("/api/search", "/api/images"):
        # Just over the limit: seen when the file is read.
        response = limited.post(url, files=jpeg_upload(data))
        assert response.status_code == 413
        assert "too large" in response.json()["detail"]
        # Far over: refused from Content-Length before the body is read.
        response = limited.post(url, files=jpeg_upload(data * 20))
        assert response.status_code == 413
        assert "too large" in response.json()["detail"]
    assert limited.post("/api/search", files=jpeg_upload(data[: len(data) - 1])).status_code == 422  # within limit


def test_streamed_oversize_body_without_length_gets_413(collection: Collection, data_dir: Path) -> None:
    limited = TestClient(create_app(collection, max_upload_bytes=1000))

    def chunks() -> Iterator[bytes]:
        for _ in range(200):
            yield b"x" * 1024  # 200 KB with no Content-Length: chunked transfer

    response = limited.post(
        "/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zzz"}
    )
    assert response.status_code == 413


def test_too_many_pixels_gets_413(collection: Collection) -> None:
    limited = TestClient(create_app(collection, max_pixels=300 * 300))
    response = limited.post("/api/search", files={"file": ("big.png", png_bytes(400, 300), "image/png")})
    assert response.status_code == 413
    assert response.json()["detail"] == "image too large: 400x300 pixels is 0.12 MP, the limit is 0.09 MP"
    ok = limited.post("/api/search", files={"file": ("ok.png", png_bytes(300, 300), "image/png")})
    assert ok.status_code == 200


def big_jpeg(data_dir: Path, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.open(data_dir / NEW_CAT).resize(size, Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def test_a_jpeg_over_the_pixel_limit_is_searched_decoded_reduced(collection: Collection, data_dir: Path) -> None:
    """A phone photo over the limit is decoded at 1/2..1/8 scale; its size and box stay in original pixels."""
    limited = TestClient(create_app(collection, max_pixels=500_000))
    data = big_jpeg(data_dir, (1612, 1996))  # 3.2 MP: decoded at 1/4, 403x499
    response = limited.post("/api/search", params={"k": 5}, files=jpeg_upload(data))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["query"]["width"], body["query"]["height"]) == (1612, 1996)
    expected = collection.search(open_image(data), k=5)  # decoded whole
    assert [h["id"] for h in body["results"]][:3] == [r.id for r in expected][:3]
    assert [h["score"] for h in body["results"]] == pytest.approx([r.score for r in expected], abs=0.02)
    # A region in original pixels: the same crop as of the full decode.
    box = (160.0, 240.0, 1200.0, 1280.0)
    region = limited.post("/api/search", params={"k": 5, "box": "160,240,1200,1280"}, files=jpeg_upload(data))
    assert region.status_code == 200, region.text
    expected = collection.search(open_image(data), k=5, box=box)
    assert [h["id"] for h in region.json()["results"]][:3] == [r.id for r in expected][:3]
    assert [h["score"] for h in region.json()["results"]] == pytest.approx([r.score for r in expected], abs=0.02)
    # A PNG has no reduced decoding: refused, in plain words.
    refused = limited.post("/api/search", files={"file": ("big.png", png_bytes(1000, 600), "image/png")})
    assert refused.status_code == 413
    assert refused.json()["detail"] == "image too large: 1000x600 pixels is 0.6 MP, the limit is 0.5 MP"


# --- serving images -----------------------------------------------------------------------------


def test_image_file_is_the_indexed_file(client: TestClient, collection: Collection) -> None:
    record = collection.catalog.records()[2]
    info = client.get(f"/api/images/{record.id}").json()
    assert info["name"] == Path(record.path).name
    assert info["label"] == record.label
    response = client.get(info["image_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content == Path(record.path).read_bytes()


def test_image_details_give_the_path_below_the_indexed_folder(client: TestClient, collection: Collection) -> None:
    record = collection.catalog.records()[14]
    details = client.get(f"/api/images/{record.id}").json()
    assert details["path"] == f"{record.label}/{Path(record.path).name}"  # photos/dog/dog.3.jpg -> dog/dog.3.jpg
    assert details["file_size"] == Path(record.path).stat().st_size
    assert details["uploaded"] is False
    assert (details["width"], details["height"]) == (record.width, record.height)


def test_thumbnail_is_made_once_and_cached_in_the_collection(client: TestClient, collection: Collection) -> None:
    record = collection.catalog.records()[5]
    url = client.get(f"/api/images/{record.id}").json()["thumbnail_url"]
    first = client.get(url)
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/jpeg"
    thumbnail = Image.open(io.BytesIO(first.content))
    assert max(record.width, record.height) > 256
    assert max(thumbnail.size) == 256
    cached = list((collection.path / "thumbnails").glob(f"{record.id}-*.jpg"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = client.get(url)
    assert second.content == first.content
    assert cached[0].stat().st_mtime_ns == stamp  # served from the cache, not remade
    assert not list((collection.path / "thumbnails").glob(".*.tmp"))  # no leftovers from the atomic write


def test_a_thumbnail_is_remade_when_its_file_changes(small_collection: Collection, data_dir: Path) -> None:
    """The same path (and id) with new content, indexed by another process while the server runs: the next
    thumbnail shows the new picture, and the old one is dropped from the cache."""
    client = TestClient(create_app(small_collection))
    record = small_collection.records()[0]
    before = client.get(client.get(f"/api/images/{record.id}").json()["thumbnail_url"])
    assert before.status_code == 200
    path = Path(record.path)
    shutil.copyfile(data_dir / NEW_DOG, path)  # new bytes, new size and mtime
    with Collection.open(small_collection.path, create=False) as other:
        assert other.sync(path.parent.parent).updated == [str(path)]
    info = client.get(f"/api/images/{record.id}").json()
    after = client.get(info["thumbnail_url"])
    assert after.status_code == 200 and after.content != before.content

    def pixels(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize(size), dtype=np.float32)

    shown = Image.open(io.BytesIO(after.content))
    expected = Image.open(data_dir / NEW_DOG)
    expected.thumbnail((256, 256))
    assert shown.size == expected.size
    new_difference = np.abs(pixels(shown, shown.size) - pixels(expected, shown.size)).mean()
    old_difference = np.abs(pixels(Image.open(io.BytesIO(before.content)), shown.size) - pixels(expected, shown.size))
    assert new_difference < 8 and old_difference.mean() > 3 * new_difference
    sha = small_collection.image(record.id).sha256
    cached = list((small_collection.path / "thumbnails").glob(f"{record.id}-*.jpg"))
    assert [p.name for p in cached] == [f"{record.id}-{sha[:12]}.jpg"]


@pytest.mark.parametrize(
    "url",
    [
        "/api/images/../../etc/passwd",
        "/api/images/..%2F..%2Fetc%2Fpasswd",
        "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/file",
        "/api/images/..%2F..%2Fetc%2Fpasswd/thumbnail",
        "/api/images/etc/passwd/file",
        "/static/../../../../etc/passwd",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/images/abc/file",
        "/api/images/1.5/file",
        "/api/images/-1/file",
        "/api/images/0/thumbnail",
        "/api/images/999999/file",
        "/api/images/999999/thumbnail",
        "/api/images/999999/similar",
        "/api/images/1e3/file",
    ],
)
def test_no_path_from_a_client_is_ever_opened(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code in (404, 422), response.status_code
    assert b"root:" not in response.content
    assert response.headers["content-type"] == "application/json"


def test_deleting_an_unknown_id_is_a_404(client: TestClient) -> None:
    assert client.delete("/api/images/999999").status_code == 404
    assert client.delete("/api/images/abc").status_code == 422


# --- facts --------------------------------------------------------------------------------------


def test_stats_and_embedders(client: TestClient) -> None:
    stats = client.get("/api/stats").json()
    assert stats["images"] == 24
    assert stats["labels"] == {"cat": 12, "dog": 12}
    assert stats["indexed_embedders"] == {"efficientnet-lite0": 24}
    assert "path" not in stats
    embedders = client.get("/api/embedders").json()
    assert embedders["default"] == "efficientnet-lite0"  # the fixture's (servers.indexed)
    by_name = {e["name"]: e for e in embedders["embedders"]}
    assert by_name["efficientnet-lite0"] == {
        "name": "efficientnet-lite0",
        "vectors": 24,
        "default": True,
        "ready": True,
    }
    assert by_name["resnet50"]["ready"] is False


def test_limits_are_published(collection: Collection) -> None:
    limited = TestClient(create_app(collection, max_upload_bytes=123_456, max_pixels=7_000_000))
    assert limited.get("/api/limits").json() == {
        "max_upload_bytes": 123_456,
        "max_pixels": 7_000_000,
        "max_k": 100,
        "default_k": 12,
        "read_only": False,
    }


def test_browsing_pages_through_every_image_once(client: TestClient) -> None:
    seen: list[int] = []
    offset = 0
    while True:
        page = client.get("/api/images", params={"offset": offset, "limit": 10}).json()
        assert page["total"] == 24
        seen += [item["id"] for item in page["items"]]
        offset += 10
        if offset >= page["total"]:
            break
    assert len(seen) == 24 == len(set(seen))
    dogs = client.get("/api/images", params={"label": "dog", "limit": 200}).json()
    assert dogs["total"] == 12
    assert {item["label"] for item in dogs["items"]} == {"dog"}
    assert client.get("/api/images", params={"limit": 0}).status_code == 422


def test_page_docs_and_static_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert 'id="file-input"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    docs = client.get("/docs")
    assert docs.status_code == 200
    # Swagger UI comes from this server (fastapi-offline), so the docs work with no network.
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/images/{image_id}/similar", "/api/images", "/api/stats"} <= set(paths)
    assert client.get("/redoc").status_code == 404  # ReDoc's bundle fetches its logo from the network


# --- cross-origin rules -------------------------------------------------------------------------


def test_cors_is_off_unless_origins_are_given(collection: Collection) -> None:
    origin = "http://localhost:3000"
    closed = TestClient(create_app(collection))
    response = closed.get("/api/stats", headers={"Origin": origin})
    assert "access-control-allow-origin" not in response.headers
    opened = TestClient(create_app(collection, cors_origins=[origin]))
    response = opened.get("/api/stats", headers={"Origin": origin})
    assert response.headers["access-control-allow-origin"] == origin
    preflight = opened.options("/api/images/1", headers={"Origin": origin, "Access-Control-Request-Method": "DELETE"})
    assert preflight.status_code == 200
    assert (
        opened.get("/api/stats", headers={"Origin": "http://evil.test"}).headers.get("access-control-allow-origin")
        is None
    )


def test_a_foreign_page_cannot_add_images(client: TestClient, collection: Collection, data_dir: Path) -> None:
    before = collection.catalog.count()
    response = client.post(
        "/api/images", files=jpeg_upload((data_dir / NEW_CAT).read_bytes()), headers={"Origin": "http://evil.test"}
    )
    assert response.status_code == 403
    assert collection.catalog.count() == before
    same_site = client.post(
        "/api/search", files=jpeg_upload((data_dir / NEW_CAT).read_bytes()), headers={"Origin": "http://testserver"}
    )
    assert same_site.status_code == 200


def test_unknown_host_names_are_refused_when_hosts_are_restricted(collection: Collection) -> None:
    app = create_app(collection, allowed_hosts=["127.0.0.1", "localhost"])
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/stats").status_code == 200
    assert TestClient(app, base_url="http://rebound.example").get("/api/stats").status_code == 400


# --- batching concurrent searches ---------------------------------------------------------------


def exact_search(matrix: np.ndarray, batch_sizes: list[int], delay: float = 0.0):
    def search(
        queries: np.ndarray, count: int, exclude: np.ndarray | None = None, expand: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        assert expand == 0, "these callers never expand"
        batch_sizes.append(len(queries))
        time.sleep(delay)  # a slow index, so that concurrent callers queue up behind it
        scores = queries @ matrix.T
        for row, left_out in enumerate([] if exclude is None else exclude):
            if left_out >= 0:
                scores[row, left_out] = -np.inf
        ids = np.argsort(-scores, axis=1)[:, :count]
        return np.take_along_axis(scores, ids, axis=1), ids

    return search


def test_batched_search_gives_each_caller_its_own_exact_results() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((24, 16)).astype(np.float32)
    batch_sizes: list[int] = []
    batched = BatchedSearch(exact_search(matrix, batch_sizes, delay=0.05), max_batch=8)
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    reference_sizes: list[int] = []
    reference = exact_search(matrix, reference_sizes)
    # Callers ask for different numbers of results, and every third leaves out its best match.
    left_out = {i: int(reference(queries[i : i + 1], 1)[1][0, 0]) if i % 3 == 0 else -1 for i in range(len(queries))}

    def one(i: int) -> None:
        results[i] = batched.search(queries[i], 3 + i % 4, left_out[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(queries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for i, (scores, ids) in results.items():
        expected_scores, expected_ids = reference(queries[i : i + 1], 3 + i % 4, np.asarray([left_out[i]]))
        assert left_out[i] not in ids.tolist()
        assert ids.tolist() == expected_ids[0].tolist()
        assert scores == pytest.approx(expected_scores[0], abs=1e-5)
    assert len(results) == len(queries)
    assert sum(batch_sizes) == len(queries)  # every query searched exactly once
    assert max(batch_sizes) > 1  # concurrent callers shared passes over the index
    assert max(batch_sizes) <= 8


def test_batched_search_searches_each_query_expansion_of_a_batch_on_its_own() -> None:
    """Callers asking for different query expansions share a batch but never a search: each (expansion) group is
    searched once with its own expansion, and each caller gets its group's answer."""
    calls: list[tuple[int, int]] = []
    release = threading.Event()

    def search(queries: np.ndarray, count: int, exclude: np.ndarray, expand: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append((len(queries), expand))
        release.wait(5)  # the first caller holds the index while the others queue up
        ids = np.full((len(queries), count), expand, dtype=np.int64)  # an answer that says which expansion
        return np.zeros((len(queries), count), dtype=np.float32), ids

    batched = BatchedSearch(search)
    results: dict[int, np.ndarray] = {}

    def one(i: int, expand: int) -> None:
        results[i] = batched.search(np.ones(4, dtype=np.float32), 2, -1, expand)[1]

    first = threading.Thread(target=one, args=(0, 0))
    first.start()
    while not calls:
        time.sleep(0.01)
    others = [threading.Thread(target=one, args=(i, 5 if i % 2 else 0)) for i in range(1, 7)]
    for thread in others:
        thread.start()
    time.sleep(0.2)
    release.set()
    for thread in [first, *others]:
        thread.join(timeout=10)
    assert calls[0] == (1, 0) and sorted(calls[1:]) == [(3, 0), (3, 5)]
    assert all(results[i].tolist() == [5 if i % 2 else 0] * 2 for i in range(7))


def test_batched_search_alone_is_a_plain_search_and_errors_reach_every_caller() -> None:
    matrix = np.eye(4, dtype=np.float32)
    sizes: list[int] = []
    batched = BatchedSearch(exact_search(matrix, sizes))
    scores, ids = batched.search(matrix[2], 2)
    assert ids.tolist()[0] == 2 and sizes == [1]

    def broken(queries: np.ndarray, count: int, exclude: np.ndarray, expand: int) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(0.05)
        raise RuntimeError("index unavailable")

    failing = BatchedSearch(broken)
    errors: list[str] = []

    def one() -> None:
        try:
            failing.search(matrix[0], 1)
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=one) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == ["index unavailable"] * 5


def test_fifo_semaphore_serves_waiters_in_arrival_order() -> None:
    slots = FifoSemaphore(1)
    order: list[int] = []
    slots.acquire()

    def wait_turn(number: int) -> None:
        with slots:
            order.append(number)

    threads = []
    for number in range(5):
        thread = threading.Thread(target=wait_turn, args=(number,))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 10
        while len(slots._waiters) < number + 1:  # queued before the next one starts
            assert time.monotonic() < deadline
            time.sleep(0.001)
    slots.release()
    for thread in threads:
        thread.join(timeout=10)
    assert order == [0, 1, 2, 3, 4]
    with slots:  # every slot came back
        pass


def test_readers_and_writers_enter_in_arrival_order() -> None:
    """No writer preference: a search that arrived before a write is not sent behind it, and
    readers that arrive together share the lock."""
    lock = ReadWriteLock()
    entered: list[str] = []
    inside: list[str] = []
    overlaps: list[set[str]] = []
    guard = threading.Lock()

    def visit(name: str) -> None:
        with lock.writing() if name.startswith("W") else lock.reading():
            with guard:
                entered.append(name)
                inside.append(name)
                overlaps.append(set(inside))
            time.sleep(0.05)
            with guard:
                inside.remove(name)

    release = threading.Event()

    def first_reader() -> None:
        with lock.reading():
            release.wait(10)

    threads = [threading.Thread(target=first_reader)]
    threads[0].start()
    for position, name in enumerate(["W1", "R2", "W3", "R4", "R5"], start=1):
        thread = threading.Thread(target=visit, args=(name,))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 10
        while len(lock._queue) < position:  # queued before the next one arrives
            assert time.monotonic() < deadline
            time.sleep(0.001)
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert entered[:3] == ["W1", "R2", "W3"]  # a writer-preferring lock lets W3 in before R2
    assert sorted(entered[3:]) == ["R4", "R5"]
    assert {"R4", "R5"} in overlaps  # consecutive readers are inside together
    assert all(len(group) == 1 for group in overlaps if group & {"W1", "W3"})  # writers alone
    with lock.writing():  # and the lock is free again
        pass


# --- serve(): what the CLI runs ----------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on `port`, from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:  # 0A = LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_serve_listens_on_loopback_only_and_stops_cleanly(small_collection: Collection, tmp_path: Path) -> None:
    port = free_port()
    code = (
        "import sys; from pathlib import Path; from lookalike.server import serve; "
        "serve(Path(sys.argv[1]), port=int(sys.argv[2]))"
    )
    log = tmp_path / "server.log"
    process = start_process([sys.executable, "-c", code, str(small_collection.path), str(port)], log)
    try:
        wait_until_answering(
            process, log, f"http://127.0.0.1:{port}/api/stats", ready=lambda r: r.json()["images"] == 6, timeout=60
        )
        assert listening_addresses(port) == {"127.0.0.1"}
        # Bound to loopback, it only answers to loopback host names (no DNS rebinding).
        assert httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": "rebound.example"}).status_code == 400
        assert httpx.get(f"http://localhost:{port}/api/stats").status_code == 200
    finally:
        stop_serve(process, log)


# --- writing ------------------------------------------------------------------------------------


def test_add_search_delete_round_trip(small_collection: Collection, data_dir: Path) -> None:
    client = TestClient(create_app(small_collection))
    data = (data_dir / NEW_CAT).read_bytes()
    # A hostile file name must not choose where the upload is stored.
    response = client.post("/api/images?label=cat", files=jpeg_upload(data, name="../../../evil.jpg"))
    assert response.status_code == 201
    added = response.json()
    assert added["label"] == "cat"
    assert (added["width"], added["height"]) == (403, 499)
    stored = list((small_collection.path / "uploads").iterdir())
    assert len(stored) == 1
    assert stored[0].read_bytes() == data
    assert stored[0].suffix == ".jpg" and "evil" not in stored[0].name
    assert not (small_collection.path.parent / "evil.jpg").exists()
    assert client.get("/api/stats").json()["images"] == 7
    listed = client.get("/api/images", params={"limit": 200}).json()
    assert listed["total"] == 7
    assert added["id"] in [item["id"] for item in listed["items"]]

    hits = client.post("/api/search?k=3", files=jpeg_upload(data)).json()["results"]
    assert hits[0]["id"] == added["id"]
    assert hits[0]["score"] > 0.999
    assert client.get(added["image_url"]).content == data
    assert client.get(added["thumbnail_url"]).status_code == 200
    cats = client.post("/api/search?k=4&label=cat", files=jpeg_upload(data)).json()["results"]
    assert [h["id"] for h in cats][:1] == [added["id"]]
    assert len(cats) == 4
    similar = client.get(f"/api/images/{added['id']}/similar?k=3").json()["results"]
    assert added["id"] not in [h["id"] for h in similar]

    assert client.delete(f"/api/images/{added['id']}").status_code == 204
    assert client.get(f"/api/images/{added['id']}").status_code == 404
    assert client.get(added["image_url"]).status_code == 404
    hits = client.post("/api/search?k=6", files=jpeg_upload(data)).json()["results"]
    assert added["id"] not in [h["id"] for h in hits]
    assert len(hits) == 6
    cats = client.post("/api/search?k=4&label=cat", files=jpeg_upload(data)).json()["results"]
    assert len(cats) == 3  # the label filter forgot the deleted image too
    assert added["id"] not in [h["id"] for h in cats]
    assert not list((small_collection.path / "uploads").iterdir())  # the server's own copy is gone
    assert not list((small_collection.path / "thumbnails").glob(f"{added['id']}-*"))
    assert client.delete(f"/api/images/{added['id']}").status_code == 404
    listed = client.get("/api/images", params={"limit": 200}).json()
    assert listed["total"] == 6
    assert added["id"] not in [item["id"] for item in listed["items"]]


def test_a_running_server_sees_what_another_process_indexes(small_collection: Collection, data_dir: Path) -> None:
    """`lookalike index` run beside `lookalike serve` (here: a second connection to the collection):
    the server's browse list and searches include the new photo, and drop it once removed."""
    client = TestClient(create_app(small_collection))
    assert client.get("/api/images", params={"limit": 200}).json()["total"] == 6  # the lists are now cached
    data = (data_dir / NEW_DOG).read_bytes()
    assert client.post("/api/search?k=6", files=jpeg_upload(data)).json()["results"][0]["score"] < 0.999
    photos = Path(small_collection.catalog.records()[0].path).parent.parent
    shutil.copy2(data_dir / NEW_DOG, photos / "dog")
    with Collection.open(small_collection.path, create=False) as other:
        other.sync(photos)
        new_id = other.catalog.get_by_path(str(photos / NEW_DOG)).id
    listed = client.get("/api/images", params={"limit": 200}).json()
    assert listed["total"] == 7 and new_id in [item["id"] for item in listed["items"]]
    hits = client.post("/api/search?k=7", files=jpeg_upload(data)).json()["results"]
    assert hits[0]["id"] == new_id and hits[0]["score"] > 0.999
    with Collection.open(small_collection.path, create=False) as other:
        assert other.remove([new_id]) == 1
    hits = client.post("/api/search?k=7", files=jpeg_upload(data)).json()["results"]
    assert new_id not in [h["id"] for h in hits] and len(hits) == 6
    assert client.get("/api/images", params={"limit": 200}).json()["total"] == 6


def test_a_read_only_server_refuses_to_add_or_remove(small_collection: Collection, data_dir: Path) -> None:
    client = TestClient(create_app(small_collection, read_only=True))
    assert client.get("/api/limits").json()["read_only"] is True
    record = small_collection.catalog.records()[0]
    added = client.post("/api/images", files=jpeg_upload((data_dir / NEW_CAT).read_bytes()))
    assert added.status_code == 403
    assert "read-only" in added.json()["detail"]
    assert client.delete(f"/api/images/{record.id}").status_code == 403
    assert small_collection.catalog.count() == 6
    uploads = small_collection.path / "uploads"
    assert not uploads.exists() or not list(uploads.iterdir())
    assert client.post("/api/search", files=jpeg_upload((data_dir / NEW_CAT).read_bytes())).status_code == 200


def test_an_uploaded_image_is_listed_under_uploads(small_collection: Collection, data_dir: Path) -> None:
    client = TestClient(create_app(small_collection))
    added = client.post("/api/images?label=cat", files=jpeg_upload((data_dir / NEW_CAT).read_bytes())).json()
    details = client.get(f"/api/images/{added['id']}").json()
    assert details["uploaded"] is True
    assert details["path"].startswith("uploads/") and details["path"].endswith(".jpg")
    # The other photos keep their paths below the indexed folder, which the upload does not widen.
    record = small_collection.catalog.records()[0]
    assert client.get(f"/api/images/{record.id}").json()["path"] == f"cat/{Path(record.path).name}"


def test_deleting_an_indexed_photo_leaves_the_users_file(small_collection: Collection) -> None:
    client = TestClient(create_app(small_collection))
    record = small_collection.catalog.records()[0]
    assert client.delete(f"/api/images/{record.id}").status_code == 204
    assert Path(record.path).is_file()
    assert client.get("/api/stats").json()["images"] == 5


def test_adding_without_a_label_and_twice_the_same_bytes(small_collection: Collection, data_dir: Path) -> None:
    client = TestClient(create_app(small_collection))
    data = (data_dir / NEW_CAT_2).read_bytes()
    first = client.post("/api/images", files=jpeg_upload(data)).json()
    second = client.post("/api/images", files=jpeg_upload(data, name="other.jpg")).json()
    assert first["id"] == second["id"]  # stored by content hash: one copy, one entry
    assert first["label"] is None  # no label given: none invented from the storage folder
    assert client.get("/api/stats").json()["images"] == 7
    assert client.post("/api/images?label=%0Abad", files=jpeg_upload(data)).status_code == 422


def test_searches_run_safely_while_images_are_added_and_deleted(small_collection: Collection, data_dir: Path) -> None:
    client = TestClient(create_app(small_collection))
    query = (data_dir / NEW_DOG).read_bytes()
    record_ids = [r.id for r in small_collection.catalog.records()]
    failures: list[str] = []
    stop = threading.Event()

    def search_until_stopped() -> None:
        while not stop.is_set():
            for response in (
                client.post("/api/search?k=4", files=jpeg_upload(query)),
                client.get(f"/api/images/{record_ids[0]}/similar?k=4"),
            ):
                if response.status_code != 200 or len(response.json()["results"]) != 4:
                    failures.append(response.text)

    searchers = [threading.Thread(target=search_until_stopped) for _ in range(3)]
    for thread in searchers:
        thread.start()
    try:
        for name in (NEW_CAT, NEW_CAT_2):
            added = client.post("/api/images?label=cat", files=jpeg_upload((data_dir / name).read_bytes()))
            assert added.status_code == 201
            assert client.delete(f"/api/images/{added.json()['id']}").status_code == 204
    finally:
        stop.set()
        for thread in searchers:
            thread.join()
    assert failures == []
    assert client.get("/api/stats").json()["images"] == 6


def test_a_refused_upload_writes_nothing(small_collection: Collection) -> None:
    client = TestClient(create_app(small_collection))
    response = client.post("/api/images", files={"file": ("a.txt", b"hello", "text/plain")})
    assert response.status_code == 422
    uploads = small_collection.path / "uploads"
    assert not uploads.exists() or not list(uploads.iterdir())
    assert small_collection.catalog.count() == 6


def test_closing_the_collection_stops_the_apps_background_calibration(tmp_path: Path, data_dir: Path) -> None:
    with indexed(copy_samples(data_dir, tmp_path / "photos"), tmp_path / "collection") as collection:
        app = create_app(collection)  # never started or shut down: a test's app, or one left behind
        threads = app.state.lookalike.weak_match._threads
        assert threads
    # Closed with the collection, not left reading a closed SQLite connection (which crashed a test run).
    assert not any(thread.is_alive() for thread in threads)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two embedding slots")
def test_an_upload_searched_beside_another_embedding_runs_on_its_own_session_with_the_same_answer(
    client: TestClient, collection: Collection, data_dir: Path
) -> None:
    """Beside another embedding, an upload is embedded on a one-thread session of the model (more images per
    second on shared cores): it does not wait for the other, and answers exactly what it answers alone."""
    upload = jpeg_upload((data_dir / "dog" / "dog.1.jpg").read_bytes())
    alone = client.post("/api/search", params={"k": 5}, files=upload).json()["results"]
    first: list[httpx.Response] = []
    with embedding_held(collection.embedder(collection.default_embedder)) as embedding:
        waiting = threading.Thread(target=lambda: first.append(client.post("/api/search", files=upload)))
        waiting.start()
        assert embedding.wait(60)  # the first upload holds a slot, inside the model's default session
        beside = client.post("/api/search", params={"k": 5}, files=upload).json()["results"]
        assert not first, "answered while the first upload was still held in its embedding"
    waiting.join(60)
    assert first[0].status_code == 200
    assert [r["id"] for r in beside] == [r["id"] for r in alone]
    np.testing.assert_allclose([r["score"] for r in beside], [r["score"] for r in alone], atol=1e-5)
