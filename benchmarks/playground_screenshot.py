"""The playground page in headless Chromium: type a sentence key by key, count the keys, screenshot.

Starts the real server (``python -m service serve``) on ``--bundle`` on a free loopback port,
opens the page (``GET /``) in headless Chromium (Debian's ``chromium`` and ``chromium-driver``
through Selenium, the driver named by path so that Selenium Manager never runs), and types the
sentence on the page under benchmarks/keystrokes.py's typing model, with the page's own keys:

* Before each letter of a word the script waits until both bars show suggestions for the text
  typed so far. If the phrase bar offers the sentence's next words (a phrase of the page's
  phrase length, words with no punctuation between them), ``Alt+Shift+n`` accepts the n-th
  phrase; else if the word bar offers the word (equal, case included), ``Tab`` accepts the first
  or ``Alt+n`` the n-th. Either is one key, and the page appends a space. Else the letter is
  typed (one key).
* Punctuation before or after a word is typed. After an accept the page drops its automatic
  space before ``. , ; : ! ? ) ] } %``; before any other punctuation the script presses Backspace
  (a key). A space costs a key unless an accept inserted it.

Keys pressed are compared with the sentence's characters (the keys without suggestions). The
screenshot shows the page after the sentence, probabilities on. Writes ``--out`` and
``benchmarks/results/playground.json`` (keys, date, machine, commit, bundle).

    python benchmarks/playground_screenshot.py --bundle bundles/default
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.http_latency import free_port, wait_ready  # noqa: E402  (a script)
from benchmarks.keystrokes import units  # noqa: E402
from benchmarks.runinfo import RESULTS, run_info, write_result  # noqa: E402

SENTENCE = (
    "The album was released in the United States in 2004, and it reached number one on the "
    "Billboard chart."
)
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CLOSING = ".,;:!?)]}%"
"""Typed right after an accepted suggestion, these take the place of its space (the page's
``CLOSING``, service/static/playground.js)."""
WAIT_S = 10.0


# -- the server and the browser (tests/test_playground.py uses these too) ----------------------


@contextmanager
def serve(bundle: Path, log: Path | None = None) -> Iterator[str]:
    """A real server process on ``bundle``; yields its base URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "service", "serve", "--bundle", str(bundle)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with open(log or os.devnull, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
        try:
            wait_ready(port, "/readyz", process, timeout_s=120)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.kill()
            process.wait(timeout=10)


def chromium_paths() -> tuple[str | None, str | None]:
    """The browser and its driver as installed (Debian: chromium, chromium-driver)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = str(CHROMEDRIVER) if CHROMEDRIVER.is_file() else shutil.which("chromedriver")
    return browser, driver


def start_chromium(browser: str, driver: str, width: int, height: int) -> Any:
    """Headless Chromium under Selenium with a ``width`` x ``height`` viewport, the driver at
    ``driver`` (no Selenium Manager)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chromium = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    # The window's size includes its frame, even headless: grow it by the difference.
    frame = chromium.execute_script("return [outerWidth - innerWidth, outerHeight - innerHeight]")
    chromium.set_window_size(width + frame[0], height + frame[1])
    return chromium


def bar(driver: Any, row: str) -> tuple[str | None, list[str]]:
    """The text a bar's suggestions are for (None before the first), and the suggestions
    (with probabilities hidden)."""
    state = driver.execute_script(
        "const row = document.getElementById(arguments[0]);"
        "return [row.dataset.for ?? null, Array.from(row.querySelectorAll('button'),"
        " (b) => b.textContent)];",
        row,
    )
    return state[0], list(state[1])


def wait_for(driver: Any, row: str, text: str, *, nonempty: bool = True) -> list[str]:
    """The bar's suggestions once they are for ``text`` (and, with ``nonempty``, not empty)."""
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(driver: Any) -> list[str] | None:
        shown_for, suggestions = bar(driver, row)
        return suggestions if shown_for == text and (suggestions or not nonempty) else None

    def done(driver: Any) -> tuple[list[str]] | None:  # a true value even when empty
        suggestions = ready(driver)
        return None if suggestions is None else (suggestions,)

    return list(WebDriverWait(driver, WAIT_S, poll_frequency=0.01).until(done)[0])


def value(driver: Any) -> str:
    return str(driver.execute_script("return document.getElementById('text').value"))


# -- typing the sentence -----------------------------------------------------------------------


class Typist:
    """Types on the page and counts every key it presses, by kind."""

    def __init__(self, driver: Any) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.text = driver.find_element(By.ID, "text")
        self.keys = {"letters": 0, "other_characters": 0, "word_accepts": 0, "phrase_accepts": 0}
        self.keys["backspaces"] = 0
        self.pressed: list[str] = []  # every key, in order: a character or [Tab], [Alt+2], ...

    def type(self, chars: str) -> None:
        for char in chars:
            self.text.send_keys(char)
            self.keys["letters" if char.isalnum() else "other_characters"] += 1
            self.pressed.append(char)

    def accept(self, row: str, index: int) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        if row == "words" and index == 0:
            self.text.send_keys(Keys.TAB)
            self.pressed.append("[Tab]")
        else:
            self.pressed.append(f"[Alt+{'Shift+' if row == 'phrases' else ''}{index + 1}]")
            chord = ActionChains(self.driver).key_down(Keys.ALT)
            if row == "phrases":
                chord = chord.key_down(Keys.SHIFT)
            chord = chord.send_keys(str(index + 1))
            if row == "phrases":
                chord = chord.key_up(Keys.SHIFT)
            chord.key_up(Keys.ALT).perform()
        self.keys["word_accepts" if row == "words" else "phrase_accepts"] += 1

    def backspace(self) -> None:
        from selenium.webdriver.common.keys import Keys

        self.text.send_keys(Keys.BACKSPACE)
        self.keys["backspaces"] += 1
        self.pressed.append("[Backspace]")

    def setting(self, name: str) -> str:
        return str(self.driver.execute_script(f"return document.getElementById('{name}').value"))

    def bars(self) -> tuple[list[str], list[str]]:
        typed = value(self.driver)
        words = wait_for(self.driver, "words", typed, nonempty=False)
        return words, wait_for(self.driver, "phrases", typed, nonempty=False)


def type_sentence(typist: Typist, sentence: str, phrase_words: int) -> None:
    """Type ``sentence`` under the typing model of the module docstring."""
    pieces = units(sentence)
    j = 0
    while j < len(pieces):
        unit = pieces[j]
        typist.type(unit.lead)
        end, picked = j, False
        for i in range(len(unit.word)):
            words, phrases = typist.bars()
            ahead = _phrase_ahead(pieces, j, phrase_words)
            if ahead in phrases:
                typist.accept("phrases", phrases.index(ahead))
                end, picked = j + len(ahead.split(" ")) - 1, True
                break
            if unit.word in words:
                typist.accept("words", words.index(unit.word))
                picked = True
                break
            typist.type(unit.word[i])
        tail = pieces[end].tail
        if picked and tail and tail[0] not in CLOSING:
            typist.backspace()  # the automatic space stays before other punctuation
        typist.type(tail)
        last = end == len(pieces) - 1
        if not last and (tail or not picked):
            typist.type(" ")
        j = end + 1


def _phrase_ahead(pieces: list[Any], j: int, words: int) -> str | None:
    """The sentence's next ``words`` words from unit ``j`` when no punctuation parts them."""
    if words < 2 or j + words > len(pieces):
        return None
    run = pieces[j : j + words]
    parted = any(u.tail for u in run[:-1]) or any(u.lead for u in run[1:])
    if parted or not all(u.word for u in run):
        return None
    return " ".join(u.word for u in run)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bundle", type=Path, default=ROOT / "bundles" / "default",
        help="bundle directory to serve (default: bundles/default)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "playground.png",
        help="where to write the screenshot (default: benchmarks/results/playground.png)",
    )  # fmt: skip
    parser.add_argument("--sentence", default=SENTENCE, help="the sentence to type")
    parser.add_argument("--width", type=int, default=1000, help="window width (default: 1000)")
    parser.add_argument("--height", type=int, default=700, help="window height (default: 700)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    browser, driver_path = chromium_paths()
    if browser is None or driver_path is None:
        print("error: install Debian's chromium and chromium-driver", file=sys.stderr)
        return 2
    from selenium.webdriver.common.by import By

    info = run_info()
    with serve(args.bundle) as url:
        driver = start_chromium(browser, driver_path, args.width, args.height)
        try:
            driver.get(url + "/")
            typist = Typist(driver)
            phrase_words = int(typist.setting("phrase-words"))
            wait_for(driver, "words", "")
            type_sentence(typist, args.sentence, phrase_words)
            typed = value(driver)
            assert typed.rstrip(" ") == args.sentence, (typed, args.sentence)
            driver.find_element(By.ID, "show-prob").click()
            typist.bars()
            status = driver.find_element(By.ID, "status").text
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
            budget = typist.setting("budget")
            settings = {
                "k": int(typist.setting("k")),
                "phrase_words": phrase_words,
                "min_prob": float(typist.setting("min-prob")),
                "budget_ms": float(budget) if budget else "the server's default",
            }
        finally:
            driver.quit()
    keys = sum(typist.keys.values())
    out = args.out.resolve()
    manifest = json.loads((args.bundle / "manifest.json").read_text(encoding="utf-8"))
    payload = {
        "benchmark": "playground",
        **info,
        "bundle": {"path": str(args.bundle), "name": manifest["name"]},
        "browser": subprocess.run(
            [browser, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "page_settings": settings,
        "typing_model": __doc__.split("\n\n")[2],
        "sentence": args.sentence,
        "characters": len(args.sentence),
        "keys": keys,
        "keys_by_kind": typist.keys,
        "keys_pressed": " ".join(typist.pressed),
        "keystroke_savings": round(1 - keys / len(args.sentence), 4),
        "last_status_line": status,
        "screenshot": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out),
    }
    path = write_result("playground", payload)
    saved = payload["keystroke_savings"]
    print(f"{keys} keys for {len(args.sentence)} characters ({saved:.1%} saved)")
    print(f"keys by kind: {typist.keys}")
    print(f"wrote {args.out} and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
