"""The web page in a real headless Chromium, against a real `audioclf serve` process on loopback.

Needs Debian's `chromium` and `chromium-driver` and Selenium from PyPI; skipped when any is missing.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_serve import RATE, save_tiny_tone_model

from audioclf.infer import load_classifier
from audioclf.testing import class_clip, write_clip

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# What Chromium needs to run headless here (root, no GPU), and to stay off the network (loopback only, no proxy).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-proxy-server")
# The recording test: a fake microphone (a beep) that needs no permission prompt.
FAKE_MICROPHONE_FLAGS = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                         "--autoplay-policy=no-user-gesture-required")
WAIT_SECONDS = 60
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy from the environment

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_tone_model(tmp_path_factory.mktemp("browser") / "tiny-tones")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """`audioclf serve` on 127.0.0.1 and a free port; yields its base URL once /readyz answers 200."""
    port = free_port()
    log = (tmp_path_factory.mktemp("server") / "serve.log").open("w+")
    process = subprocess.Popen([sys.executable, "-m", "audioclf.cli", "serve", str(model_dir), "--host", "127.0.0.1",
                                "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"audioclf serve exited with {process.returncode}:\n{log.read()}")
            try:
                with LOOPBACK.open(url + "readyz", timeout=2) as response:
                    if json.load(response)["status"] == "ready":
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "audioclf serve did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def start_chromium(profile: Path, extra_flags: tuple[str, ...] = (), network_log: bool = False):
    """Headless Chromium; with `network_log`, its performance log records every request the pages make."""
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, *extra_flags, f"--user-data-dir={profile}", "--window-size=900,800"):
        options.add_argument(flag)
    if network_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # an explicit driver path keeps Selenium Manager from looking for (and downloading) drivers
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def upload(browser, path: Path) -> None:
    browser.find_element(By.ID, "file").send_keys(str(path))


def wait_for_text(browser, element_id: str) -> str:
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: d.find_element(By.ID, element_id).text.strip())
    return browser.find_element(By.ID, element_id).text.strip()


def test_page_shows_the_top_label_the_classifier_predicts(server, browser, model_dir, tmp_path):
    clip_path = write_clip(tmp_path / "high tone.wav", class_clip("high", 1.0, RATE, seed=11), RATE)
    want = load_classifier(model_dir).classify(clip_path, top_k=3)
    assert want[0]["label"] == "high"

    browser.get(server)
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: "tiny-tones" in d.find_element(By.ID, "model").text)
    upload(browser, clip_path)
    assert wait_for_text(browser, "top-label") == "high"
    rows = [row.text.split("\n") for row in browser.find_elements(By.CSS_SELECTOR, "#predictions li")]
    assert [row[0] for row in rows] == [p["label"] for p in want]
    assert [float(row[1]) for row in rows] == pytest.approx([p["score"] for p in want], abs=1e-3)
    assert browser.find_element(By.ID, "error").text == ""


def test_page_shows_the_api_error_for_a_text_file(server, browser, tmp_path):
    text_path = tmp_path / "notes.txt"
    text_path.write_text("this is not audio\n" * 50)

    browser.get(server)
    upload(browser, text_path)
    message = wait_for_text(browser, "error")
    assert message.startswith("notes.txt: not a readable audio file")
    assert not browser.find_element(By.ID, "results").is_displayed()

    # and a good clip after the bad one is classified again
    clip_path = write_clip(tmp_path / "low.wav", class_clip("low", 1.0, RATE, seed=12), RATE)
    upload(browser, clip_path)
    assert wait_for_text(browser, "top-label") == "low"
    assert browser.find_element(By.ID, "error").text == ""


def test_page_records_the_microphone_as_wav(server, tmp_path):
    """The page's WebAudio recorder makes a WAV the server decodes (Chromium's fake microphone plays a beep)."""
    driver = start_chromium(tmp_path / "profile", FAKE_MICROPHONE_FLAGS)
    try:
        driver.get(server)
        driver.find_element(By.ID, "record").click()
        WebDriverWait(driver, WAIT_SECONDS).until(lambda d: d.find_element(By.ID, "record").text == "Stop")
        time.sleep(1.5)
        driver.find_element(By.ID, "record").click()
        WebDriverWait(driver, WAIT_SECONDS).until(
            lambda d: d.find_element(By.ID, "top-label").text or d.find_element(By.ID, "error").text)
        assert driver.find_element(By.ID, "error").text == ""
        assert driver.find_element(By.ID, "top-label").text in ("low", "high", "noise")
        status = driver.find_element(By.ID, "status").text
        seconds = float(status.split(": ")[1].split(" s")[0])
        assert status.startswith("recording.wav: ") and 0.5 < seconds < 5
    finally:
        driver.quit()


def requested_urls(driver) -> list[str]:
    """Every URL the browser sent a request for since the last call, from Chrome's performance log (DevTools
    events): those the page's Content-Security-Policy blocked before they left are not counted."""
    events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    blocked = {event["params"]["requestId"] for event in events
               if event["method"] == "Network.loadingFailed" and event["params"].get("blockedReason")}
    return [event["params"]["request"]["url"] for event in events if event["method"] == "Network.requestWillBeSent"
            and event["params"]["requestId"] not in blocked]


def test_docs_and_redoc_render_the_api_with_no_outside_request(server, tmp_path):
    """/docs (Swagger UI) and /redoc (ReDoc) draw the classify operation from /openapi.json, every script, style and
    icon coming from the server itself."""
    driver = start_chromium(tmp_path / "profile", network_log=True)
    try:
        driver.get(server + "docs")
        WebDriverWait(driver, WAIT_SECONDS).until(
            lambda d: any("/v1/classify" in e.text for e in d.find_elements(By.CSS_SELECTOR, ".opblock-post")))
        operation = driver.find_element(By.CSS_SELECTOR, ".opblock-post")
        assert operation.text.split("\n")[:3] == ["POST", "/v1/classify", "Classify"]
        operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()  # opens it: its description and fields
        WebDriverWait(driver, WAIT_SECONDS).until(lambda d: "Classify one clip or recording" in operation.text)
        assert "top_k" in operation.text and "segments" in operation.text
        swagger = requested_urls(driver)

        driver.get(server + "redoc")
        WebDriverWait(driver, WAIT_SECONDS).until(lambda d: "/v1/classify" in d.find_element(By.TAG_NAME, "body").text)
        assert "Classify one clip or recording" in driver.find_element(By.TAG_NAME, "body").text
        redoc = requested_urls(driver)
    finally:
        driver.quit()
    for page, urls in (("docs", swagger), ("redoc", redoc)):
        assert server + "openapi.json" in urls and any(url.endswith(".js") for url in urls), (page, urls)
        # requests that leave the browser (not its own chrome:// pages, nor data: and blob: URLs) all go to the server
        outside = [url for url in urls if url.startswith(("http:", "https:", "ws:", "wss:", "ftp:"))
                   and not url.startswith(server)]
        assert outside == [], (page, outside)
