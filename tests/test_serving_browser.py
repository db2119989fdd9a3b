"""The web page at / in a real headless Chromium (Debian's chromium + chromedriver through Selenium) against
``serve.py --demo`` with the fixture models: type a prompt and get the reference image; upload an image, ask, and
read the reference answer as it streams in.

Chromium is required under CI (.ci/run installs it); on a developer machine without it the tests skip."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from serving_helpers import ServerProcess, png_array

PROMPT = "a portrait of young girl."


def _browser_paths():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    msg = "headless Chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def server(fixtures_dir):
    srv = ServerProcess(fixtures_dir)
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout=60):
    return WebDriverWait(driver, timeout).until(condition)


def test_page_generates_the_reference_image(server, browser, fixtures_dir):
    browser.get(server.base_url + "/")
    _wait(browser, lambda d: "emu3-gen" in d.find_element(By.ID, "models").text)
    browser.find_element(By.ID, "prompt").send_keys(PROMPT)
    browser.find_element(By.ID, "greedy").click()
    browser.find_element(By.ID, "generate").click()
    src = _wait(browser, lambda d: d.find_element(By.ID, "result-image").get_attribute("src"))
    assert src.startswith("data:image/png;base64,")
    assert browser.find_element(By.ID, "image-status").text == "done"
    progress = browser.find_element(By.ID, "image-progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == "23"
    got = png_array(src.split(",", 1)[1])
    want = np.asarray(Image.open(fixtures_dir / "refs" / "gen_t2i_single_0.png").convert("RGB"))
    assert got.shape == want.shape
    assert np.abs(got.astype(np.int64) - want).max() <= 1


def test_page_answers_a_question_about_an_uploaded_image(server, browser, fixtures_dir):
    browser.get(server.base_url + "/")
    browser.find_element(By.ID, "chat-image").send_keys(str(fixtures_dir / "inputs" / "img_a.png"))
    browser.find_element(By.ID, "question").send_keys("Please describe the image")
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys("16")
    browser.find_element(By.ID, "ask").click()
    _wait(browser, lambda d: d.find_element(By.ID, "chat-status").text.startswith("done"))
    answer = browser.execute_script("return document.getElementById('answer').textContent")
    want = str(np.load(fixtures_dir / "refs" / "gen_vqa_single.npz")["answers_skip_special"][0])
    assert answer == want
