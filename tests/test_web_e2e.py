"""The web page end to end: a real server on loopback, driven by Debian's headless Chromium through Playwright."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SAMPLE_PER_LABEL, copy_samples
from PIL import Image
from servers import BROWSER_MARKS, chromium_page, images_loaded, indexed, save_screenshot, serving, wait_until

from lookalike.images import ORIENTATION_TAG

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the package only)")
expect = playwright_api.expect
expect.set_options(timeout=15_000)  # the machine may be shared: waits are generous, they end as soon as met

QUERY_CAT = "cat/cat.100.jpg"  # not among the 12 + 12 sample photos
UPLOAD_LIMIT = 2 * 2**20

pytestmark = BROWSER_MARKS


def draw_region(page, start: tuple[float, float], end: tuple[float, float], steps: int) -> None:
    """Drag with the mouse over the query photo from `start` to `end`, as fractions of its shown width and height."""
    frame = page.locator("#query-image").bounding_box()
    page.mouse.move(frame["x"] + frame["width"] * start[0], frame["y"] + frame["height"] * start[1])
    page.mouse.down()
    page.mouse.move(frame["x"] + frame["width"] * end[0], frame["y"] + frame["height"] * end[1], steps=steps)
    page.mouse.up()


@pytest.fixture()
def server_url(request: pytest.FixtureRequest, tmp_path: Path, data_dir: Path) -> Iterator[str]:
    """The app over a fresh collection of sample photos, served by uvicorn in a thread on 127.0.0.1.

    Parametrize indirectly with {"per_label": N} for N cats and N dogs (default 12), and
    {"read_only": True} for a server that refuses changes.
    """
    from lookalike.server import create_app

    options = getattr(request, "param", {})
    photos = copy_samples(data_dir, tmp_path / "photos", options.get("per_label", SAMPLE_PER_LABEL))
    with indexed(photos, tmp_path / "collection") as collection:
        app = create_app(
            collection,
            max_upload_bytes=UPLOAD_LIMIT,
            allowed_hosts=["127.0.0.1", "localhost"],
            read_only=options.get("read_only", False),
        )
        with serving(app) as url:
            yield url


@pytest.fixture()
def page(server_url: str):
    with chromium_page(viewport={"width": 1280, "height": 900}) as page:
        yield page


@pytest.fixture()
def phone(server_url: str):
    """A phone-sized touch screen (390x844, as an iPhone 13/14)."""
    with chromium_page(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=2
    ) as page:
        yield page


def wait_for_collection(page, count: int = 24) -> None:
    expect(page.locator("#collection-info")).to_contain_text(f"{count} images")


def status_says(page, text: str | re.Pattern[str]) -> None:
    expect(page.locator("#status")).to_contain_text(text)


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
    screenshot = save_screenshot(page, "search", tmp_path)
    assert screenshot.stat().st_size > 10_000

    # A region drawn on the query searches only that region, in original-image pixels.
    with page.expect_request(lambda request: "/api/search?" in request.url and "box=" in request.url) as searched:
        draw_region(page, (0.2, 0.1), (0.8, 0.6), steps=5)
    box = [float(v) for v in searched.value.url.split("box=")[1].split("&")[0].replace("%2C", ",").split(",")]
    assert box == pytest.approx([0.2 * 403, 0.1 * 499, 0.8 * 403, 0.6 * 499], abs=4)
    expect(page.locator("#status")).to_contain_text("12 results (region)")
    assert page.locator("#selection").is_visible()
    save_screenshot(page, "region", tmp_path)

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
    save_screenshot(page, "browse", tmp_path)

    assert problems == []


def test_api_docs_render_offline(page, server_url: str) -> None:
    outside: list[str] = []
    page.on(
        "request",
        lambda request: outside.append(request.url) if not request.url.startswith((server_url, "data:")) else None,
    )
    page.goto(f"{server_url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("lookalike")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    paths = page.locator(".opblock-summary-path").all_text_contents()
    assert any("/api/search" in p for p in paths), paths
    assert outside == []  # nothing from elsewhere, not even a logo
    assert page.request.get(f"{server_url}/redoc").status == 404  # ReDoc's bundle would fetch its logo


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


def test_dropping_a_heic_photo_without_a_media_type_searches_with_it(page, server_url: str, data_dir: Path) -> None:
    """Where the system does not know HEIC, a dropped iPhone photo comes with no media type: its name says.
    Chromium cannot show HEIC, so the page shows the server's JPEG of it, upright, and a region drawn on that
    is in the photo's own pixels."""
    import io

    pillow_heif = pytest.importorskip("pillow_heif", reason="the heif extra (pillow-heif) is not installed")
    cat = Image.open(data_dir / QUERY_CAT).convert("RGB")
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6  # stored sideways, as an iPhone does: turn a quarter to show it
    buffer = io.BytesIO()
    pillow_heif.from_pillow(cat.transpose(Image.Transpose.ROTATE_90)).save(buffer, quality=90, exif=exif.tobytes())
    page.goto(server_url)
    expect(page.locator("#collection-info")).to_contain_text("24 images")
    transfer = page.evaluate_handle(
        """bytes => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "IMG_0001.HEIC", {type: ""}));
            return transfer;
        }""",
        list(buffer.getvalue()),
    )
    with page.expect_response(lambda response: "/api/preview" in response.url) as previewed:
        page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    assert previewed.value.status == 200 and previewed.value.header_value("content-type") == "image/jpeg"
    cards = page.locator("#results .card")
    cards.nth(11).wait_for()
    labels = [cards.nth(i).get_attribute("data-label") for i in range(cards.count())]
    assert labels.count("cat") >= 9, labels  # what the same photo as a JPEG finds (test_upload_a_cat_and_see_cats)
    expect(page.locator("#query-caption")).to_have_text("IMG_0001.HEIC")
    expect(page.locator("#query-image")).to_be_visible()
    shown = page.locator("#query-image").evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert shown == list(cat.size)  # upright, one preview pixel per photo pixel

    with page.expect_request(lambda request: "/api/search?" in request.url and "box=" in request.url) as searched:
        draw_region(page, (0.2, 0.1), (0.8, 0.6), steps=5)
    box = [float(v) for v in searched.value.url.split("box=")[1].split("&")[0].replace("%2C", ",").split(",")]
    width, height = cat.size
    assert box == pytest.approx([0.2 * width, 0.1 * height, 0.8 * width, 0.6 * height], abs=4)
    expect(page.locator("#status")).to_contain_text("12 results (region)")


