"""The web page against a server that needs a token: it asks once, then searches and shows images."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike import Collection

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the package only)")
expect = playwright_api.expect
sync_playwright = playwright_api.sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
TOKEN = "web-page-token-0123456789"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (run .ci/install-browser.sh)"),
]


@pytest.fixture()
def server_url(sample_folder: Path) -> Iterator[str]:
    """The app with a token, served by uvicorn in a thread on 127.0.0.1."""
    import uvicorn

    from lookalike.server import create_app

    collection = Collection.open(sample_folder.parent / "collection")
    collection.sync(sample_folder)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(collection, token=TOKEN, allowed_hosts=["127.0.0.1", "localhost"])
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


def test_the_page_asks_for_the_token_once_and_then_works(server_url: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context().new_page()
            page.set_default_timeout(20_000)
            prompts: list[str] = []

            def answer(dialog) -> None:
                prompts.append(dialog.message)
                dialog.accept(TOKEN)

            page.on("dialog", answer)
            page.goto(server_url)
            expect(page.locator("#collection-info")).to_contain_text("24 images")
            assert prompts == ["This lookalike server needs its access token:"]
            page.click("#tab-browse")
            thumbnails = page.locator("#browse .card img")
            thumbnails.nth(23).wait_for()
            deadline = time.monotonic() + 20
            # Thumbnails are <img> URLs: they load with the cookie the page set.
            while not thumbnails.evaluate_all("imgs => imgs.every(img => img.complete && img.naturalWidth > 0)"):
                assert time.monotonic() < deadline, "thumbnails did not load"
                time.sleep(0.1)
            page.reload()  # the token is kept for this tab: no second prompt
            expect(page.locator("#collection-info")).to_contain_text("24 images")
            assert len(prompts) == 1
        finally:
            browser.close()
