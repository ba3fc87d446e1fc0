"""The upload page at / in a real browser: Debian's headless Chromium driven by Playwright,
against live gunicorn.  Upload and compare the SHA-256, resume after a closed tab, retry
through a server restart, the server's own error messages, filenames shown as text."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import requests

from app.storage.locks import FileLocker
from app.testing.servers import launch, server_command, start_server
from tests.conftest import TOKEN_RW, sha256_of

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                               "(pip install -r requirements-dev.txt; never `playwright install`)")
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason="no /usr/bin/chromium (apt-get install chromium; .ci/run does)")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MB = 1 << 20
MAX_FILE_SIZE = 300 * MB
# an expected browser report, not a page error: what the server refused, or could not answer
NETWORK_REPORT = re.compile(r"^Failed to load resource")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("page")
    running = start_server("gunicorn", base / "store", base, workers=2, env={
        "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write", "SPILLWAY_MAX_FILE_SIZE": str(MAX_FILE_SIZE)})
    yield running
    running.stop()


@pytest.fixture
def slow_server(tmp_path):
    """40 MB/s per token (SPILLWAY_LIMIT_BYTES_PER_SECOND), so a 200 MB upload takes about
    5 s: long enough to be cut halfway; an access log to see which requests came."""
    running = start_server("gunicorn", tmp_path / "store", tmp_path, workers=2, env={
        "SPILLWAY_TOKENS": f"{TOKEN_RW}:read+write", "SPILLWAY_MAX_FILE_SIZE": str(MAX_FILE_SIZE),
        "SPILLWAY_LIMIT_BYTES_PER_SECOND": str(40 * MB), "SPILLWAY_READ_TIMEOUT": "5",
        "GUNICORN_ACCESSLOG": "-"})
    holder = {"server": running}
    yield holder
    holder["server"].stop()


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        for _ in range(size // MB):
            out.write(os.urandom(MB))
    return path


@pytest.fixture(scope="module")
def file_50mb(tmp_path_factory) -> Path:
    return random_file(tmp_path_factory.mktemp("50mb") / "fifty.bin", 50 * MB)


@pytest.fixture(scope="module")
def file_200mb(tmp_path_factory) -> Path:
    return random_file(tmp_path_factory.mktemp("200mb") / "two-hundred.bin", 200 * MB)


class Browser:
    """One Chromium with a fresh profile; every page's console errors and dialogs kept."""

    def __init__(self, context):
        self.context = context
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list = []

    def open(self, url: str, **viewport):
        page = self.context.new_page()
        if viewport:
            page.set_viewport_size(viewport)
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: self.requests.append(r))
        page.goto(url)
        page.wait_for_selector("#mode:not(:has-text('Checking'))")
        return page

    def page_errors(self) -> list[str]:
        return [e for e in self.errors if not NETWORK_REPORT.match(e)]


@pytest.fixture
def browser(tmp_path):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, accept_downloads=True)
        context.set_default_timeout(60_000)
        try:
            yield Browser(context)
        finally:
            context.close()


def sign_in(page, token: str = TOKEN_RW) -> None:
    page.fill("#token", token)
    page.click("#token-form button[type=submit]")


def finished_item(page, name: str, timeout: float = 120_000):
    item = page.locator("#uploads li", has_text=name).last
    item.and_(page.locator("[data-state=done]")).wait_for(timeout=timeout)
    return item


def progress_fraction(page) -> float:
    return page.eval_on_selector("#uploads li:last-child progress", "p => p.value / p.max")


def wait_for_progress(page, fraction: float) -> None:
    page.wait_for_function(
        f"() => {{ const p = document.querySelector('#uploads li:last-child progress');"
        f" return p && p.value / p.max >= {fraction}; }}", timeout=60_000)


def tus_offset(server, upload_id: str) -> int:
    answer = requests.head(f"{server.url}/tus/{upload_id}", timeout=10, headers={
        "Tus-Resumable": "1.0.0", "Authorization": f"Bearer {TOKEN_RW}"})
    assert answer.status_code in (200, 204), answer.status_code
    return int(answer.headers["Upload-Offset"])


def server_message(response) -> str:
    return response.json()["error"]["message"]


def test_upload_shows_the_sha256_lists_and_downloads(server, browser, file_50mb, tmp_path):
    page = browser.open(server.url + "/")
    assert page.is_visible("#token-section")  # the server has tokens
    sign_in(page)
    page.set_input_files("#file-input", str(file_50mb))
    item = finished_item(page, file_50mb.name)
    expected = sha256_of(file_50mb)
    assert item.locator(".hash").inner_text() == f"SHA-256 {expected}"
    row = page.locator("#files tbody tr", has_text=expected)
    row.wait_for()
    assert row.locator("td.name").inner_text() == file_50mb.name
    with page.expect_download() as download:
        row.get_by_role("button", name="Download").click()
    saved = tmp_path / "downloaded.bin"
    download.value.save_as(saved)
    assert saved.stat().st_size == 50 * MB and sha256_of(saved) == expected
    # nothing went anywhere but the server, and nothing broke
    assert {r.url.split("/", 3)[2] for r in browser.requests} == {server.url.split("/", 3)[2]}
    assert browser.errors == [] and browser.dialogs == []


