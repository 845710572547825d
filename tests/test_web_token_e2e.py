"""The web page against a server that needs a token: it asks once, then searches and shows images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import BROWSER_MARKS, chromium_page, images_loaded, indexed, serving, wait_until

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the package only)")
expect = playwright_api.expect

TOKEN = "web-page-token-0123456789"

pytestmark = BROWSER_MARKS


@pytest.fixture()
def server_url(sample_folder: Path) -> Iterator[str]:
    """The app with a token, served by uvicorn in a thread on 127.0.0.1."""
    from lookalike.server import create_app

    with (
        indexed(sample_folder, sample_folder.parent / "collection") as collection,
        serving(create_app(collection, token=TOKEN, allowed_hosts=["127.0.0.1", "localhost"])) as url,
    ):
        yield url


def test_the_page_asks_for_the_token_once_and_then_works(server_url: str) -> None:
    with chromium_page() as page:
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
        # Thumbnails are <img> URLs: they load with the cookie the page set.
        wait_until(lambda: images_loaded(thumbnails), message="thumbnails did not load")
        page.reload()  # the token is kept for this tab: no second prompt
        expect(page.locator("#collection-info")).to_contain_text("24 images")
        assert len(prompts) == 1
