"""The web page's search by words, in a real Chromium (the page and server fixtures of test_web_e2e)."""

from __future__ import annotations

import pytest
from test_web_e2e import page, pytestmark, server_url  # noqa: F401  (fixtures and the browser marks)

expect = pytest.importorskip("playwright.sync_api").expect


def test_typing_words_shows_the_images_that_show_them(page, server_url: str) -> None:  # noqa: F811
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(server_url)
    expect(page.locator("#collection-info")).to_contain_text("24 images")

    page.fill("#text-query", "dogs")
    page.press("#text-query", "Enter")
    cards = page.locator("#results .card")
    expect(page.locator("#status")).to_contain_text("12 results for “dog” → dog (118 classes)")
    assert cards.count() == 12
    ids = [cards.nth(i).get_attribute("data-id") for i in range(12)]
    assert all(cards.nth(i).locator(".tags").text_content() for i in range(5))  # the breeds it saw

    page.fill("#text-query", "dgo")
    page.click("#text-search button")
    expect(page.locator("#status")).to_contain_text("no concept matches 'dgo'; closest:")
    assert page.locator("#status").evaluate("el => el.classList.contains('error')")
    assert cards.count() == 0

    # A word result is an indexed image: clicking it searches by that image.
    page.fill("#text-query", "dog")
    page.press("#text-query", "Enter")
    expect(page.locator("#status")).to_contain_text("12 results for")
    first = cards.first.get_attribute("data-id")
    assert first in ids
    with page.expect_response(lambda response: f"/api/images/{first}/similar" in response.url):
        cards.first.click()
    expect(page.locator("#query-caption")).to_contain_text(f"(id {first})")
    assert problems == []