def test_a_closed_tab_resumes_from_the_stored_offset(slow_server, browser, file_200mb, tmp_path):
    server = slow_server["server"]
    first = browser.open(server.url + "/")
    sign_in(first)
    with first.expect_response(lambda r: r.request.method == "POST" and "/tus/" in r.url) as created:
        first.set_input_files("#file-input", str(file_200mb))
    upload_id = created.value.header_value("location").rstrip("/").rsplit("/", 1)[1]
    wait_for_progress(first, 0.45)
    first.screenshot(path=str(tmp_path / "mid-upload.png"), full_page=True)
    if os.environ.get("SPILLWAY_PAGE_SCREENSHOT"):  # README's picture: app/web/static/screenshot.png
        first.screenshot(path=os.environ["SPILLWAY_PAGE_SCREENSHOT"], full_page=True)
    first.close()

    # the server notices the closed connection and saves what came; its PATCH holds the
    # upload's lock (flock, across processes) until then, so take the lock once to wait
    with FileLocker(str(server.storage_dir / "locks")).acquire(upload_id, timeout=30):
        pass
    kept = tus_offset(server, upload_id)
    assert 0 < kept < 200 * MB

    browser.requests.clear()
    second = browser.open(server.url + "/")
    assert second.is_visible("#unfinished li")  # the browser remembers the unfinished upload
    assert file_200mb.name in second.inner_text("#unfinished-list")
    sign_in(second)  # the token was for that tab only
    second.set_input_files("#file-input", str(file_200mb))
    item = finished_item(second, file_200mb.name)
    expected = sha256_of(file_200mb)
    assert item.locator(".hash").inner_text() == f"SHA-256 {expected}"

    tus_calls = [r for r in browser.requests if "/tus/" in r.url and r.method != "OPTIONS"]
    assert [r.method for r in tus_calls[:2]] == ["HEAD", "PATCH"], [(r.method, r.url) for r in tus_calls]
    assert all(r.url.endswith("/tus/" + upload_id) for r in tus_calls)
    assert int(tus_calls[1].headers["upload-offset"]) == kept
    record = requests.get(f"{server.url}/files/{upload_id}", timeout=10,
                          headers={"Authorization": f"Bearer {TOKEN_RW}"}).json()
    assert record["sha256"] == expected and record["size"] == 200 * MB
    access_log = server.log()
    assert len(re.findall(r'"POST /tus/ HTTP', access_log)) == 1  # one upload, not a new one
    assert re.search(rf'"HEAD /tus/{upload_id} HTTP', access_log)
    assert browser.page_errors() == [] and browser.dialogs == []


def test_the_page_retries_through_a_server_restart(slow_server, browser, file_200mb):
    server = slow_server["server"]
    page = browser.open(server.url + "/")
    sign_in(page)
    page.set_input_files("#file-input", str(file_200mb))
    wait_for_progress(page, 0.3)
    os.killpg(server.process.pid, signal.SIGKILL)  # the master and its workers, no goodbye
    server.process.wait(10)
    page.locator("#uploads li[data-state=retrying]").wait_for(timeout=30_000)
    slow_server["server"] = launch("gunicorn", server_command("gunicorn"), server.env,
                                   server.storage_dir, server.log_path.parent)
    item = finished_item(page, file_200mb.name)
    assert item.locator(".hash").inner_text() == f"SHA-256 {sha256_of(file_200mb)}"
    # the only console reports are the refused connections while the server was down
    assert browser.page_errors() == [] and browser.dialogs == []


def test_pause_then_resume(slow_server, browser, file_200mb):
    server = slow_server["server"]
    page = browser.open(server.url + "/")
    sign_in(page)
    with page.expect_response(lambda r: r.request.method == "POST" and "/tus/" in r.url) as created:
        page.set_input_files("#file-input", str(file_200mb))
    upload_id = created.value.header_value("location").rstrip("/").rsplit("/", 1)[1]
    wait_for_progress(page, 0.2)
    item = page.locator("#uploads li").last
    item.get_by_role("button", name="Pause").click()
    item.and_(page.locator("[data-state=paused]")).wait_for()
    time.sleep(2)  # the server records what came before the abort, then nothing more comes
    paused_at = tus_offset(server, upload_id)
    time.sleep(1.5)
    assert tus_offset(server, upload_id) == paused_at < 200 * MB
    browser.requests.clear()
    item.get_by_role("button", name="Resume").click()
    finished_item(page, file_200mb.name)
    assert item.locator(".hash").inner_text() == f"SHA-256 {sha256_of(file_200mb)}"
    tus_calls = [r for r in browser.requests if "/tus/" in r.url and r.method != "OPTIONS"]
    assert [r.method for r in tus_calls[:2]] == ["HEAD", "PATCH"]
    assert int(tus_calls[1].headers["upload-offset"]) == paused_at
    assert browser.page_errors() == [] and browser.dialogs == []