def test_an_indexed_heic_photo_is_shown_through_its_jpeg_preview(page, server_url: str, data_dir: Path) -> None:
    """Searching with an indexed HEIC (a result, a link) and its details show the server's JPEG of it in Chromium,
    upright and full size, so a region can be drawn on it too."""
    import io

    pillow_heif = pytest.importorskip("pillow_heif", reason="the heif extra (pillow-heif) is not installed")
    cat = Image.open(data_dir / QUERY_CAT).convert("RGB")
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    buffer = io.BytesIO()
    pillow_heif.from_pillow(cat.transpose(Image.Transpose.ROTATE_90)).save(buffer, quality=90, exif=exif.tobytes())
    added = page.request.post(
        f"{server_url}/api/images",
        multipart={"file": {"name": "IMG_0002.HEIC", "mimeType": "image/heic", "buffer": buffer.getvalue()}},
    )
    assert added.status == 201, added.text()
    image_id = added.json()["id"]

    with page.expect_response(lambda response: f"/api/images/{image_id}/preview" in response.url) as previewed:
        page.goto(f"{server_url}/?id={image_id}")
    assert previewed.value.status == 200
    expect(page.locator("#query-image")).to_be_visible()
    shown = page.locator("#query-image").evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
    assert shown == [True, *cat.size]
    expect(page.locator("#query-caption")).to_have_text(f"{added.json()['name']} (id {image_id})")  # no "no preview"
    with page.expect_request(lambda request: "/similar?" in request.url and "box=" in request.url):
        draw_region(page, (0.2, 0.2), (0.7, 0.7), steps=4)
    expect(page.locator("#status")).to_contain_text("(region)")

    page.goto(f"{server_url}/?id={image_id}&detail={image_id}")
    expect(page.locator("#detail")).to_be_visible()
    wait_until(lambda: page.locator("#detail-image").evaluate("img => img.complete && img.naturalWidth") == cat.width)


