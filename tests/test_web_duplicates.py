"""The duplicates page in a real Chromium: photos with edited copies among them (made here from ../shared/data),
groups side by side, a live threshold slider, keep / not-a-duplicate / move, and a read-only server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import duplicate_photos
from PIL import Image
from servers import BROWSER_MARKS, chromium_page, indexed, save_screenshot, serving

from lookalike.duplicates import THRESHOLDS
from lookalike.server.app import MOVED_DIR

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = BROWSER_MARKS


@pytest.fixture()
def dups_server(request: pytest.FixtureRequest, tmp_path: Path, data_dir: Path) -> Iterator[str]:
    """The app over 5 cats, 5 dogs and 3 edited copies of them, on 127.0.0.1 ({"read_only": True} to refuse)."""
    from lookalike.server import create_app

    duplicate_photos(data_dir, tmp_path / "photos")
    with indexed(tmp_path / "photos", tmp_path / "collection") as collection:
        app = create_app(collection, allowed_hosts=["127.0.0.1"], **getattr(request, "param", {}))
        with serving(app) as url:
            yield url
        app.state.lookalike.weak_match.stop()


@pytest.fixture()
def page(dups_server: str):
    with chromium_page(viewport={"width": 1280, "height": 900}) as page:
        yield page


def group_of(page, name: str):
    return page.locator(".dup-group").filter(has=page.locator(".dup-member .name", has_text=re.compile(f"^{name}$")))


def member_names(page) -> list[set[str]]:
    return page.locator(".dup-group").evaluate_all(
        "groups => groups.map(g => [...g.querySelectorAll('.dup-member .name')].map(n => n.textContent))"
    )


def test_duplicates_page(page, dups_server: str, tmp_path: Path, data_dir: Path) -> None:
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    listed: list[str] = []
    page.on("request", lambda r: listed.append(r.url) if "/api/duplicates?" in r.url else None)
    page.goto(dups_server)
    expect(page.locator("#collection-info")).to_contain_text("13 images")
    page.click("#tab-duplicates")  # reachable from the page, and in the URL
    expect(page.locator("#tab-duplicates")).to_have_attribute("aria-current", "page")
    assert parse_qs(urlsplit(page.url).query) == {"view": ["duplicates"]}
    status = page.locator("#dups-status")
    expect(status).to_contain_text(
        f"3 groups of edited copies (6 images) at similarity {THRESHOLDS['near']:.2f} or more", timeout=120_000
    )
    expect(page.locator("#dups-threshold-value")).to_have_text(f"{THRESHOLDS['near']:.2f}")
    groups = sorted(sorted(names) for names in member_names(page))
    assert groups == [
        ["cat.1-half.jpg", "cat.1.jpg"],
        ["dog.1-mirrored.jpg", "dog.1.jpg"],
        ["dog.2-q30.jpg", "dog.2.jpg"],
    ]

    # Side by side: thumbnails, sizes, scores; the keeper marked, with the reason.
    cat = group_of(page, "cat.1.jpg")
    keeper = cat.locator(".dup-member.keeper")
    expect(keeper.locator(".name")).to_have_text("cat.1.jpg")  # the most pixels
    expect(keeper.locator(".badge")).to_have_text("Keeper")
    expect(cat.locator("h3")).to_contain_text("keep cat.1.jpg (most pixels")
    with Image.open(tmp_path / "photos" / "cat" / "cat.1-half.jpg") as half:
        size = f"{half.width} × {half.height} pixels"
    copy = cat.locator(".dup-member:not(.keeper)")
    expect(copy.locator(".facts")).to_contain_text(f"{size} · ")
    expect(copy.locator(".facts")).to_contain_text("cat/cat.1-half.jpg")
    assert copy.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
    scores = {
        tuple(sorted(names)): float(re.search(r"similarity ([\d.]+)", text).group(1))
        for names, text in zip(
            member_names(page),
            page.locator(".dup-member:not(.keeper) .score").all_text_contents(),
            strict=True,
        )
    }
    assert all(THRESHOLDS["near"] <= score < 1 for score in scores.values())
    assert str(tmp_path) not in page.content()  # no server path on the page
    save_screenshot(page, "web-duplicates", tmp_path)

    # The slider regroups live: past the weakest pair's score, its group goes (one request once it rests).
    weakest = min(scores, key=scores.get)
    steps = round((scores[weakest] + 0.01 - THRESHOLDS["near"]) * 100)
    before = len(listed)
    page.focus("#dups-threshold")
    for _ in range(steps):
        page.keyboard.press("ArrowRight")
    expect(page.locator(".dup-group")).to_have_count(2)
    assert sorted(weakest) not in [sorted(n) for n in member_names(page)]
    assert len(listed) - before < steps, listed[before:]  # debounced: not one search per key press
    threshold = parse_qs(urlsplit(page.url).query)["threshold"][0]
    assert float(threshold) > scores[weakest]
    page.reload()  # the threshold is in the URL
    expect(page.locator("#dups-threshold-value")).to_have_text(threshold)
    expect(page.locator(".dup-group")).to_have_count(2)
    page.click("#dups-default")
    expect(page.locator(".dup-group")).to_have_count(3)

    # Not duplicates: the group leaves and does not come back.
    group_of(page, "dog.2.jpg").locator("button.distinct").click()
    expect(page.locator("#message")).to_contain_text("Marked as not duplicates")
    expect(page.locator(".dup-group")).to_have_count(2)
    # Keep, with another keeper chosen: marked at once, then the group is resolved.
    mirrored = group_of(page, "dog.1.jpg")
    other = mirrored.locator(".dup-member:not(.keeper)")
    name = other.locator(".name").text_content()
    other.locator("button.make-keeper").click()
    expect(group_of(page, "dog.1.jpg").locator(".dup-member.keeper .name")).to_have_text(name)
    expect(group_of(page, "dog.1.jpg").locator("h3")).to_contain_text(f"keep {name} (chosen by you)")
    group_of(page, "dog.1.jpg").locator("button.keep").click()
    expect(page.locator("#message")).to_contain_text(f"Resolved: {name} and its copy stay as they are")
    page.reload()
    expect(status).to_contain_text("1 group of edited copies (2 images)")
    expect(status).to_contain_text("1 group resolved earlier not shown")

    # Move: first what would go where (nothing moved yet), then the move; the copy leaves the collection.
    cat = group_of(page, "cat.1.jpg")
    cat.locator("button.move").click()
    plan = cat.locator(".plan")
    expect(plan).to_have_text(f"cat/cat.1-half.jpg → {MOVED_DIR}/cat/cat.1-half.jpg")
    assert (tmp_path / "photos" / "cat" / "cat.1-half.jpg").exists()
    cat.locator("button.confirm-move").click()
    expect(page.locator("#message")).to_contain_text(f"Moved 1 file to {MOVED_DIR}/ (record of the move: {MOVED_DIR}/")
    expect(page.locator("#collection-info")).to_contain_text("12 images")
    expect(status).to_contain_text("0 groups")
    assert not (tmp_path / "photos" / "cat" / "cat.1-half.jpg").exists()
    assert (tmp_path / "collection" / MOVED_DIR / "cat" / "cat.1-half.jpg").is_file()

    # Back and Forward move between the views.
    page.click("#tab-search")
    expect(page.locator("#search-view")).to_be_visible()
    page.go_back()
    expect(page.locator("#duplicates-view")).to_be_visible()
    assert problems == []


@pytest.mark.parametrize("dups_server", [{"read_only": True}], indirect=True)
def test_duplicates_page_on_a_read_only_server(page, dups_server: str) -> None:
    page.goto(f"{dups_server}/?view=duplicates&tier=similar")
    expect(page.locator("#dups-tier")).to_have_value("similar")
    expect(page.locator("#dups-status")).to_contain_text("of similar shots", timeout=120_000)
    expect(page.locator(".dup-group").first).to_be_visible()
    assert page.locator(".dup-group button.keep, .dup-group button.move, .dup-group button.distinct").count() == 0
    assert page.locator(".make-keeper").count() == 0
    page.select_option("#dups-tier", "exact")  # a tier change is a new history entry, with its default threshold
    expect(page.locator("#dups-status")).to_contain_text(
        f"of exact copies (0 images) at similarity {THRESHOLDS['exact']:.2f}"
    )
    page.go_back()
    expect(page.locator("#dups-tier")).to_have_value("similar")