def test_the_servers_message_for_a_bad_token_and_an_oversize_file(server, browser, tmp_path):
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello\n" * 100)
    oversize = tmp_path / "oversize.bin"
    with oversize.open("wb") as sparse:
        sparse.truncate(MAX_FILE_SIZE + 1)
    tus_headers = {"Tus-Resumable": "1.0.0", "Upload-Length": str(MAX_FILE_SIZE + 1)}
    bad_token = requests.post(server.url + "/tus/", timeout=10, headers=tus_headers | {
        "Authorization": "Bearer not-the-token"})
    too_big = requests.post(server.url + "/tus/", timeout=10, headers=tus_headers | {
        "Authorization": f"Bearer {TOKEN_RW}"})
    assert (bad_token.status_code, too_big.status_code) == (401, 413)

    page = browser.open(server.url + "/")
    sign_in(page, "not-the-token")
    assert server_message(bad_token) in page.inner_text("#files-message")
    page.set_input_files("#file-input", str(small))
    refused = page.locator("#uploads li[data-state=error]", has_text="small.txt")
    refused.wait_for()
    assert server_message(bad_token) in refused.inner_text() and "401" in refused.inner_text()

    sign_in(page)
    page.set_input_files("#file-input", str(oversize))
    refused = page.locator("#uploads li[data-state=error]", has_text="oversize.bin")
    refused.wait_for()
    assert server_message(too_big) in refused.inner_text() and "413" in refused.inner_text()
    assert browser.page_errors() == [] and browser.dialogs == []


def test_a_dropped_file_with_markup_in_its_name_is_shown_as_text(server, browser):
    name = "<img src=x onerror=alert(1)>.txt"
    page = browser.open(server.url + "/")
    sign_in(page)
    page.evaluate("""name => {
        const transfer = new DataTransfer();
        transfer.items.add(new File(["dropped bytes\\n"], name, {type: "text/plain"}));
        const zone = document.getElementById("drop-zone");
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }
    }""", name)
    item = finished_item(page, name)
    assert item.locator(".name").inner_text() == name
    page.locator("#files td.name", has_text=name).first.wait_for()
    assert page.locator("img").count() == 0
    assert browser.dialogs == [] and browser.errors == []


def test_phone_screen_and_keyboard(server, browser):
    long_name = "a-rather-long-file-name-without-any-break-" * 3 + ".bin"
    stored = requests.put(f"{server.url}/upload/{long_name}", data=b"x" * 1000, timeout=10,
                          headers={"Authorization": f"Bearer {TOKEN_RW}"})
    assert stored.status_code == 201
    page = browser.open(server.url + "/", width=390, height=844)
    sign_in(page)
    page.locator("#files tbody tr", has_text=stored.json()["sha256"]).wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.focus("#token-form button[type=submit]")
    page.keyboard.press("Tab")  # the next stop is the drop zone
    assert page.evaluate("document.activeElement.id") == "drop-zone"
    for attempt in range(3):  # under load the chooser event may come late: not a defect
        try:
            with page.expect_file_chooser(timeout=10_000) as chooser:
                page.keyboard.press("Enter")
            break
        except sync_api.TimeoutError:
            if attempt == 2:
                raise
    assert chooser.value.is_multiple()
    assert browser.errors == []


def test_multipart_when_tus_is_blocked(server, browser, tmp_path):
    """A proxy in front that lets no tus through: the page falls back to POST /upload."""
    source = random_file(tmp_path / "fallback.bin", 5 * MB)
    browser.context.route(re.compile(r".*/tus/$"), lambda route: route.fulfill(
        status=404, content_type="application/json", body='{"error": {"code": "not_found", '
        '"message": "no such resource", "status": 404}}'))
    page = browser.open(server.url + "/")
    assert "no tus" in page.inner_text("#mode")
    sign_in(page)
    page.set_input_files("#file-input", str(source))
    item = finished_item(page, source.name)
    assert item.locator(".hash").inner_text() == f"SHA-256 {sha256_of(source)}"
    assert any(r.method == "POST" and r.url.endswith("/upload") for r in browser.requests)
    assert browser.page_errors() == []


def test_the_page_forbids_outside_scripts(server):
    answer = requests.get(server.url + "/", timeout=10)
    policy = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert not re.search(r"(src|href)=\"(https?:)?//", answer.text)  # nothing from elsewhere
    static = Path(__file__).parent.parent / "app" / "web" / "static"
    scripts = [p for p in static.rglob("*.js") if "vendor" not in p.parts]
    assert scripts and not [p for p in scripts if "innerHTML" in p.read_text()]
