"""The web page end to end: a real server on loopback, driven by Debian's headless Chromium through Playwright."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lookalike import Collection

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the package only)")
expect = playwright_api.expect
sync_playwright = playwright_api.sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
QUERY_CAT = "cat/cat.100.jpg"  # not among the 12 + 12 sample photos
UPLOAD_LIMIT = 2 * 2**20

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (run .ci/install-browser.sh)"),
]


def wait_until(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the page")
        time.sleep(0.1)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def server_url(sample_folder: Path) -> Iterator[str]:
    """The app over a fresh collection of the sample photos, served by uvicorn in a thread on 127.0.0.1."""
    import uvicorn

    from lookalike.server import create_app

    collection = Collection.open(sample_folder.parent / "collection")
    collection.sync(sample_folder)
    port = free_loopback_port()
    app = create_app(collection, max_upload_bytes=UPLOAD_LIMIT, allowed_hosts=["127.0.0.1", "localhost"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    collection.close()


@pytest.fixture()
def page(server_url: str):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


def test_upload_a_cat_and_see_cats(page, server_url: str, data_dir: Path, tmp_path: Path) -> None:
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("response", lambda response: problems.append(response.url) if response.status >= 400 else None)

    page.goto(server_url)
    expect(page.locator("#collection-info")).to_contain_text("24 images")
    assert page.locator("#embedder option").first.get_attribute("value") == "efficientnet-lite0"

    page.set_input_files("#file-input", str(data_dir / QUERY_CAT))
    cards = page.locator("#results .card")
    cards.nth(11).wait_for()  # k defaults to 12
    labels = [cards.nth(i).get_attribute("data-label") for i in range(cards.count())]
    assert len(labels) == 12
    assert labels.count("cat") >= 9, labels
    assert page.locator("#query-image").evaluate("img => img.complete && img.naturalWidth") == 403
    wait_until(
        lambda: cards.locator("img").evaluate_all("imgs => imgs.every(img => img.complete && img.naturalWidth > 0)")
    )
    expect(page.locator("#status")).to_contain_text("12 results with efficientnet-lite0")
    screenshot = tmp_path / "search.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000

    # A region drawn on the query searches only that region, in original-image pixels.
    with page.expect_request(lambda request: "/api/search?" in request.url and "box=" in request.url) as searched:
        frame = page.locator("#query-image").bounding_box()
        page.mouse.move(frame["x"] + frame["width"] * 0.2, frame["y"] + frame["height"] * 0.1)
        page.mouse.down()
        page.mouse.move(frame["x"] + frame["width"] * 0.8, frame["y"] + frame["height"] * 0.6, steps=5)
        page.mouse.up()
    box = [float(v) for v in searched.value.url.split("box=")[1].split("&")[0].replace("%2C", ",").split(",")]
    assert box == pytest.approx([0.2 * 403, 0.1 * 499, 0.8 * 403, 0.6 * 499], abs=4)
    expect(page.locator("#status")).to_contain_text("12 results (region)")
    assert page.locator("#selection").is_visible()
    page.screenshot(path=str(tmp_path / "region.png"), full_page=True)

    # Clicking a result searches with it, by id.
    first = cards.first
    clicked_id = first.get_attribute("data-id")
    with page.expect_response(lambda response: f"/api/images/{clicked_id}/similar" in response.url):
        first.click()
    expect(page.locator("#query-caption")).to_contain_text(f"(id {clicked_id})")
    expect(page.locator("#status")).to_have_text(re.compile(r"^12 results with"))
    shown_ids = [cards.nth(i).get_attribute("data-id") for i in range(cards.count())]
    assert clicked_id not in shown_ids

    # Browsing pages through the collection's thumbnails.
    page.click("#tab-browse")
    browse = page.locator("#browse .card")
    browse.nth(23).wait_for()
    assert browse.count() == 24
    assert "Page 1 of 1 (24 images)" in page.locator("#page-info").text_content()
    assert page.locator("#search-view").is_hidden()
    wait_until(
        lambda: browse.locator("img").evaluate_all("imgs => imgs.every(img => img.complete && img.naturalWidth > 0)")
    )
    page.screenshot(path=str(tmp_path / "browse.png"), full_page=True)

    assert problems == []


def test_api_docs_render_offline(page, server_url: str) -> None:
    page.goto(f"{server_url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("lookalike")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    paths = page.locator(".opblock-summary-path").all_text_contents()
    assert any("/api/search" in p for p in paths), paths


def test_a_text_file_shows_a_clear_error(page, server_url: str, tmp_path: Path) -> None:
    notes = tmp_path / "notes.png"  # an image name, text inside: the server decides
    notes.write_text("not an image at all\n")
    page.goto(server_url)
    page.set_input_files("#file-input", str(notes))
    expect(page.locator("#status")).to_have_class(re.compile(r"\berror\b"))
    assert "not a readable image" in page.locator("#status").text_content()
    assert page.locator("#results .card").count() == 0


def test_a_file_over_the_limit_is_refused_before_sending(page, server_url: str, tmp_path: Path) -> None:
    big = tmp_path / "huge.jpg"
    big.write_bytes(b"\xff\xd8\xff" + bytes(UPLOAD_LIMIT + 2**20))
    searches: list[str] = []
    page.on("request", lambda request: searches.append(request.url) if "/api/search" in request.url else None)
    page.goto(server_url)
    expect(page.locator("#collection-info")).to_contain_text("24 images")
    page.set_input_files("#file-input", str(big))
    expect(page.locator("#status")).to_contain_text("huge.jpg is too large (3.0 MB); the limit is 2.0 MB")
    expect(page.locator("#status")).to_have_class(re.compile(r"\berror\b"))
    assert searches == []


def test_pasting_an_image_searches_with_it(page, server_url: str, data_dir: Path) -> None:
    page.goto(server_url)
    expect(page.locator("#collection-info")).to_contain_text("24 images")
    data = list((data_dir / QUERY_CAT).read_bytes())
    # A synthetic paste event carrying the photo, as the clipboard would deliver it.
    page.evaluate(
        """bytes => {
            const file = new File([new Uint8Array(bytes)], "pasted.jpg", {type: "image/jpeg"});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer}));
        }""",
        data,
    )
    page.locator("#results .card").nth(11).wait_for()
    assert page.locator("#query-caption").text_content() == "pasted.jpg"


def test_dropping_an_image_searches_with_it(page, server_url: str, data_dir: Path) -> None:
    page.goto(server_url)
    expect(page.locator("#collection-info")).to_contain_text("24 images")
    data = list((data_dir / QUERY_CAT).read_bytes())
    transfer = page.evaluate_handle(
        """bytes => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "dropped.jpg", {type: "image/jpeg"}));
            return transfer;
        }""",
        data,
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    page.locator("#results .card").nth(11).wait_for()
    assert page.locator("#query-caption").text_content() == "dropped.jpg"
