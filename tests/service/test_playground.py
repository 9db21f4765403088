"""The web playground (service/http/playground.py, service/static/) in a real browser against a real server.

Debian's `chromium` + `chromium-driver`, driven by Selenium, headless (`make test` installs them as root,
like promtool). One server and one browser for the module. Each state is saved as a screenshot under the
test's tmp_path; CHARLM_UPDATE_SCREENSHOT=1 also writes the one after a generation with probabilities
to docs/playground.png.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.serving import IN_CI, running_server

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOC_SCREENSHOT = REPO / "docs" / "playground.png"
WAIT_S = 20.0
NAMES = """return Array.from(document.querySelectorAll('#samples li')).map(li => Array.from(li.childNodes)
  .filter(n => !(n.classList && n.classList.contains('badge'))).map(n => n.textContent).join(''));"""
MARKS = "return Array.from(document.querySelectorAll('#samples li')).map(li => [li.dataset.novel, li.dataset.finish]);"
SHADES = "return [...document.querySelectorAll('#samples .tok')].map(e => e.style.getPropertyValue('--p'))"
CANCELLED = re.compile(r'^charlm_requests_cancelled_total\{[^}]*model="shakespeare-gpt"[^}]*\} (\S+)$', re.M)


def browser_binaries() -> tuple[str, str]:
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found  # type: ignore[return-value]
    message = "chromium and chromium-driver are not installed (make test installs them as root)"
    if IN_CI:
        pytest.fail(message + "; CI must have them")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], object], what: str, timeout: float = WAIT_S) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def open_page(driver, url: str) -> None:
    driver.get_log("browser")  # drop what earlier tests left
    driver.get(url)
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#models .card"), "the model cards")


def fill(driver, model: str, **fields: object) -> None:
    driver.find_element(By.CSS_SELECTOR, f"input[name=model][value='{model}']").click()
    for name, value in fields.items():
        box = driver.find_element(By.ID, name)
        box.clear()
        box.send_keys(str(value))


def text_of(driver, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def finished(driver) -> bool:
    return driver.find_element(By.ID, "generate").is_enabled()


def shot(driver, path: Path) -> None:
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))


def cancelled(server) -> float:
    return sum(float(v) for v in CANCELLED.findall(httpx.get(server.url("/metrics")).text))


def test_page_loads_with_its_models_and_no_console_errors(server, browser, tmp_path) -> None:
    open_page(browser, server.url("/"))
    assert browser.title == "charlm playground"
    cards = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#models .card")]
    assert len(cards) == 3 and any(c.startswith("names-gpt") and "test loss" in c and "params" in c for c in cards)
    # Every control has a label.
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, textarea')]"
        ".filter(e => !e.labels || !e.labels.length).map(e => e.id || e.name)"
    )
    assert unlabelled == []
    shot(browser, tmp_path / "loaded.png")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert httpx.get(server.url("/playground")).text == httpx.get(server.url("/")).text


def test_names_generate_shows_n_names(server, browser, tmp_path) -> None:
    open_page(browser, server.url("/"))
    fill(browser, "names-gpt", prompt="ka", n=6, seed=7, temperature=0.9)
    browser.find_element(By.ID, "generate").click()
    wait_for(lambda: finished(browser) and "new characters" in text_of(browser, "status"), "the generation")
    names = browser.execute_script(NAMES)
    assert len(names) == 6
    assert all(re.fullmatch(r"ka[a-z]*", name) for name in names), names
    # names-gpt carries its data's hashes: every whole name is marked new or seen in training.
    marks = browser.execute_script(MARKS)
    assert all(m in ("new", "seen") for m, finish in marks if finish == "stop") and any(m for m, _ in marks), marks
    shot(browser, tmp_path / "names.png")


def test_shakespeare_streams_and_stop_cancels_it_on_the_server(server, browser, tmp_path) -> None:
    before = cancelled(server)
    open_page(browser, server.url("/"))
    fill(browser, "shakespeare-gpt", prompt="ROMEO:", max_new_tokens=2048, n=2)
    browser.find_element(By.ID, "generate").click()
    first = wait_for(lambda: len(text_of(browser, "samples")) > 40 and len(text_of(browser, "samples")), "text")
    grown = wait_for(lambda: (n := len(text_of(browser, "samples"))) > first + 40 and n, "the text to grow")
    shot(browser, tmp_path / "streaming.png")
    assert not finished(browser), "the stream ended before Stop could be pressed"
    browser.find_element(By.ID, "stop-button").click()
    wait_for(lambda: finished(browser), "Generate to come back after Stop")
    assert text_of(browser, "status").startswith("Stopped after")
    stopped_at = len(text_of(browser, "samples"))
    assert grown <= stopped_at < 2 * 2048
    time.sleep(0.3)
    assert len(text_of(browser, "samples")) == stopped_at  # nothing arrives after Stop
    wait_for(lambda: cancelled(server) > before, "charlm_requests_cancelled_total to go up", timeout=10)
    shot(browser, tmp_path / "stopped.png")


def test_prompt_outside_the_vocabulary_shows_the_400_next_to_the_prompt(server, browser, tmp_path) -> None:
    open_page(browser, server.url("/"))
    fill(browser, "names-gpt", prompt="Ka!")
    browser.find_element(By.ID, "generate").click()
    message = wait_for(lambda: text_of(browser, "err-prompt"), "the prompt's error")
    assert "outside names-gpt's vocabulary" in message and "'K'" in message and "'!'" in message
    assert browser.find_element(By.ID, "prompt").get_attribute("aria-invalid") == "true"
    assert text_of(browser, "samples") == ""
    shot(browser, tmp_path / "bad-prompt.png")


def test_probability_shading_and_alternatives_on_hover(server, browser, tmp_path) -> None:
    open_page(browser, server.url("/"))
    fill(browser, "names-gpt", prompt="", n=8, seed=3)
    browser.find_element(By.ID, "show-probs").click()
    browser.find_element(By.ID, "generate").click()
    wait_for(lambda: finished(browser) and "new characters" in text_of(browser, "status"), "the generation")
    assert text_of(browser, "err-logprobs") == ""
    spans = browser.find_elements(By.CSS_SELECTOR, "#samples .tok")
    assert spans, "no shaded character"
    shades = [float(p) for p in browser.execute_script(SHADES)]
    assert len(shades) == len(spans) and all(0 <= p <= 1 for p in shades) and min(shades) < 0.9
    least_sure = spans[shades.index(min(shades))]
    assert least_sure.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent")
    last_row = browser.find_elements(By.CSS_SELECTOR, "#samples li:nth-child(4) .tok")  # the tip hides no sample
    ActionChains(browser).move_to_element(last_row[1]).perform()
    tip = browser.find_element(By.ID, "tip")
    wait_for(tip.is_displayed, "the hover tip")
    assert "%" in tip.text and "top:" in tip.text
    shot(browser, tmp_path / "probabilities.png")
    if os.environ.get("CHARLM_UPDATE_SCREENSHOT") == "1":
        shot(browser, DOC_SCREENSHOT)


def test_with_an_api_key_the_page_asks_for_it_and_keeps_it_for_the_tab(browser, tmp_path) -> None:
    with running_server(env={"CHARLM_API_KEY": "sesame"}) as keyed:
        assert httpx.post(keyed.url("/v1/generate"), json={"model": "names-gpt"}).status_code == 401
        open_page_with_key = keyed.url("/playground")
        browser.get_log("browser")
        browser.get(open_page_with_key)
        key_box = browser.find_element(By.ID, "api-key")
        wait_for(key_box.is_displayed, "the API key form")
        assert "API key" in text_of(browser, "err-key")
        shot(browser, tmp_path / "asks-for-key.png")
        key_box.send_keys("sesame")
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#models .card"), "the model cards")
        assert browser.execute_script("return sessionStorage.getItem('charlm-api-key')") == "sesame"
        fill(browser, "names-gpt", n=2, seed=1)
        browser.find_element(By.ID, "generate").click()
        wait_for(lambda: finished(browser) and "new characters" in text_of(browser, "status"), "the generation")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#samples li")) == 2
        browser.execute_script("sessionStorage.clear()")
