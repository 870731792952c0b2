"""The dashboard at /ui in a real headless Chromium (Debian's, driven by Playwright).

One user signs in, submits a 6-variant batch through the form, watches the grid fill
without a reload, opens a job and cancels a running one; a second key then sees
none of it. The batch page's screenshot goes to ``tests/artifacts/``.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    FilePayload,
    Page,
    async_playwright,
    expect,
)

from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from tests.conftest import make_providers
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import data_url, png
from tests.support.service import RunningService

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WAIT_MS = 20_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (make install puts it there)"
    ),
]


class Console:
    """What the page reported: console errors (text and resource URL) and uncaught errors."""

    def __init__(self, page: Page) -> None:
        self.errors: list[tuple[str, str]] = []
        self.uncaught: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.uncaught.append(str(error)))

    def _message(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append((message.text, message.location.get("url", "")))


@pytest.fixture
def ui_providers(fake_upstream: FakeUpstream) -> ProvidersConfig:
    """The test providers with 3 slots on the fake upstream: batch variants get 2 (one is
    kept for single jobs), so a batch's variants finish two at a time."""
    providers = make_providers(fake_upstream)
    upstreams = tuple(
        upstream.model_copy(update={"max_concurrency": 3}) if upstream.name == "fake" else upstream
        for upstream in providers.upstreams
    )
    return providers.model_copy(update={"upstreams": upstreams})


@pytest.fixture
async def ui_service(
    settings: Settings, ui_providers: ProvidersConfig
) -> AsyncIterator[RunningService]:
    async with RunningService(settings, ui_providers) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


def photo(width: int, height: int) -> FilePayload:
    """A PNG to upload through the form."""
    return {"name": "photo.png", "mimeType": "image/png", "buffer": png(width, height)}


def photo_url() -> dict[str, str]:
    """A PNG as an ``image_url`` of a JSON request."""
    return {"image_url": data_url(png(64, 48))}


async def sign_in(page: Page, key: str, lands_on: str = "Jobs") -> None:
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name=lands_on)).to_be_visible()


