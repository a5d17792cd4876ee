"""The web page at GET / in a real browser: Debian's headless Chromium driven by Playwright.

The service runs the bundled demo checkpoint (trained on synthetic data only). These tests
check the page, not the model: the label the page shows is the service's, pinned here with
DFM_THRESHOLD=0 (every window with a face is FAKE); the demo model's accuracy is in its own
report. The browser starts with the flags that keep it off the network, and every request
the page makes must go to the service itself.
Screenshots go to the test's folder, or to DFM_TEST_SCREENSHOTS_DIR when set (the pictures in
docs/service.md are made that way).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import synthetic_clip
from tests.servers import RtspServer, Service, wait_until

CHROMIUM = "/usr/bin/chromium"
OFFLINE_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
DEMO = {"DFM_RANDOM_WEIGHTS": "false", "DFM_SINK": "none", "DFM_THRESHOLD": "0"}
LIVE = {**DEMO, "DFM_FPS": "10", "DFM_WINDOW_FRAMES": "20", "DFM_HOP_FRAMES": "10"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: run 'make setup' (Debian chromium)"
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=OFFLINE_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service(DEMO, tmp_path_factory.mktemp("web")) as svc:
        yield svc


def open_page(browser: Browser, svc: Service, width: int = 1000) -> tuple[Page, list[str]]:
    page = browser.new_page(viewport={"width": width, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"http://127.0.0.1:{svc.port}/")
    page.wait_for_function("document.getElementById('model-info').textContent.length > 0")
    return page, requests


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 300
    # Not blank: many colours and real contrast.
    colours = len(np.unique(image.reshape(-1, 3)[::7], axis=0))
    assert colours > 30 and float(image.std()) > 15, f"{name}: the screenshot looks blank"
    target = os.environ.get("DFM_TEST_SCREENSHOTS_DIR")
    if target:
        shutil.copyfile(path, Path(target) / path.name)
    return path


def only_local(requests: list[str], svc: Service) -> None:
    origin = f"http://127.0.0.1:{svc.port}/"
    # data: and the page's own blob: URLs (pictures fetched with the token) stay local.
    foreign = [u for u in requests if not u.startswith((origin, "data:", f"blob:{origin}"))]
    assert not foreign, f"the page reached outside the service: {foreign}"


def test_upload_of_a_fake_clip_shows_fake_and_one_point_per_window(
    browser, service, synth_clips, tmp_path
):
    page, requests = open_page(browser, service)
    assert "synthetic" in page.locator("#model-info").inner_text().lower()
    page.set_input_files("#file", str(synth_clips / "00003_fake_astronaut.mp4"))
    page.click("#upload-button")
    page.wait_for_selector("#overall.fake, #overall.real, #overall.noface", timeout=120_000)
    assert page.locator("#overall").inner_text() == "FAKE"
    # 180 frames at 30 fps, windows of 150 every 30: two windows, two points.
    assert page.locator("#timeline circle.point").count() == 2
    assert page.locator("#timeline line.threshold").count() == 1
    # A labelled time axis that starts where the first window ends (about 5 s in), not at
    # 0 with nothing before it, and ends at the last window's end (about 6 s).
    ticks = [float(t.removesuffix(" s"))
             for t in page.locator("#timeline text.tick").all_text_contents()]  # fmt: skip
    assert len(ticks) >= 3 and 4.9 <= ticks[0] <= 5.2 and 5.7 <= ticks[-1] <= 6.0, ticks
    first_x = float(page.locator("#timeline circle.point").first.get_attribute("cx") or -1)
    assert first_x == 24  # the left edge of the plot
    assert page.locator("#crops img").count() == 8
    page.wait_for_selector("#heatmap:not([hidden])")
    assert page.locator("#upload-error").is_hidden()
    screenshot(page, tmp_path, "upload")
    only_local(requests, service)
    page.close()


def test_upload_of_a_text_file_shows_a_readable_error(browser, service, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a video\n" * 50)
    page, _ = open_page(browser, service)
    page.set_input_files("#file", str(notes))
    page.click("#upload-button")
    error = page.locator("#upload-error")
    error.wait_for(state="visible", timeout=30_000)
    assert error.inner_text().startswith("Not a video:")
    assert "notes.txt" in error.inner_text() and "MP4" in error.inner_text()
    assert page.locator("#result").is_hidden()
    screenshot(page, tmp_path, "upload-error")
    page.close()


def test_page_is_usable_at_phone_width_and_by_keyboard(browser, service, tmp_path):
    page, _ = open_page(browser, service, width=375)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a 375px screen"
    # Tab order reaches the view switch, and Enter on it shows the live view.
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "tab-live":
            break
    assert page.evaluate("document.activeElement.id") == "tab-live"
    page.keyboard.press("Enter")
    page.locator("#view-live").wait_for(state="visible")
    screenshot(page, tmp_path, "phone")
    page.close()


def test_live_view_adds_an_rtsp_stream_and_its_sparkline_grows(browser, live_clip, tmp_path):
    with RtspServer({"cam": live_clip}) as rtsp, Service(LIVE, tmp_path) as svc:
        page, requests = open_page(browser, svc)
        page.click("#tab-live")
        page.fill("#stream-id", "bad id!")
        page.fill("#stream-url", rtsp.url("cam"))
        page.click("#add-form button[type=submit]")
        assert "stream id" in page.locator("#add-error").inner_text()
        page.fill("#stream-id", "cam-1")
        page.fill("#stream-url", "http://example.invalid/cam")
        page.click("#add-form button[type=submit]")
        assert "rtsp://" in page.locator("#add-error").inner_text()
        page.fill("#stream-url", rtsp.url("cam"))
        page.click("#add-form button[type=submit]")
        card = page.locator('li.stream[data-id="cam-1"]')
        card.wait_for(timeout=30_000)
        spark = card.locator("svg.sparkline")

        def points() -> int:
            return int(spark.get_attribute("data-points") or 0)

        wait_until(lambda: points() >= 2, 60, "two points in the sparkline")
        first = points()
        wait_until(lambda: points() > first, 30, "the sparkline to grow")
        assert card.locator(".state").inner_text() == "running"
        assert card.locator(".stream-label").inner_text().split()[0] in {"REAL", "FAKE"}
        assert card.locator("svg.sparkline polyline").count() == 1
        # Threshold 0: the stream is FAKE, and its card shows the evidence sheet (crops
        # over heat maps), fetched from the service with the page's token handling.
        sheet = card.locator("figure.evidence img")
        sheet.wait_for(state="visible", timeout=30_000)
        wait_until(lambda: sheet.evaluate("i => i.complete && i.naturalWidth") == 8 * 112,
                   20, "the evidence sheet to load")  # fmt: skip
        record = svc.client.get("/v1/streams/cam-1/evidence").json()["id"]
        assert record in card.locator("figure.evidence figcaption").inner_text()
        screenshot(page, tmp_path, "live")
        # The same id again: the service's reason is shown.
        page.fill("#stream-id", "cam-1")
        page.fill("#stream-url", rtsp.url("cam"))
        page.click("#add-form button[type=submit]")
        page.locator("#add-error").wait_for(state="visible")
        assert "cam-1" in page.locator("#add-error").inner_text()
        card.locator("button.remove").click()
        card.wait_for(state="detached", timeout=30_000)
        assert svc.client.get("/v1/streams").json()["streams"] == []
        only_local(requests, svc)
        page.close()


def test_page_asks_for_the_token_and_uses_it(browser, tmp_path):
    with Service({**DEMO, "DFM_API_TOKEN": "s3cret"}, tmp_path) as svc:
        assert svc.client.get("/").status_code == 200  # the page itself is public
        assert svc.client.get("/v1/info").status_code == 401
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{svc.port}/")
        page.locator("#token-box").wait_for(state="visible")
        page.fill("#token", "s3cret")
        page.click("#token-form button")
        page.wait_for_function("document.getElementById('model-info').textContent.length > 0")
        assert page.locator("#token-box").is_hidden()
        page.close()


def read_events(svc: Service, video: Path, name: str) -> list[tuple[float, dict]]:
    """POST a video to /v1/scan; each NDJSON event with the time it arrived."""
    import json
    import time

    started = time.monotonic()
    events = []
    with svc.client.stream(
        "POST", f"/v1/scan?name={name}", content=video.read_bytes(), timeout=180
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("application/x-ndjson")
        for line in response.iter_lines():
            if line.strip():
                events.append((time.monotonic() - started, json.loads(line)))
    return events


@pytest.fixture(scope="module")
def long_fake(photos_dir: Path) -> Path:
    """A 20-second FAKE clip: 16 windows of 150 frames, 30 apart."""
    return synthetic_clip(
        1, videos=2, frames=600, seed=4, size=(320, 240), identities=["astronaut", "sample3"]
    )


def test_scan_streams_each_window_before_the_scan_ends(service, long_fake):
    events = read_events(service, long_fake, "long.mp4")
    kinds = [e["event"] for _, e in events]
    assert kinds[0] == "started" and kinds[-1] == "done"
    verdicts = [e["verdict"] for _, e in events if e["event"] == "verdict"]
    assert len(verdicts) == 16 and [v["seq"] for v in verdicts] == list(range(16))
    first_verdict = next(t for t, e in events if e["event"] == "verdict")
    done_at = events[-1][0]
    # Results arrive as windows finish, not all at the end.
    assert first_verdict < done_at * 0.6, (first_verdict, done_at)
    done = events[-1][1]
    assert done["windows"] == 16 and done["frames"] == 600
    assert done["top"]["crops"] and done["top"]["heatmap"].startswith("data:image/png;base64,")
    assert "synthetic" in events[0][1]["model"]["version"]


def test_scan_rejects_bad_uploads_with_reasons(service, long_fake, tmp_path):
    empty = service.client.post("/v1/scan", content=b"")
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    text = service.client.post("/v1/scan?name=a.txt", content=b"hello " * 100)
    assert text.status_code == 415 and "a.txt is not a video" in text.json()["error"]
    # While one upload is being scanned, a second is turned away with Retry-After.
    import threading

    first = threading.Thread(target=read_events, args=(service, long_fake, "one.mp4"))
    first.start()
    try:
        wait_until(lambda: service.metric("deepfake_uploads_active") == 1, 30, "the first scan")
        busy = service.client.post("/v1/scan?name=two.mp4", content=long_fake.read_bytes())
        assert busy.status_code == 503 and "busy" in busy.json()["error"]
        assert busy.headers["retry-after"] == "30"
    finally:
        first.join(180)


def test_scan_size_limit(tmp_path, synth_clips):
    with Service({**DEMO, "DFM_SCAN_MAX_BYTES": "4096"}, tmp_path) as svc:
        video = (synth_clips / "00003_fake_astronaut.mp4").read_bytes()
        r = svc.client.post("/v1/scan?name=big.mp4", content=video)
        assert r.status_code == 413 and "DFM_SCAN_MAX_BYTES" in r.json()["error"]


def test_service_stops_promptly_while_a_page_listens(tmp_path):
    import time

    import httpx

    with Service(DEMO, tmp_path) as svc:
        url = f"http://127.0.0.1:{svc.port}/v1/events"
        with httpx.stream("GET", url, timeout=30) as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            lines = events.iter_lines()
            assert next(lines) == "retry: 3000"
            assert next(lines) == ""
            assert next(lines) == "event: streams"
            started = time.monotonic()
            assert svc.terminate(timeout=30) == 0
            assert time.monotonic() - started < 10, "an open event stream held up shutdown"


def y4m_of(clip: Path, out: Path, frames: int = 150) -> Path:
    """The clip as a Y4M file, what Chromium's fake camera plays (in a loop)."""
    import av

    with av.open(str(clip)) as src, av.open(str(out), "w", format="yuv4mpegpipe") as dst:
        stream = dst.add_stream("rawvideo", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i == frames:
                break
            small = frame.reformat(width=320, height=240, format="yuv420p")
            small.pts = None
            for packet in stream.encode(small):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return out


def test_the_page_publishes_a_camera_and_shows_its_verdicts(browser, live_clip, tmp_path):
    """Chromium's own WebRTC stack (libwebrtc) publishing a fake camera through the page."""
    camera = y4m_of(live_clip, tmp_path / "face.y4m")
    flags = [
        *OFFLINE_FLAGS,
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    ]
    # The default threshold: this test reads no label, and the picture shows a real one.
    env = {**LIVE, "DFM_THRESHOLD": "0.5", "DFM_API_TOKEN": "s3cret", "DFM_WHIP_TIMEOUT_S": "5"}
    auth = {"Authorization": "Bearer s3cret"}
    # A second Chromium from the module's Playwright, with the fake camera's flags.
    camera_browser = browser.browser_type.launch(executable_path=CHROMIUM, args=flags)
    with Service(env, tmp_path) as svc:
        page = camera_browser.new_page(viewport={"width": 1000, "height": 1100})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(f"http://127.0.0.1:{svc.port}/")
        page.fill("#token", "s3cret")
        page.click("#token-form button")
        page.click("#tab-live")
        page.click("#camera-start")
        timeline = page.locator("#camera-timeline")

        def points() -> int:
            return int(timeline.get_attribute("data-points") or 0)

        wait_until(lambda: points() >= 3, 90, "three verdicts on the camera's timeline")
        streams = svc.client.get("/v1/streams", headers=auth).json()["streams"]
        (mine,) = [s for s in streams if s["id"].startswith("camera-")]
        verdicts = svc.client.get(f"/v1/streams/{mine['id']}/verdicts", headers=auth).json()
        assert any(v["faces"] for v in verdicts["verdicts"]), verdicts
        assert mine["id"] in page.locator("#camera-status").inner_text()
        assert page.locator("#camera-timeline circle").count() >= 1
        screenshot(page, tmp_path, "camera")
        page.click("#camera-stop")
        wait_until(
            lambda: not svc.client.get("/v1/streams", headers=auth).json()["streams"],
            15,
            "the stream to end with the WHIP DELETE",
        )
        page.wait_for_function(
            "document.getElementById('camera-status').textContent.startsWith('Stopped')"
        )
        page.wait_for_timeout(1500)  # a poll in flight at Stop must not bring the old text back
        assert page.locator("#camera-status").inner_text().startswith("Stopped")
        only_local(requests, svc)
        camera_browser.close()
        assert svc.terminate() == 0
