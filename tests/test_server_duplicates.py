"""The duplicates endpoints, through FastAPI's TestClient, on real photos with edited copies among them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import duplicate_photos, embedding_held
from fastapi.testclient import TestClient
from httpx import Response
from servers import indexed

from lookalike import Collection
from lookalike.duplicates import COPY_EMBEDDER, THRESHOLDS
from lookalike.server import create_app
from lookalike.server.app import MOVED_DIR


@pytest.fixture()
def photos(tmp_path: Path, data_dir: Path) -> Path:
    duplicate_photos(data_dir, tmp_path / "photos")
    return tmp_path / "photos"


@pytest.fixture()
def collection(tmp_path: Path, photos: Path) -> Iterator[Collection]:
    with indexed(photos, tmp_path / "collection") as collection:
        yield collection


@pytest.fixture()
def make_client(collection: Collection) -> Iterator[Callable[..., TestClient]]:
    """TestClients over the collection; their apps' background calibration stops before it closes."""
    apps = []

    def make(**options: object) -> TestClient:
        apps.append(create_app(collection, **options))
        return TestClient(apps[-1])

    yield make
    for app in apps:
        app.state.lookalike.weak_match.stop()


def groups_by_names(body: dict) -> dict[frozenset[str], dict]:
    return {frozenset(m["name"] for m in g["members"]): g for g in body["groups"]}


def test_list_decide_and_move_duplicates(
    collection: Collection, make_client: Callable[..., TestClient], photos: Path, tmp_path: Path
) -> None:
    client = make_client()
    response = client.get("/api/duplicates")
    assert response.status_code == 200, response.text
    assert str(tmp_path) not in response.text  # no server path, anywhere
    body = response.json()
    assert body["tier"] == "near" and body["threshold"] == THRESHOLDS["near"] == body["thresholds"]["near"]
    groups = groups_by_names(body)
    cat = frozenset({"cat.1.jpg", "cat.1-half.jpg"})
    mirrored = frozenset({"dog.1.jpg", "dog.1-mirrored.jpg"})
    recompressed = frozenset({"dog.2.jpg", "dog.2-q30.jpg"})
    assert set(groups) == {cat, mirrored, recompressed}
    # The keeper comes first, with its reason; every member has its size, its path in the collection and its score.
    half = groups[cat]
    assert half["members"][0]["name"] == "cat.1.jpg" and half["members"][0]["keeper"]
    assert half["keeper"] == half["members"][0]["id"] and half["reason"].startswith("most pixels")
    assert [m["path"] for m in half["members"]] == ["cat/cat.1.jpg", "cat/cat.1-half.jpg"]
    copy = half["members"][1]
    assert not copy["keeper"] and THRESHOLDS["near"] <= copy["score"] < 1
    assert copy["width"] * 2 == half["members"][0]["width"]
    assert copy["file_size"] == (photos / "cat" / "cat.1-half.jpg").stat().st_size
    assert copy["thumbnail_url"] == f"/api/images/{copy['id']}/thumbnail?v={copy['thumbnail_url'].split('=')[1]}"

    # A threshold above a pair's score leaves it out; thresholds out of range are refused.
    above = client.get("/api/duplicates", params={"threshold": round(copy["score"] + 0.005, 3)}).json()
    assert cat not in groups_by_names(above) and len(above["groups"]) < 3
    assert client.get("/api/duplicates", params={"threshold": 0.2}).status_code == 422
    assert client.get("/api/duplicates", params={"tier": "blurry"}).status_code == 422

    # Not duplicates: the pair never comes back. Keep (with the user's keeper): resolved, counted as such.
    ids = [m["id"] for m in groups[recompressed]["members"]]
    assert client.post("/api/duplicates/decisions", json={"ids": ids, "decision": "distinct"}).status_code == 204
    chosen = groups[mirrored]["members"][1]["id"]
    decision = {"ids": [m["id"] for m in groups[mirrored]["members"]], "decision": "keep", "keeper": chosen}
    assert client.post("/api/duplicates/decisions", json=decision).status_code == 204
    after = client.get("/api/duplicates").json()
    assert set(groups_by_names(after)) == {cat} and after["resolved"] == 1
    bad = client.post("/api/duplicates/decisions", json={"ids": [ids[0], 99999], "decision": "keep"})
    assert bad.status_code == 422 and "99999" in bad.json()["detail"]

    # Moving: a dry run says what would go where and moves nothing; then the move, recorded in a manifest.
    move = {"groups": [{"key": half["key"]}], "dry_run": True}
    plan = client.post("/api/duplicates/move", json=move)
    assert plan.status_code == 200 and str(tmp_path) not in plan.text
    assert [(m["source"], m["target"]) for m in plan.json()["moves"]] == [
        ("cat/cat.1-half.jpg", f"{MOVED_DIR}/cat/cat.1-half.jpg")
    ]
    assert (photos / "cat" / "cat.1-half.jpg").exists() and plan.json()["manifest"] is None
    done = client.post("/api/duplicates/move", json={**move, "dry_run": False})
    assert done.status_code == 200 and str(tmp_path) not in done.text
    assert done.json()["manifest"].startswith(f"{MOVED_DIR}/") and done.json()["failed"] == []
    assert not (photos / "cat" / "cat.1-half.jpg").exists()
    assert (collection.path / MOVED_DIR / "cat" / "cat.1-half.jpg").is_file()
    assert client.get(f"/api/images/{copy['id']}").status_code == 404  # it left the collection
    assert client.get("/api/duplicates").json()["groups"] == []
    # A group that is gone (or changed) is not guessed at.
    stale = client.post("/api/duplicates/move", json=move)
    assert stale.status_code == 409 and "list them again" in stale.json()["detail"]


