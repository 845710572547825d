"""Set-up shared by the server and web-page tests, written once: a free loopback port, an app served by
uvicorn in a thread, `lookalike serve` in a child process, and a page of Debian's headless Chromium through
Playwright (imported only when a page is opened, so API tests run without it)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from lookalike import Collection

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
# A browser test module's `pytestmark`: marked (so CI refuses to skip it), skipped with the reason without Chromium.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (run .ci/install-browser.sh)"),
]


def free_port(family: socket.AddressFamily = socket.AF_INET, address: str = "127.0.0.1") -> int:
    """A port nobody listens on at `address` now."""
    with socket.socket(family) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


@contextmanager
def indexed(photos: Path, path: Path, embedder: str | None = "efficientnet-lite0") -> Iterator[Collection]:
    """A new collection at `path` with the photos under `photos` indexed; closed on leaving.

    Lite0 unless told (None: the default embedder): half the default two-view embedder's time, and what the
    server does with an embedder does not depend on which (test_faults.py serves the default).
    """
    with Collection.open(path, embedder=embedder) as collection:
        collection.sync(photos)
        yield collection


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` served by uvicorn in a thread on a free port of 127.0.0.1: its base URL; stopped on leaving."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def start_process(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`command` as a child process, its output (both streams) going to the file `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=out, env=env)


def start_serve(collection: Path, *options: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    """`lookalike serve --collection COLLECTION OPTIONS...` as a child process, and the file of its output."""
    log = collection.parent / f"serve-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "lookalike.cli.main", "serve", "--collection", str(collection), *options]
    return start_process(command, log, env), log


def wait_until_answering(
    process: subprocess.Popen,
    log: Path,
    url: str,
    headers: dict[str, str] | None = None,
    *,
    ready: Callable[[httpx.Response], bool] = lambda response: response.status_code == 200,
    timeout: float = 120,
) -> None:
    """Polls `url` until its answer is `ready`; fails with the server's output if the process ends first."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if ready(httpx.get(url, headers=headers, timeout=2)):
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the server did not answer within {timeout:g} s"
        time.sleep(0.2)


def stop_serve(process: subprocess.Popen, log: Path) -> None:
    """Ctrl-C to the server: it must stop cleanly (exit status 0)."""
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0, log.read_text()


@contextmanager
def chromium_page(**context_options: Any) -> Iterator[Any]:
    """A Playwright page in a new headless Chromium, with generous waits (the machine may be shared; waits end as
    soon as met). `context_options` go to `new_context` (viewport, is_mobile...). The browser closes on leaving."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(**context_options).new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def wait_until(
    condition: Callable[[], object], timeout: float = 20.0, message: str = "timed out waiting for the page"
) -> None:
    """Polls `condition` until it holds; fails with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(message)
        time.sleep(0.1)


def images_loaded(locator: Any) -> bool:
    """Whether every <img> of `locator` has loaded a picture."""
    return locator.evaluate_all("imgs => imgs.every(img => img.complete && img.naturalWidth > 0)")


def save_screenshot(page: Any, name: str, tmp_path: Path, **options: object) -> Path:
    """A screenshot in tmp_path, and in $LOOKALIKE_SCREENSHOTS too when set (how docs/ screenshots are made)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), **options)
    folder = os.environ.get("LOOKALIKE_SCREENSHOTS")
    if folder:
        shutil.copy2(path, Path(folder) / f"{name}.png")
    return path
