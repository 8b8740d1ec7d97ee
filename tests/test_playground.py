"""The playground page (service/playground.py, service/static/), served and used in a browser.

The plain test reads the three files over HTTP (no model needed: the routes answer before the
lifespan loads one). The browser test runs the real server (``python -m service serve``) on the
tiny bundle and headless Chromium through Selenium with Debian's chromedriver, named by path so
that Selenium Manager never runs (nothing is downloaded). It types key by key and checks what a
person would see: suggestions that follow the text, Tab and Alt+2 accepting a word, a click
accepting a phrase, the automatic space dropped before a full stop, and an API error in the
error line. Without Chromium, chromedriver or selenium it skips with the reason; under
``CI=true`` it fails instead.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from benchmarks.playground_screenshot import (
    WAIT_S,
    bar,
    chromium_paths,
    serve,
    start_chromium,
    value,
    wait_for,
)
from service.app import create_app
from service.settings import Settings


def test_the_page_and_its_files_are_served(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(bundle=tmp_path)))  # no lifespan: no model needed
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<textarea id="text"' in page.text
    assert 'src="playground.js"' in page.text
    assert 'href="playground.css"' in page.text
    script = client.get("/playground.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert '"v1/suggest"' in script.text
    style = client.get("/playground.css")
    assert style.status_code == 200
    assert style.headers["content-type"] == "text/css; charset=utf-8"
    for body in (page.text, script.text, style.text):  # self-contained: no CDN, no web font
        assert not re.search(r"https?://|//cdn|@import|url\(", body)
    assert "/" not in client.get("/openapi.json").json()["paths"]


# -- in a browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a real server process on the tiny bundle."""
    log = tmp_path_factory.mktemp("playground") / "server.log"
    try:
        with serve(tiny_bundle, log) as url:
            yield url
    except RuntimeError as exc:  # it did not start: show why
        pytest.fail(f"{exc}: {log.read_text()}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium; skips (fails under CI=true) where it or its driver is missing."""
    binary, driver = chromium_paths()
    missing = [name for name, path in (("chromium", binary), ("chromedriver", driver)) if not path]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package")
    if missing:
        reason = (
            f"no {', '.join(missing)}: the playground's browser test needs Debian's chromium "
            "and chromium-driver and the dev extra (pip install -e '.[dev]')"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI it must run")
        pytest.skip(reason)
    assert binary is not None
    assert driver is not None
    chromium = start_chromium(binary, driver, 1000, 800)
    try:
        yield chromium
    finally:
        chromium.quit()


def _type(element: Any, text: str) -> None:
    for char in text:
        element.send_keys(char)


def _post_suggest(server: str, body: dict[str, Any]) -> dict[str, Any]:
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"content-type": "application/json"}
    connection.request("POST", "/v1/suggest", json.dumps(body), headers)
    payload: dict[str, Any] = json.loads(connection.getresponse().read())
    return payload


@pytest.mark.slow
def test_typing_in_a_browser_shows_and_accepts_suggestions(browser: Any, server: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    text = browser.find_element(By.ID, "text")
    first = wait_for(browser, "words", "")  # the page asks for the empty text when it opens

    _type(text, "The game ")
    next_words = wait_for(browser, "words", "The game ")
    assert next_words != first
    assert wait_for(browser, "phrases", "The game ")
    _type(text, "w")
    completions = wait_for(browser, "words", "The game w")
    assert completions != next_words
    assert all(s.casefold().startswith("w") for s in completions), completions
    status = browser.find_element(By.ID, "status").text
    assert re.search(r"words: \d+\.\d\d ms on the server .*, (exact|not exact)", status), status

    text.send_keys(Keys.TAB)  # the first completion replaces the partly typed "w"
    assert value(browser) == f"The game {completions[0]} "
    context = value(browser)
    offered = wait_for(browser, "words", context)
    ActionChains(browser).key_down(Keys.ALT).send_keys("2").key_up(Keys.ALT).perform()
    assert value(browser) == f"{context}{offered[1]} "
    text.send_keys(".")  # takes the place of the automatic space
    assert value(browser) == f"{context}{offered[1]}."
    _type(text, " ")
    context = value(browser)
    phrases = wait_for(browser, "phrases", context)
    assert any(" " in phrase for phrase in phrases), phrases
    browser.find_element(By.CSS_SELECTOR, "#phrases button").click()
    assert value(browser) == f"{context}{phrases[0]} "
    assert browser.switch_to.active_element == text  # a click keeps the focus in the text
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # no script error, no request the page's CSP refused

    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("0")
    expected = _post_suggest(server, {"text": value(browser), "k": 0})["error"]
    error_line = browser.find_element(By.ID, "error")
    WebDriverWait(browser, WAIT_S, poll_frequency=0.02).until(lambda _: error_line.is_displayed())
    assert error_line.text == f"422 {expected['code']}: {expected['message']}"
    assert bar(browser, "words") == (None, [])  # what it showed was for an older text
    k.send_keys(Keys.BACKSPACE, "3")
    WebDriverWait(browser, WAIT_S, poll_frequency=0.02).until(
        lambda _: not error_line.is_displayed()
    )
