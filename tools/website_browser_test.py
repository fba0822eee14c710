"""The built site in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Run by `make site-test` after `make site`, not by `make test` (it lives outside tests/):
    python -m pytest tools/website_browser_test.py

A local HTTP server on 127.0.0.1 serves site/; every request to another host is refused and counted as a
failure, so a page that needs the network fails here. Each lesson page must load with no console error and
no failed request, every image must have decoded, and every internal link must resolve (anchors included);
search must find "autograd" and "DataLoader"; a 1280-px-wide screenshot of each page goes to a temporary
folder, printed at the end, for a person to look at.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import website  # noqa: E402  (tools/ is a folder of scripts, not a package)

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")  # Debian's package, and the name some others use
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000  # any one navigation, wait or request; nothing waits longer
WIDTH = 1280  # screenshot and viewport width, px
# Chromium leaves a full-page screenshot blank below about 32,000 px (the longest lesson is over 40,000 px tall), so
# a long page is saved in parts of at most this height: <page>.png, or <page>-1.png, <page>-2.png, ...
SCREENSHOT_PART_PX = 15_000
SEARCH_WORDS = ("autograd", "DataLoader")
SITE = Path(os.environ.get("SITE_DIR", website.SITE_DIR)).resolve()  # the built site; site/ unless SITE_DIR says

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: `make site-test` "
                                     "installs requirements-docs.txt")


def chromium_path() -> str | None:
    """Debian's Chromium, or None. CHROMIUM names another binary."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((path for name in CHROMIUM_CANDIDATES if (path := shutil.which(name))), None)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves site/ without logging each request; keeps the paths it could not find (favicon requests
    included, which the browser makes on its own and does not report to the page)."""

    not_found: list[str] = []

    def send_error(self, code, message=None, explain=None):
        if code == 404:
            self.not_found.append(self.path)
        super().send_error(code, message, explain)

    def log_message(self, format, *args):  # noqa: A002 -- the base class's signature
        pass


@pytest.fixture(scope="module")
def site_url():
    if not (SITE / "index.html").is_file():
        pytest.fail(f"{SITE} has no index.html: run `make site` first")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser_context():
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium found: install Debian's package (`apt-get install -y chromium`, as root) or "
                    "set CHROMIUM to a Chromium binary")
    with tempfile.TemporaryDirectory(prefix="site-chromium-profile-") as profile, \
            playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS, timeout=60_000,
            viewport={"width": WIDTH, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def screenshot_dir():
    path = Path(tempfile.mkdtemp(prefix="site-screenshots-"))
    yield path
    print(f"\nscreenshots ({WIDTH} px wide): {path}")


class PageWatch:
    """What went wrong while a page loaded: console errors, uncaught exceptions, failed or refused requests."""

    def __init__(self, page, allowed_origin: str) -> None:
        self.problems: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.problems.append(
            f"console error: {message.text}"))
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        page.on("requestfailed", lambda request: self.problems.append(
            f"request failed: {request.url} ({request.failure})"))
        page.on("response", lambda response: response.status >= 400 and self.problems.append(
            f"HTTP {response.status}: {response.url}"))

        def refuse_other_hosts(route):
            url = route.request.url
            if url.startswith(allowed_origin) or url.startswith(("data:", "blob:", "about:")):
                route.continue_()
            else:
                self.problems.append(f"wanted the network: {url}")
                route.abort()

        page.route("**/*", refuse_other_hosts)


def load(context, url: str, origin: str):
    page = context.new_page()
    watch = PageWatch(page, origin)
    page.goto(url, wait_until="load")
    # Images the browser defers (loading="lazy") are made to load now, then every <img> must have decoded.
    page.evaluate("""() => Promise.all(Array.from(document.images, (img) => {
        img.loading = "eager";
        return img.complete ? null : new Promise((done) => { img.onload = img.onerror = done; });
    }))""")
    return page, watch


def save_screenshots(page, folder: Path, name: str) -> None:
    height = page.evaluate("() => document.documentElement.scrollHeight")
    parts = range(0, height, SCREENSHOT_PART_PX)
    for number, top in enumerate(parts, start=1):
        clip = {"x": 0, "y": top, "width": WIDTH, "height": min(SCREENSHOT_PART_PX, height - top)}
        path = folder / (f"{name}.png" if len(parts) == 1 else f"{name}-{number}.png")
        page.screenshot(path=str(path), full_page=True, clip=clip, timeout=TIMEOUT_MS)


def page_urls(site_url: str) -> list[str]:
    return [site_url + name for name in ("index.html", *(f"{website.LESSONS_DIR}/{lesson.module}.html"
                                                         for lesson in website.LESSONS),
                                         "exercises.html", "tested.html")]


def test_every_page_loads_offline_with_its_images_and_working_links(site_url, browser_context, screenshot_dir):
    problems = []
    checked: dict[str, set[str] | None] = {}  # internal page URL -> its ids (None: not HTML)
    for url in page_urls(site_url):
        page, watch = load(browser_context, url, site_url)
        broken = page.evaluate("() => Array.from(document.images).filter((img) => !(img.naturalWidth > 0))"
                               ".map((img) => img.getAttribute('src'))")
        problems += [f"{url}: image not loaded: {src}" for src in broken]
        links = page.evaluate("() => Array.from(document.querySelectorAll('a[href]'), (a) => a.href)")
        name = url.removeprefix(site_url).replace("/", "_").removesuffix(".html")
        save_screenshots(page, screenshot_dir, name)
        problems += [f"{url}: {problem}" for problem in watch.problems]
        problems += [f"{url}: not found on the server: {path}" for path in _QuietHandler.not_found]
        _QuietHandler.not_found.clear()
        page.close()
        for link in links:
            target, fragment = urldefrag(link)
            if not target.startswith(site_url):
                continue  # a web link: followed by the reader, never loaded by the page
            if target not in checked:
                response = browser_context.request.get(target, timeout=TIMEOUT_MS)
                if not response.ok:
                    problems.append(f"{url}: link {link} answers HTTP {response.status}")
                    checked[target] = set()
                    continue
                is_html = urlsplit(target).path.endswith((".html", "/"))
                checked[target] = website.parse_page(response.text()).ids if is_html else None
            ids = checked[target]
            if fragment and ids is not None and fragment not in ids:
                problems.append(f"{url}: link {link}: no #{fragment} there")
    problems += [f"not found on the server: {path}" for path in _QuietHandler.not_found]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("word", SEARCH_WORDS)
def test_search_finds(word, site_url, browser_context, screenshot_dir):
    page, watch = load(browser_context, f"{site_url}search.html?q={word}", site_url)
    page.wait_for_selector("#search-results ul.search li", timeout=TIMEOUT_MS)
    page.wait_for_function("() => /found/.test(document.querySelector('#search-results').textContent)",
                           timeout=TIMEOUT_MS)  # the search has finished
    hits = page.eval_on_selector_all("#search-results ul.search li a", "(links) => links.map((a) => a.href)")
    save_screenshots(page, screenshot_dir, f"search_{word}")
    page.close()
    assert any(f"/{website.LESSONS_DIR}/" in hit for hit in hits), f"no lesson page among the hits for {word}: {hits}"
    assert not watch.problems, "\n".join(watch.problems)


def test_pages_and_search_work_from_files_without_a_server(browser_context):
    """file:// works too: the landing page and a lesson page load with no error and no failed request, and
    search finds a lesson."""
    for name in ("index.html", f"{website.LESSONS_DIR}/{website.LESSONS[0].module}.html"):
        url = (SITE / name).as_uri()
        page, watch = load(browser_context, url, SITE.as_uri())
        broken = page.evaluate("() => Array.from(document.images).filter((img) => !(img.naturalWidth > 0)).length")
        page.close()
        assert broken == 0, f"{url}: {broken} images not loaded"
        assert not watch.problems, "\n".join(watch.problems)
    page, watch = load(browser_context, (SITE / "search.html").as_uri() + f"?q={SEARCH_WORDS[0]}", SITE.as_uri())
    page.wait_for_selector("#search-results ul.search li", timeout=TIMEOUT_MS)
    page.close()
    assert not watch.problems, "\n".join(watch.problems)