# --- state in the URL -------------------------------------------------------------------------------


@pytest.mark.parametrize("server_url", [{"per_label": 30}], indirect=True)
def test_the_url_keeps_query_region_label_k_and_page(page, server_url: str, data_dir: Path) -> None:
    """Back, Forward and reload bring back every state, the uploaded photo included."""
    page.goto(server_url)
    wait_for_collection(page, 60)
    page.set_input_files("#file-input", str(data_dir / QUERY_CAT))
    status_says(page, "12 results with")
    assert re.search(r"\?upload=[\w-]+$", page.url), page.url
    draw_region(page, (0.1, 0.1), (0.7, 0.7), steps=4)
    status_says(page, "12 results (region) with")
    page.select_option("#label", "dog")
    status_says(page, "(region) labelled “dog” with")
    page.fill("#k", "5")
    page.press("#k", "Enter")
    status_says(page, re.compile(r"^5 results \(region\) labelled “dog”"))
    url = page.url
    assert "box=" in url and "label=dog" in url and "k=5" in url

    page.reload()
    status_says(page, re.compile(r"^5 results \(region\) labelled “dog”"))
    assert page.url == url
    assert page.locator("#k").input_value() == "5"
    assert page.locator("#label").input_value() == "dog"
    assert page.locator("#selection").is_visible()
    assert page.locator("#query-image").evaluate("img => img.naturalWidth") == 403  # the photo came back too
    assert {page.locator("#results .card").nth(i).get_attribute("data-label") for i in range(5)} == {"dog"}

    page.go_back()  # k back to 12
    status_says(page, re.compile(r"^12 results \(region\) labelled “dog”"))
    assert page.locator("#k").input_value() == "12"
    page.go_back()  # no label
    status_says(page, re.compile(r"^12 results \(region\) with"))
    page.go_back()  # the whole photo
    status_says(page, re.compile(r"^12 results with"))
    assert page.locator("#selection").is_hidden()
    page.go_forward()
    status_says(page, re.compile(r"^12 results \(region\) with"))
    assert page.locator("#selection").is_visible()

    # A result searched by id, then Browse page 2: both in the history.
    first = page.locator("#results .card").first
    clicked = first.get_attribute("data-id")
    first.click()
    expect(page.locator("#query-caption")).to_contain_text(f"(id {clicked})")
    assert f"id={clicked}" in page.url and "upload=" not in page.url and "box=" not in page.url
    page.click("#tab-browse")
    expect(page.locator("#page-info")).to_contain_text("Page 1 of 2 (60 images)")
    page.click("#page-next")
    expect(page.locator("#page-info")).to_contain_text("Page 2 of 2")
    expect(page.locator("#browse .card")).to_have_count(12)
    page.reload()
    expect(page.locator("#page-info")).to_contain_text("Page 2 of 2")
    page.go_back()
    expect(page.locator("#page-info")).to_contain_text("Page 1 of 2")
    page.go_back()
    expect(page.locator("#search-view")).to_be_visible()
    expect(page.locator("#query-caption")).to_contain_text(f"(id {clicked})")
    page.go_back()
    status_says(page, re.compile(r"^12 results \(region\) with"))


@pytest.mark.parametrize("server_url", [{"per_label": 30}], indirect=True)
def test_double_clicking_next_stays_within_the_pages(page, server_url: str) -> None:
    page.goto(f"{server_url}/?view=browse")
    expect(page.locator("#page-info")).to_contain_text("Page 1 of 2 (60 images)")
    page.dblclick("#page-next")
    expect(page.locator("#page-info")).to_contain_text("Page 2 of 2")
    expect(page.locator("#browse .card")).to_have_count(12)
    expect(page.locator("#page-next")).to_be_disabled()
    # An old link past the end shows the last page.
    page.goto(f"{server_url}/?view=browse&page=8")
    expect(page.locator("#page-info")).to_contain_text("Page 2 of 2")
    assert "page=2" in page.url