def test_duplicates_writes_follow_the_servers_protection(make_client: Callable[..., TestClient]) -> None:
    client = make_client(read_only=True)
    body = client.get("/api/duplicates").json()  # reading is allowed
    group = body["groups"][0]
    ids = [m["id"] for m in group["members"]]
    refused = client.post("/api/duplicates/decisions", json={"ids": ids, "decision": "distinct"})
    assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
    moved = client.post("/api/duplicates/move", json={"groups": [{"key": group["key"]}]})
    assert moved.status_code == 403
    assert len(client.get("/api/duplicates").json()["groups"]) == len(body["groups"])

    writable = make_client()
    foreign = {"Origin": "http://evil.example"}
    response = writable.post("/api/duplicates/decisions", json={"ids": ids, "decision": "distinct"}, headers=foreign)
    assert response.status_code == 403 and "cross-origin" in response.json()["detail"]
    assert len(writable.get("/api/duplicates").json()["groups"]) == len(body["groups"])


def test_moving_works_with_the_collection_inside_the_indexed_folder(tmp_path: Path, data_dir: Path) -> None:
    """The default layout: ./.lookalike inside the folder indexed. Its moved-duplicates/ is never indexed again."""
    photos = tmp_path / "photos"
    duplicate_photos(data_dir, photos)
    with Collection.open(photos / ".lookalike") as collection:
        collection.sync(photos)
        app = create_app(collection)
        try:
            client = TestClient(app)
            group = client.get("/api/duplicates").json()["groups"][0]
            done = client.post("/api/duplicates/move", json={"groups": [{"key": group["key"]}]})
            assert done.status_code == 200, done.text
            [move] = done.json()["moves"]
            assert move["target"] == f"{MOVED_DIR}/{move['source']}" and str(tmp_path) not in done.text
            assert (photos / ".lookalike" / MOVED_DIR / move["source"]).is_file()
            assert not (photos / move["source"]).exists()
            collection.sync(photos)  # the moved file is not indexed again
            assert collection.stats()["images"] == 12
        finally:
            app.state.lookalike.weak_match.stop()


def test_searches_and_adds_go_on_while_the_first_listing_embeds(
    collection: Collection, make_client: Callable[..., TestClient], data_dir: Path
) -> None:
    """The first near listing embeds every image with the copy descriptor (minutes in a large collection). It takes
    the index's write lock only to commit each batch: a search and an add answer while it is still embedding."""
    client = make_client()
    listed: list[Response] = []
    listing = threading.Thread(target=lambda: listed.append(client.get("/api/duplicates")))
    answers: list[Response] = []
    with embedding_held(collection.embedder(COPY_EMBEDDER)) as embedding:
        listing.start()
        assert embedding.wait(60)
        record = collection.records()[0]

        def search_and_add() -> None:
            answers.append(client.get(f"/api/images/{record.id}/similar", params={"k": 3}))
            upload = {"file": ("new.jpg", (data_dir / "cat" / "cat.100.jpg").read_bytes(), "image/jpeg")}
            answers.append(client.post("/api/images", files=upload))

        other = threading.Thread(target=search_and_add)
        other.start()
        other.join(30)
        assert [a.status_code for a in answers] == [200, 201]  # while the listing still waits in its embedding
        assert len(answers[0].json()["results"]) == 3
    listing.join(120)
    assert listed[0].status_code == 200, listed[0].text
    groups = groups_by_names(listed[0].json())
    assert frozenset({"cat.1.jpg", "cat.1-half.jpg"}) in groups
    # added before the copy descriptor had any vector, so embedded by the next listing
    assert client.get("/api/duplicates").json()["compared"] == 1
    assert answers[1].json()["id"] in collection.vector_ids(COPY_EMBEDDER)
