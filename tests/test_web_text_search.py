"""The web page's search by words, in a real Chromium (the page and server fixtures of test_web_e2e)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from test_web_e2e import page, pytestmark, server_url  # noqa: F401  (fixtures and the browser marks)

expect = pytest.importorskip("playwright.sync_api").expect


def card_ids(browser_page) -> list[str]:
    return browser_page.locator("#results .card").evaluate_all("cards => cards.map(c => c.dataset.id)")


def card_tags(browser_page) -> list[list[str]]:
    return browser_page.locator("#results .card").evaluate_all(
        "cards => cards.map(c => [...c.querySelectorAll('.tags .tag')].map(t => t.textContent))"
    )


def url_params(browser_page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(browser_page.url).query)


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
    ids = card_ids(page)
    assert url_params(page) == {"q": ["dogs"]}
    # Word results are the image search's cards: a details button, a score, and the image's tags.
    assert cards.locator(".card-main").count() == 12 and cards.locator(".card-info").count() == 12
    tags = card_tags(page)
    assert all(tags[:5]), tags  # the breeds the network saw
    scores = [float(s) for s in cards.locator(".score").all_text_contents()]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0

    # Reload: the words and their results come back from the URL.
    page.reload()
    expect(page.locator("#status")).to_contain_text("12 results for “dog”")
    assert card_ids(page) == ids
    expect(page.locator("#text-query")).to_have_value("dogs")

    # A tag filters the results to the images tagged with it; pressing it again (or the chip's x) lifts the filter.
    tag = tags[0][0]
    cards.first.locator(".tag", has_text=tag).first.click()
    expect(page.locator("#tag-filter")).to_be_visible()
    expect(page.locator("#tag-filter-name")).to_have_text(tag)
    expect(page.locator("#status")).to_contain_text(f"tagged “{tag}” for “dog”")
    assert url_params(page) == {"q": ["dogs"], "tag": [tag]}
    filtered = card_tags(page)
    assert 1 <= len(filtered) < 12 and ids[0] in card_ids(page)
    assert all(tag in names for names in filtered), filtered
    assert cards.locator(f'.tag[aria-pressed="true"]:text-is("{tag}")').count() == len(filtered)
    page.click("#tag-filter-clear")
    expect(page.locator("#tag-filter")).to_be_hidden()
    expect(cards).to_have_count(12)
    page.go_back()  # the filtered results are a history entry of their own
    expect(page.locator("#tag-filter-name")).to_have_text(tag)
    expect(cards).to_have_count(len(filtered))
    page.go_forward()
    expect(page.locator("#tag-filter")).to_be_hidden()
    expect(cards).to_have_count(12)

    page.fill("#text-query", "dgo")
    page.click("#text-search button")
    expect(page.locator("#status")).to_contain_text("no concept matches 'dgo'; closest:")
    assert page.locator("#status").evaluate("el => el.classList.contains('error')")
    assert cards.count() == 0
    page.go_back()  # Back: the previous words and their results
    expect(page.locator("#text-query")).to_have_value("dogs")
    expect(page.locator("#status")).to_contain_text("12 results for “dog”")
    assert card_ids(page) == ids

    # A word result is an indexed image: clicking it searches by that image, whose results have tags too.
    first = ids[0]
    with page.expect_response(lambda response: f"/api/images/{first}/similar" in response.url):
        cards.first.locator(".card-main").click()
    expect(page.locator("#query-caption")).to_contain_text(f"(id {first})")
    expect(page.locator("#status")).to_contain_text(re.compile(r"12 results with \S+ in \d+ ms"))
    assert "q" not in url_params(page) and url_params(page)["id"] == [first]
    assert all(card_tags(page)[:5])
    expect(page.locator("#text-query")).to_have_value("")
    page.go_back()
    expect(page.locator("#text-query")).to_have_value("dogs")
    expect(page.locator("#query")).to_be_hidden()
    expect(page.locator("#status")).to_contain_text("12 results for “dog”")

    # The details of a word result say what its score is.
    cards.first.locator(".card-info").click()
    expect(page.locator("#detail-score-name")).to_have_text("Concept score")
    assert problems == []