# --- phones and large photos ----------------------------------------------------------------------


def test_a_phone_sized_run(phone, server_url: str, data_dir: Path, tmp_path: Path) -> None:
    """390x844 with touch: the first results show under a portrait photo, tapping a result keeps the query in view."""
    page = phone
    page.goto(server_url)
    expect(page.locator("#embedder option")).to_have_count(1)
    assert page.evaluate("matchMedia('(hover: none) and (pointer: coarse)').matches")
    # Nothing on a phone asks to drop or press Ctrl+V.
    for text in ("Drop", "drop", "Ctrl+V"):
        assert all(not element.is_visible() for element in page.get_by_text(text).all()), text
    expect(page.get_by_text("Choose a photo")).to_be_visible()
    portrait = tmp_path / "portrait.jpg"
    Image.open(data_dir / QUERY_CAT).resize((900, 1600)).save(portrait, quality=85)
    page.set_input_files("#file-input", str(portrait))
    cards = page.locator("#results .card")
    cards.nth(11).wait_for()
    assert cards.first.bounding_box()["y"] < 844 - 60, "the first result starts below the screen"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    wait_until(lambda: images_loaded(page.locator("#query-image")) and images_loaded(cards.locator("img").nth(2)))
    save_screenshot(page, "phone", tmp_path)

    # Scroll down, tap the last result: the new query and the first new results are in view.
    cards.nth(11).scroll_into_view_if_needed()
    tapped = cards.nth(11).get_attribute("data-id")
    cards.nth(11).locator(".card-main").tap()
    expect(page.locator("#query-caption")).to_contain_text(f"(id {tapped})")
    status_says(page, re.compile(r"^12 results"))
    expect(page.locator("#query-image")).to_be_in_viewport()
    query_box = page.locator("#query").bounding_box()
    assert query_box["y"] >= -1
    assert cards.first.bounding_box()["y"] < 844

    # The detail view fits the screen and closes with Back.
    cards.first.locator(".card-info").tap()
    expect(page.locator("#detail-path")).to_have_text(re.compile(r"^(cat|dog)/"))
    detail = page.locator("#detail").bounding_box()
    assert detail["x"] >= 0 and detail["x"] + detail["width"] <= 390
    page.go_back()
    expect(page.locator("#detail")).to_be_hidden()


def test_a_48_megapixel_phone_photo_is_searched(page, server_url: str, data_dir: Path, tmp_path: Path) -> None:
    """6000x8000 (48 MP, over the 40 MP limit): decoded reduced on the server, searched like any photo."""
    photo = tmp_path / "phone-photo.jpg"
    Image.open(data_dir / QUERY_CAT).resize((6000, 8000), Image.Resampling.BILINEAR).save(photo, quality=75)
    assert photo.stat().st_size < UPLOAD_LIMIT
    page.goto(server_url)
    wait_for_collection(page)
    with page.expect_response(lambda response: "/api/search" in response.url) as searched:
        page.set_input_files("#file-input", str(photo))
    assert searched.value.status == 200
    assert searched.value.json()["query"] == {"id": None, "width": 6000, "height": 8000, "box": None}
    status_says(page, "12 results with")
    labels = page.locator("#results .card").evaluate_all("cards => cards.map(c => c.dataset.label)")
    assert labels.count("cat") >= 9, labels
    # Other formats have no reduced decoding: a plain refusal, and no picture or stale results left.
    png = tmp_path / "scan.png"
    Image.new("RGB", (8000, 6000), (200, 180, 160)).save(png)
    page.set_input_files("#file-input", str(png))
    status_says(page, "image too large: 8000x6000 pixels is 48 MP, the limit is 40 MP")
    expect(page.locator("#status")).to_have_class(re.compile(r"\berror\b"))
    expect(page.locator("#results .card")).to_have_count(0)
    expect(page.locator("#query")).to_be_hidden()


