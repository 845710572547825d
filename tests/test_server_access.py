"""Binding beyond loopback: a token for the API, a Host check, a warning; loopback as before."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import copy_samples
from fastapi.testclient import TestClient
from servers import free_port, indexed, start_serve, stop_serve, wait_until_answering

from lookalike import Collection
from lookalike.cli.main import main
from lookalike.server import create_app
from lookalike.server.access import AccessError, bound_names, is_loopback, normalise_host

TOKEN = "s3cret-token-0123456789"
NEW_CAT = "cat/cat.100.jpg"


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Collection]:
    root = tmp_path_factory.mktemp("access")
    with indexed(copy_samples(data_dir, root / "photos", per_label=3), root / "collection") as collection:
        yield collection


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_loopback_and_wildcard_addresses_are_told_apart() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.0.2.10", "2001:db8::1"):
        assert not is_loopback(host), host
    assert normalise_host("[::1]:8000") == "::1"
    assert normalise_host("Photos.Example.:8766") == "photos.example"
    assert normalise_host("2001:db8::1") == "2001:db8::1"
    assert bound_names("192.0.2.10") == ["192.0.2.10"]
    assert {"127.0.0.1", "localhost", "::1", socket.gethostname().lower()} <= set(bound_names("0.0.0.0"))


def test_the_api_needs_the_token_and_a_cookie_never_writes(collection: Collection, data_dir: Path) -> None:
    client = TestClient(create_app(collection, token=TOKEN))
    photo = (data_dir / NEW_CAT).read_bytes()
    image_id = collection.records()[0].id
    for method, url in [("GET", "/api/stats"), ("GET", f"/api/images/{image_id}/file"), ("DELETE", "/api/images/1")]:
        response = client.request(method, url)
        assert response.status_code == 401, url
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "token" in response.json()["detail"]
        assert client.request(method, url, headers=bearer("s3cret-token-012345678X")).status_code == 401
    assert client.post("/api/search", files={"file": ("q.jpg", photo, "image/jpeg")}).status_code == 401
    assert client.get("/api/stats", headers=bearer()).status_code == 200
    assert client.get("/api/stats", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    # The web page and its files load without it (the page then asks for the token).
    assert client.get("/").status_code == 200
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/auth.js").status_code == 200
    # Images shown by URL carry it as a cookie: good for reading, never for writing.
    client.cookies.set("lookalike_token", TOKEN)
    assert client.get(f"/api/images/{image_id}/thumbnail").status_code == 200
    before = collection.catalog.count()
    assert client.post("/api/images", files={"file": ("q.jpg", photo, "image/jpeg")}).status_code == 401
    assert client.delete(f"/api/images/{image_id}").status_code == 401
    assert collection.catalog.count() == before


def test_public_read_lets_searches_through_but_not_writes(collection: Collection, data_dir: Path) -> None:
    client = TestClient(create_app(collection, token=TOKEN, public_read=True))
    photo = (data_dir / NEW_CAT).read_bytes()
    image_id = collection.records()[0].id
    assert client.get("/api/stats").status_code == 200
    assert client.get(f"/api/images/{image_id}/similar").status_code == 200
    assert client.post("/api/search", files={"file": ("q.jpg", photo, "image/jpeg")}).status_code == 200
    assert client.post("/api/images", files={"file": ("q.jpg", photo, "image/jpeg")}).status_code == 401
    assert client.delete(f"/api/images/{image_id}").status_code == 401
    # Listing duplicates can embed every image under the write lock: not for anonymous readers.
    assert client.get("/api/duplicates", params={"tier": "exact"}).status_code == 401
    authorised = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/duplicates", params={"tier": "exact"}, headers=authorised).status_code == 200
    assert collection.catalog.count() == 6


def test_host_names_are_checked_ipv6_included(collection: Collection) -> None:
    app = create_app(collection, allowed_hosts=[*bound_names("192.0.2.10"), "photos.example"])
    assert TestClient(app, base_url="http://192.0.2.10:8766").get("/api/stats").status_code == 200
    assert TestClient(app, base_url="http://photos.example").get("/api/stats").status_code == 200
    rebound = TestClient(app, base_url="http://evil.example:8766")
    assert rebound.get("/api/stats").status_code == 400
    assert rebound.delete("/api/images/1", headers={"Origin": "http://evil.example:8766"}).status_code == 400
    loopback = create_app(collection, allowed_hosts=["127.0.0.1", "localhost", "::1"])
    assert TestClient(loopback, base_url="http://[::1]:8000").get("/api/stats").status_code == 200
    assert TestClient(loopback, base_url="http://evil.example").get("/api/stats").status_code == 400


@pytest.mark.parametrize("token", [None, "", "short"])
def test_serving_beyond_loopback_without_a_good_token_is_refused(
    collection: Collection, token: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LOOKALIKE_TOKEN", raising=False)
    argv = ["serve", "--collection", str(collection.path), "--host", "0.0.0.0", "--port", "9"]
    if token is not None:
        argv += ["--token", token]
    assert main(argv) == 2  # refused before binding anything
    error = capsys.readouterr().err
    assert "LOOKALIKE_TOKEN" in error or "at least 16" in error
    with pytest.raises(AccessError):
        from lookalike.server.app import serve

        serve(collection.path, host="::", port=9, public_read=True)  # reads public, writes still need one


def test_lookalike_serve_on_all_interfaces(collection: Collection, data_dir: Path) -> None:
    """The finding, as reproduced: Host and Origin of a rebinding page, on 0.0.0.0. Now refused; the
    token opens the API; a warning says what is exposed."""
    import os

    port = free_port()
    env = {**os.environ, "LOOKALIKE_TOKEN": TOKEN}
    process, log = start_serve(collection.path, "--host", "0.0.0.0", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(process, log, f"{base}/api/stats", bearer())
        evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        photo = (data_dir / NEW_CAT).read_bytes()
        assert httpx.get(f"{base}/api/images", headers=evil).status_code == 400
        assert httpx.get(f"{base}/api/images", headers={**evil, **bearer()}).status_code == 400
        assert httpx.post(f"{base}/api/images", headers=evil, files={"file": ("a.jpg", photo)}).status_code == 400
        assert httpx.delete(f"{base}/api/images/1", headers=evil).status_code == 400
        assert httpx.get(f"{base}/api/images").status_code == 401  # a right name, no token
        assert httpx.get(f"{base}/api/images", headers=bearer()).json()["total"] == 6
        named = httpx.get(f"http://127.0.0.1:{port}/api/stats", headers={**bearer(), "Host": socket.gethostname()})
        assert named.status_code == 200
    finally:
        stop_serve(process, log)
    output = log.read_text()
    assert "reachable from other machines" in output and "needs the access token" in output
    assert TOKEN not in output


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_lookalike_serve_on_ipv6_loopback_checks_host(collection: Collection) -> None:
    try:
        port = free_port(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    process, log = start_serve(collection.path, "--host", "::1", "--port", str(port))
    base = f"http://[::1]:{port}"
    try:
        wait_until_answering(process, log, f"{base}/api/stats", {})  # loopback: no token, as before
        assert httpx.get(f"{base}/api/images", headers={"Host": f"evil.example:{port}"}).status_code == 400
        assert httpx.get(f"{base}/api/images", headers={"Host": f"localhost:{port}"}).status_code == 200
    finally:
        stop_serve(process, log)
    assert "reachable from other machines" not in log.read_text()
