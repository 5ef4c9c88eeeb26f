"""The web page end to end in a real headless browser: Debian's chromium and chromedriver (CI installs them
with apt-get; no browser download), driven by Selenium, against ``guardkit serve``'s app on uvicorn."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guardkit.serve import ServeSettings, create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
EPS_255 = 4  # strength "low"


@pytest.fixture(scope="module")
def server_url():
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServeSettings(face_models=("dlib",), time_limit_s=240))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.1)
    assert app.state.pool.wait_started(120)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install Debian's browser with "
                    f"`apt-get install -y chromium chromium-driver` (.ci/run does)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager download a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1500", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def keep_artefact(path: Path) -> None:
    folder = os.environ.get("GUARDKIT_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {seconds:g} s waiting for {what}")


def test_protect_a_photo_from_the_page(server_url, browser, faces_dir, tmp_path):
    from selenium.webdriver.common.by import By

    source = faces_dir / "obama_small.jpg"
    browser.get(server_url + "/")
    assert "Protect a photo" in browser.title + browser.find_element(By.TAG_NAME, "h1").text
    browser.find_element(By.ID, "file").send_keys(str(source))
    assert "obama_small.jpg" in browser.find_element(By.ID, "drop-text").text
    browser.find_element(By.CSS_SELECTOR, "#more summary").click()
    browser.find_element(By.ID, "steps").send_keys("2")
    browser.find_element(By.ID, "protect").click()

    status = browser.find_element(By.ID, "status")
    error = browser.find_element(By.ID, "error")
    wait_for(lambda: status.text == "Done." or error.is_displayed(), 240, "the page to protect and verify")
    assert not error.is_displayed(), error.text
    rows = browser.find_elements(By.CSS_SELECTOR, "#verify-table tbody tr")
    assert rows and all(r.find_elements(By.TAG_NAME, "td")[0].text == "dlib" for r in rows)
    assert {r.find_elements(By.TAG_NAME, "td")[1].text for r in rows} == {"its own", "ArcFace template"}
    assert browser.find_element(By.ID, "after").get_attribute("naturalWidth") == "320"
    # two steps leave the face matched: the page names the next stronger preset, as guardkit run does
    assert 'the "mid" strength (8/255) protects more' in browser.find_element(By.ID, "advice").text

    browser.find_element(By.ID, "toggle").click()  # before / after
    assert browser.find_element(By.ID, "slider").get_attribute("value") == "100"
    browser.execute_script("document.getElementById('result').scrollIntoView()")
    screenshot = tmp_path / "web_page.png"
    browser.save_screenshot(str(screenshot))
    keep_artefact(screenshot)

    browser.find_element(By.ID, "download").click()
    done = wait_for(lambda: [p for p in browser.downloads.iterdir() if not p.name.endswith(".crdownload")],
                    30, "the download")
    assert [p.name for p in done] == ["obama_small.protected.png"]
    with Image.open(done[0]) as image:
        assert image.format == "PNG"
        protected = np.asarray(image.convert("RGB")).astype(int)
    with Image.open(source) as image:
        original = np.asarray(image.convert("RGB")).astype(int)
    assert protected.shape == original.shape
    assert 0 < np.abs(protected - original).max() <= EPS_255

    browser.set_window_size(390, 844)  # a phone: nothing wider than the screen
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    phone = tmp_path / "web_page_phone.png"
    browser.save_screenshot(str(phone))
    keep_artefact(phone)


def test_protect_with_a_personal_cloak_from_the_page(server_url, browser, faces_dir, tmp_path):
    """The page sends a picked .cloak with the photo: placed at the cloak's own 8/255, not the low strength's 4/255."""
    import re

    import torch
    from selenium.webdriver.common.by import By

    from guardkit.cloak import Cloak
    from guardkit.cloak_file import save_cloak

    bank = torch.full((1, 3, 64, 64), 8 / 255)
    cloak = save_cloak(Cloak(bank, eps=8 / 255, finder="mtcnn", face_models=("dlib",)), tmp_path / "me.cloak")
    browser.get(server_url + "/")
    browser.find_element(By.ID, "file").send_keys(str(faces_dir / "obama_small.jpg"))
    browser.find_element(By.CSS_SELECTOR, "#more summary").click()
    browser.find_element(By.ID, "cloak").send_keys(str(cloak))
    browser.find_element(By.ID, "protect").click()
    status = browser.find_element(By.ID, "status")
    error = browser.find_element(By.ID, "error")
    wait_for(lambda: status.text == "Done." or error.is_displayed(), 120, "the page to place the cloak")
    assert not error.is_displayed(), error.text
    change = re.search(r"largest pixel change (\d+)/255", browser.find_element(By.ID, "numbers").text)
    assert change and EPS_255 < int(change.group(1)) <= 8