def test_a_region_is_adjusted_by_its_handles_and_moved(page, server_url: str, data_dir: Path) -> None:
    page.goto(server_url)
    wait_for_collection(page)
    page.set_input_files("#file-input", str(data_dir / QUERY_CAT))  # 403x499
    status_says(page, "12 results with")
    image = page.locator("#query-image").bounding_box()
    scale = 403 / image["width"]

    def drag(start: tuple[float, float], end: tuple[float, float]) -> list[float]:
        with page.expect_request(lambda request: "box=" in request.url) as searched:
            page.mouse.move(*start)
            page.mouse.down()
            page.mouse.move(*end, steps=4)
            page.mouse.up()
        return [float(v) for v in re.search(r"box=([\d.,%C]+)", searched.value.url)[1].replace("%2C", ",").split(",")]

    x, y = image["x"], image["y"]
    box = drag((x + 40, y + 40), (x + 140, y + 140))
    assert box == pytest.approx([40 * scale, 40 * scale, 140 * scale, 140 * scale], abs=3)
    status_says(page, "(region)")
    handle = page.locator('#selection [data-handle="se"]').bounding_box()
    corner = (handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    box = drag(corner, (corner[0] + 60, corner[1] + 30))  # the south-east corner, out and down
    assert box == pytest.approx([40 * scale, 40 * scale, 200 * scale, 170 * scale], abs=4)
    handle = page.locator('#selection [data-handle="w"]').bounding_box()
    box = drag((handle["x"] + 6, handle["y"] + 6), (handle["x"] + 26, handle["y"] + 6))  # the west edge, inwards
    assert box == pytest.approx([60 * scale, 40 * scale, 200 * scale, 170 * scale], abs=4)
    middle = (x + 130, y + 100)
    box = drag(middle, (middle[0] + 50, middle[1] + 50))  # the whole region, moved
    assert box == pytest.approx([110 * scale, 90 * scale, 250 * scale, 220 * scale], abs=4)
    status_says(page, "12 results (region)")


# --- honest confidence ----------------------------------------------------------------------------


def test_a_photo_unlike_the_collection_is_marked_as_no_close_match(
    page, server_url: str, data_dir: Path, tmp_path: Path
) -> None:
    motorbike = min((data_dir.parent / "caltech101-dev" / "Motorbikes").iterdir())
    page.goto(server_url)
    wait_for_collection(page)
    page.set_input_files("#file-input", str(motorbike))
    status_says(page, "12 results with")
    notice = page.locator("#weak-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("No close match in this collection")
    expect(page.locator("#results .card.weak")).to_have_count(12)
    assert "weak match" in page.locator("#results .card-main").first.get_attribute("aria-label")
    wait_until(lambda: images_loaded(page.locator("#results img, #query-image")))
    save_screenshot(page, "weak-match", tmp_path)
    page.set_input_files("#file-input", str(data_dir / QUERY_CAT))
    status_says(page, "12 results with")
    expect(notice).to_be_hidden()
    weak = page.locator("#results .card").evaluate_all("cards => cards.map(c => c.classList.contains('weak'))")
    assert weak[0] is False
    assert weak == sorted(weak)  # the weak ones, if any, come last, after a divider
    if any(weak):
        expect(page.locator("#results .divider")).to_contain_text("Weaker matches")


# --- keyboard and accessibility --------------------------------------------------------------------


def tab_to(page, predicate: str, limit: int = 60) -> None:
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(() => {{ const el = document.activeElement; return Boolean({predicate}); }})()"):
            return
    pytest.fail(f"Tab never reached {predicate}")


def test_keyboard_only_region_search_and_results(page, server_url: str) -> None:
    page.goto(server_url)
    wait_for_collection(page)
    first_id = page.evaluate("fetch('/api/images?limit=1').then(r => r.json()).then(p => p.items[0].id)")
    page.goto(f"{server_url}/?id={first_id}")
    status_says(page, "12 results with")
    tab_to(page, "el.id === 'query-frame'")
    width = page.locator("#query-image").evaluate("img => img.naturalWidth")
    page.keyboard.press("ArrowRight")  # places a region in the middle
    page.keyboard.press("ArrowRight")  # moves it right
    page.keyboard.press("Shift+ArrowUp")  # makes it shorter
    expect(page.locator("#region-status")).to_contain_text("Press Enter to search it")
    assert page.locator("#selection").is_visible()
    with page.expect_request(lambda request: "/similar?" in request.url and "box=" in request.url) as searched:
        page.keyboard.press("Enter")
    box = [float(v) for v in re.search(r"box=([\d.,%C]+)", searched.value.url)[1].replace("%2C", ",").split(",")]
    assert box[0] == pytest.approx(width * 0.27, abs=2)
    assert box[2] - box[0] == pytest.approx(width * 0.5, abs=2)
    status_says(page, "12 results (region) with")
    page.keyboard.press("Escape")
    status_says(page, re.compile(r"^12 results with"))
    assert "box=" not in page.url

    # A result, with the keyboard: a focus ring, a button that says what it does, then focus on the new results.
    tab_to(page, "el.classList.contains('card-main')")
    focused = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert focused == "solid"
    assert page.evaluate("document.activeElement.tagName") == "BUTTON"
    label = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert re.match(r"Search with \S+\.jpg \(labelled (cat|dog), similarity 0\.\d\d", label), label
    alt = page.evaluate("document.activeElement.querySelector('img').alt")
    assert re.match(r"\S+\.jpg, labelled (cat|dog), \d+×\d+ pixels", alt), alt
    chosen = page.evaluate("document.activeElement.closest('.card').dataset.id")
    page.keyboard.press("Enter")
    expect(page.locator("#query-caption")).to_contain_text(f"(id {chosen})")
    status_says(page, re.compile(r"^12 results"))
    expect(page.locator("#results .card-main").first).to_be_focused()
    # Its details with the keyboard, closed with Esc: focus returns.
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-search")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    expect(page).not_to_have_url(re.compile(r"detail="))  # closing goes Back: the URL changes a moment later
    expect(page.locator("#results .card-info").first).to_be_focused()


# --- details, adding and removing -------------------------------------------------------------------


def test_a_result_opens_to_its_details_and_can_be_removed(page, server_url: str, tmp_path: Path) -> None:
    page.goto(server_url)
    wait_for_collection(page)
    page.click("#tab-browse")
    card = page.locator("#browse .card").nth(3)
    card.wait_for()
    image_id = card.get_attribute("data-id")
    card.locator(".card-info").click()
    expect(page.locator("#detail-title")).to_have_text(re.compile(r"\.jpg$"))
    name = page.locator("#detail-title").text_content()
    label = card.get_attribute("data-label")
    expect(page.locator("#detail-label")).to_have_text(label)
    expect(page.locator("#detail-path")).to_have_text(f"{label}/{name}")  # below the indexed folder, no server path
    expect(page.locator("#detail-size")).to_have_text(re.compile(r"^\d+ × \d+ pixels, \d+\.\d KB$"))
    original = page.locator("#detail-original").get_attribute("href")
    assert page.request.get(f"{server_url}{original}").headers["content-type"] == "image/jpeg"
    assert f"detail={image_id}" in page.url
    wait_until(lambda: images_loaded(page.locator("#detail-image")))
    save_screenshot(page, "detail", tmp_path)

    page.click("#detail-remove")
    expect(page.locator("#detail-confirm-text")).to_contain_text("The file itself stays where it is")
    page.click("#detail-remove-no")  # changed their mind
    expect(page.locator("#detail-confirm")).to_be_hidden()
    page.click("#detail-remove")
    with page.expect_response(lambda r: r.request.method == "DELETE") as removed:
        page.click("#detail-remove-yes")
    assert removed.value.status == 204
    expect(page.locator("#detail")).to_be_hidden()
    expect(page.locator("#message")).to_contain_text(f"Removed {name}")
    expect(page.locator(f'#browse .card[data-id="{image_id}"]')).to_have_count(0)
    wait_for_collection(page, 23)
    expect(page.locator("#page-info")).to_contain_text("23 images")


def test_adding_photos_from_the_page(page, server_url: str, data_dir: Path) -> None:
    page.goto(f"{server_url}/?view=browse")
    wait_for_collection(page)
    page.click("#add-open")
    page.set_input_files("#add-files", [str(data_dir / "cat" / "cat.200.jpg"), str(data_dir / "dog" / "dog.200.jpg")])
    page.fill("#add-label", "new")
    page.click("#add-submit")
    expect(page.locator("#add-progress li")).to_have_count(2)
    expect(page.locator("#add-progress")).not_to_contain_text("adding…")
    assert "added as" in page.locator("#add-progress li").first.text_content()
    page.click("#add-close")
    wait_for_collection(page, 26)
    expect(page.locator("#page-info")).to_contain_text("26 images")
    expect(page.locator("#message")).to_contain_text("Added 2 photos")
    # Uploaded ones live in the collection's uploads area, and searching with one finds it.
    page.locator("#browse .card").last.locator(".card-info").click()
    expect(page.locator("#detail-path")).to_have_text(re.compile(r"^uploads/[0-9a-f]+\.jpg$"))
    expect(page.locator("#detail-label")).to_have_text("new")
    # An uploaded query can be added too.
    page.goto(server_url)
    page.set_input_files("#file-input", str(data_dir / "cat" / "cat.201.jpg"))
    status_says(page, "12 results")
    page.click("#add-query")
    expect(page.locator("#message")).to_contain_text("Added cat.201.jpg to the collection")
    wait_for_collection(page, 27)


@pytest.mark.parametrize("server_url", [{"read_only": True}], indirect=True)
def test_a_read_only_server_offers_no_changes(page, server_url: str, data_dir: Path) -> None:
    page.goto(server_url)
    expect(page.locator("#collection-info")).to_contain_text("24 images (read-only)")
    expect(page.locator("#add-open")).to_be_hidden()
    page.set_input_files("#file-input", str(data_dir / QUERY_CAT))
    status_says(page, "12 results")
    expect(page.locator("#add-query")).to_be_hidden()
    page.locator("#results .card-info").first.click()
    expect(page.locator("#detail-path")).not_to_be_empty()
    expect(page.locator("#detail-remove")).to_be_hidden()


# --- small things ----------------------------------------------------------------------------------


def test_the_results_box_shows_what_the_search_uses(page, server_url: str) -> None:
    page.goto(server_url)
    wait_for_collection(page)
    first_id = page.evaluate("fetch('/api/images?limit=1').then(r => r.json()).then(p => p.items[0].id)")
    page.goto(f"{server_url}/?id={first_id}")
    status_says(page, "12 results")
    for typed, used, found in [("0", "1", 1), ("500", "100", 23), ("-3", "1", 1), ("", "1", 1), ("7", "7", 7)]:
        page.fill("#k", typed)
        page.press("#k", "Enter")
        expect(page.locator("#k")).to_have_value(used)
        status_says(page, re.compile(rf"^{found} results? with"))


def test_errors_leave_no_stale_picture_or_results(page, server_url: str, data_dir: Path, tmp_path: Path) -> None:
    page.goto(server_url)
    wait_for_collection(page)
    page.set_input_files("#file-input", str(data_dir / QUERY_CAT))
    status_says(page, "12 results")
    # The native picker's "No file chosen" is never shown: the button is the label of a hidden input.
    assert page.locator("#file-input").evaluate("input => input.getBoundingClientRect().width") <= 1
    big = tmp_path / "huge.jpg"
    big.write_bytes(b"\xff\xd8\xff" + bytes(UPLOAD_LIMIT + 2**20))
    page.set_input_files("#file-input", str(big))
    status_says(page, "huge.jpg is too large")
    expect(page.locator("#results .card")).to_have_count(0)
    expect(page.locator("#query")).to_be_hidden()

    page.goto(server_url)
    notes = tmp_path / "notes.png"
    notes.write_text("not an image at all\n")
    page.set_input_files("#file-input", str(notes))
    status_says(page, "not a readable image")
    expect(page.locator("#query")).to_be_hidden()  # no broken-image icon, no region hint under it

    # The server gone: a message that says so.
    page.goto(server_url)
    page.set_input_files("#file-input", str(data_dir / QUERY_CAT))
    status_says(page, "12 results")
    page.route("**/api/**", lambda route: route.abort())
    page.select_option("#label", "cat")
    status_says(page, "Cannot reach the lookalike server")