async def unlabelled_controls(page: Page) -> list[str]:
    """Visible form controls without a label and images without alt text."""
    result: list[str] = await page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea, img")]
            .filter((el) => el.offsetParent !== null && el.type !== "hidden")
            .filter((el) => el.tagName === "IMG" ? !el.alt : !el.labels.length)
            .map((el) => el.outerHTML)"""
    )
    return result


async def thumbnails_loaded(page: Page) -> int:
    count: int = await page.evaluate(
        """() => [...document.querySelectorAll(".grid img")]
            .filter((img) => img.complete && img.naturalWidth > 0).length"""
    )
    return count


async def submit_batch(page: Page, prompts: list[str]) -> str:
    await page.get_by_role("link", name="Submit").click()
    await page.get_by_label("Image", exact=True).set_input_files(photo(96, 72))
    await page.get_by_label("Model").select_option("fake/gpt-image-1")
    await page.get_by_label("Prompt", exact=True).fill("a poster of the photo")
    await page.get_by_label("A batch of variants").check()
    assert await unlabelled_controls(page) == []
    await page.get_by_label("Prompt variants").fill("\n".join(prompts))
    await page.get_by_role("button", name="Submit").click()
    await page.wait_for_url(re.compile(r"#/batches/batch_\w+$"))
    return page.url.rsplit("/", 1)[-1]


async def watch_grid_fill(page: Page, total: int) -> list[int]:
    """The distinct counts of loaded thumbnails seen until there are ``total``."""
    seen = [await thumbnails_loaded(page)]
    for _ in range(WAIT_MS // 25):
        count = await thumbnails_loaded(page)
        if count != seen[-1]:
            seen.append(count)
        if count == total:
            return seen
        await page.wait_for_timeout(25)
    raise AssertionError(f"the grid never showed {total} thumbnails: {seen}")


async def test_the_dashboard_end_to_end(
    ui_service: RunningService, fake_upstream: FakeUpstream, browser: Browser
) -> None:
    service = ui_service
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    console = Console(page)
    await page.goto(f"{service.base_url}/ui")
    await sign_in(page, "key-a")
    await page.evaluate("() => { window.loadedOnce = true; }")

    fake_upstream.latency_s = 0.8
    prompts = [
        f"variant {i}: {style}"
        for i, style in enumerate(["sepia", "neon", "pastel", "noir", "comic", "watercolour"])
    ]
    batch_id = await submit_batch(page, prompts)
    counts = await watch_grid_fill(page, 6)
    assert any(0 < count < 6 for count in counts), f"the grid did not fill progressively: {counts}"
    assert await page.evaluate("() => window.loadedOnce === true"), "the page was reloaded"
    await expect(page.locator(".progress-block")).to_contain_text("6 of 6 finished · 6 succeeded")
    await expect(page.get_by_role("heading", name=re.compile("Batch"))).to_contain_text("completed")
    await expect(page.locator(".grid li")).to_have_count(6)
    assert await unlabelled_controls(page) == []
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "batch-page.png", full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
    await page.screenshot(path=ARTIFACTS / "batch-page-phone.png", full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 860})
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Download all (.zip)").click()
    download = await download_info.value
    assert download.suggested_filename == f"{batch_id}.zip"
    with zipfile.ZipFile(await download.path()) as archive:
        assert len(archive.namelist()) == 6 and archive.testzip() is None

    await page.locator(".grid li a").nth(2).click()
    await page.wait_for_url(re.compile(r"#/jobs/job_\w+$"))
    await expect(page.get_by_role("heading", name=re.compile("Job"))).to_contain_text("succeeded")
    for alt in ("Input image 1", "Output image 1"):
        image = page.get_by_role("img", name=alt)
        await expect(image).to_be_visible()
        assert await image.evaluate("(img) => img.complete && img.naturalWidth > 0")
    await expect(page.locator(".facts")).to_contain_text(prompts[2])
    await expect(page.get_by_role("table", name="Upstream calls")).to_contain_text("fake")
    await page.get_by_role("link", name=batch_id).click()
    await expect(page.locator(".grid li")).to_have_count(6)

    fake_upstream.latency_s = 0
    fake_upstream.fail_next(
        Fault.json_error(400, code="content_policy_violation", message="refused by policy")
    )
    failing = await submit_batch(page, ["will fail", "will not"])
    await expect(page.locator(".grid li.tile-failed")).to_contain_text("refused by policy")
    await expect(page.locator(".grid li.tile-succeeded img")).to_have_count(1)
    await expect(page.locator(".progress-block")).to_contain_text("1 succeeded · 1 failed")
    assert failing != batch_id

    fake_upstream.latency_s = 60
    await page.get_by_role("link", name="Submit").click()
    await page.get_by_label("Image", exact=True).set_input_files(photo(64, 48))
    await page.get_by_label("Model").select_option("fake/gpt-image-1")
    await page.get_by_label("Prompt", exact=True).fill("a slow one")
    await page.get_by_role("button", name="Submit").click()
    await page.wait_for_url(re.compile(r"#/jobs/job_\w+$"))
    job_id = page.url.rsplit("/", 1)[-1]
    heading = page.get_by_role("heading", name=re.compile("Job"))
    await expect(heading).to_contain_text("running")
    await page.get_by_role("button", name="Cancel job").click()
    await expect(heading).to_contain_text("canceled")
    await expect(page.get_by_role("button", name="Retry job")).to_be_visible()
    _, job = await service.get(f"/v1/jobs/{job_id}")
    assert job["status"] == "canceled"

    await page.get_by_role("link", name="Jobs", exact=True).click()
    table = page.get_by_role("table", name="Your jobs, newest first")
    await expect(table.locator("tbody tr")).to_have_count(1)  # batch variants are not listed
    await expect(table).to_contain_text("a slow one")
    await page.get_by_label("Status").select_option("succeeded")
    await expect(page.get_by_text("No succeeded jobs.")).to_be_visible()
    await page.get_by_label("Status").select_option("canceled")
    await expect(table.locator("tbody tr")).to_have_count(1)
    assert console.errors == [] and console.uncaught == []

    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, "key-b")
    await expect(page.get_by_text("No jobs yet.")).to_be_visible()
    await page.get_by_role("link", name="Batches").click()
    await expect(page.get_by_text("No batches yet.")).to_be_visible()
    await page.goto(f"{service.base_url}/ui#/batches/{batch_id}")
    await expect(page.get_by_role("alert")).to_contain_text(f"no batch {batch_id}")
    await expect(page.locator(".grid li")).to_have_count(0)
    assert console.uncaught == []
    for text, url in console.errors:  # the browser logs the 404 it was sent
        assert "404" in text and url.endswith(f"/v1/batches/{batch_id}"), (text, url)
    await context.close()


async def test_a_wrong_key_is_refused_and_the_queue_page_shows_the_lanes(
    api_only: RunningService, browser: Browser
) -> None:
    page = await browser.new_page()
    console = Console(page)
    await page.goto(f"{api_only.base_url}/ui#/queue")
    await page.get_by_label("API key").fill("not-a-key")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("That API key was not accepted.")
    assert await page.evaluate("() => sessionStorage.length") == 0
    await sign_in(page, "key-a", lands_on="Queue")
    lanes = page.get_by_role("table", name="Lanes")
    await expect(lanes).to_contain_text("interactive")
    await expect(lanes).to_contain_text("none")
    await expect(page.get_by_role("table", name="Upstreams")).to_contain_text("fake")
    assert console.uncaught == []
    assert all("401" in text for text, _ in console.errors), console.errors
    await page.close()


async def test_the_event_stream_parser_and_the_eta_in_the_browser(
    api_only: RunningService, browser: Browser
) -> None:
    page = await browser.new_page()
    await page.goto(f"{api_only.base_url}/ui")
    events = await page.evaluate(
        r"""async () => {
            const { sseParser } = await import("/ui/sse.js");
            const seen = [];
            const feed = sseParser((event) => seen.push(event));
            const text = ": hi\r\nid: 1-0\r\nevent: job.running\r\ndata: {\"a\":\r\n" +
                "data: 1}\r\n\r\ndata:plain\rid: 2-0\r\r" + "event: job.done\ndata: x";
            for (const chunk of text.match(/.{1,3}/gs)) feed(chunk);
            return seen;
        }"""
    )
    assert events == [
        {"event": "job.running", "data": '{"a":\n1}', "id": "1-0"},
        {"event": "message", "data": "plain", "id": "2-0"},
    ]
    eta = await page.evaluate(
        """async () => {
            const { eta, span } = await import("/ui/format.js");
            const counts = { queued: 4, running: 2, succeeded: 3, failed: 1, canceled: 0 };
            const batch = { status: "running", created_at: 1000, total: 10, counts };
            return [eta(batch, 1040), eta({ ...batch, status: "completed" }, 1040), span(125)];
        }"""
    )
    assert eta == [60, None, "2 min 5 s"]
    await page.close()


async def test_without_event_streams_the_pages_poll_instead(
    ui_service: RunningService, fake_upstream: FakeUpstream, browser: Browser
) -> None:
    service = ui_service
    page = await browser.new_page()
    page.set_default_timeout(WAIT_MS)
    console = Console(page)
    await page.route(
        re.compile(r"/events(\?.*)?$"),
        lambda route: route.fulfill(status=404, json={"error": {"message": "no such endpoint"}}),
    )
    fake_upstream.latency_s = 0.3
    defaults = {"model": "fake/gpt-image-1", "prompt": "p", "images": [photo_url()]}
    status, batch = await service.post("/v1/batches", body={"defaults": defaults, "n": 3})
    assert status == 202, batch
    await page.goto(f"{service.base_url}/ui#/batches/{batch['id']}")
    await sign_in(page, "key-a", lands_on="Batch")
    await expect(page.locator(".grid li.tile-succeeded img")).to_have_count(3)
    await expect(page.get_by_role("heading", name=re.compile("Batch"))).to_contain_text("completed")

    fake_upstream.latency_s = 60
    status, job, _ = await service.submit(model="fake/gpt-image-1", prompt="slow")
    assert status == 202, job
    await page.goto(f"{service.base_url}/ui#/jobs/{job['id']}")
    heading = page.get_by_role("heading", name=re.compile("Job"))
    await expect(heading).to_contain_text("running")
    assert (await service.post(f"/v1/jobs/{job['id']}/cancel"))[0] == 200
    await expect(heading).to_contain_text("canceled")
    assert console.uncaught == []
    for text, url in console.errors:
        assert "404" in text and "/events" in url, (text, url)
    await page.close()


FOLLOW_WITH_EVENTSOURCE = """(url) => new Promise((resolve) => {
    const names = [];
    let opens = 0;
    const source = new EventSource(url);
    for (const name of ["job.queued", "job.running", "job.succeeded", "job.failed"]) {
        source.addEventListener(name, () => names.push(name));
    }
    source.onopen = () => { opens += 1; };
    source.onerror = () => {
        if (source.readyState === EventSource.CLOSED) resolve({ names, opens, closed: true });
    };
    setTimeout(() => resolve({ names, opens, closed: false }), 20000);
})"""


async def test_a_browser_eventsource_follows_a_job_by_its_stream_url_and_stops(
    ui_service: RunningService, fake_upstream: FakeUpstream, browser: Browser
) -> None:
    """The browser's own EventSource (which sends no key) follows a job through its
    signed stream URL; after the last event its reconnect is answered 204 and it closes
    instead of reconnecting forever. A token for another job opens nothing."""
    fake_upstream.latency_s = 1.0
    _, job, _ = await ui_service.submit(model="fake/gpt-image-1")
    status, minted = await ui_service.post(f"/v1/jobs/{job['id']}/events/url")
    assert status == 200, minted
    _, other, _ = await ui_service.submit(model="fake/gpt-image-1")
    page = await browser.new_page()
    await page.goto(ui_service.url("/ui"))
    followed = await page.evaluate(FOLLOW_WITH_EVENTSOURCE, ui_service.url(minted["url"]))
    assert followed == {
        "names": ["job.queued", "job.running", "job.succeeded"],
        "opens": 1,  # the reconnect after the end got 204: no second stream
        "closed": True,
    }
    wrong = minted["url"].replace(job["id"], other["id"])
    refused = await page.evaluate(FOLLOW_WITH_EVENTSOURCE, ui_service.url(wrong))
    assert refused == {"names": [], "opens": 0, "closed": True}  # a 401 ends it at once
