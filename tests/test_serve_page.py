"""The chat page in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium): type a message, watch the reply stream in, see the speed and cached-token line, stop a
reply, start a new chat. The screenshot goes to the test's temporary folder, whose path the test
prints (``pytest -s`` shows it); ``benchmarks/serve.py --screenshot`` keeps one in the repo."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from serve_server import ServerProcess, serve

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium_flags(profile: Path) -> list[str]:
    """Headless, offline, no first-run work: nothing but the page under test touches the network."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,800",
        f"--user-data-dir={profile}",
    ]


def browser(profile: Path):
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="the page test drives Chromium with selenium"
    )
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.skip(
                f"{path} is absent: install Debian's chromium and chromium-driver to test the chat page"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in chromium_flags(profile):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def wait(what, timeout: float = 60.0, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    yield from serve()


def test_the_chat_page_streams_a_reply(server: ServerProcess, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser(tmp_path / "profile")
    try:
        driver.get(server.url + "/")
        wait(lambda: driver.find_element(By.ID, "model-name").text == "rwkvkit-default")
        driver.find_element(By.ID, "max-tokens").clear()
        driver.find_element(By.ID, "max-tokens").send_keys("300")
        # greedy: the page samples at 0.8 by default, and a sampled reply may end on its own
        # before the stop button is pressed
        driver.find_element(By.ID, "temperature").clear()
        driver.find_element(By.ID, "temperature").send_keys("0")
        box = driver.find_element(By.ID, "input")
        box.send_keys("Good morrow, sweet prince. What news?")
        driver.find_element(By.ID, "send").click()

        def reply_text() -> str:
            replies = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")
            return replies[-1].text if replies else ""

        seen = []  # the reply's text while it streams: it must grow piece by piece
        while not driver.find_element(By.ID, "send").is_enabled() or not seen:
            seen.append(reply_text())
            time.sleep(0.01)
            assert len(seen) < 100_000
        seen.append(reply_text())
        grown = [t for i, t in enumerate(seen) if t and (i == 0 or t != seen[i - 1])]
        assert len(grown) >= 3 and seen[-1].startswith(grown[0]), grown[:5]
        stats = wait(lambda: driver.find_element(By.ID, "stats").text)
        assert "tokens/s" in stats and "cached 0 of" in stats, stats

        # the second turn starts from the state the first left: the page shows the cached tokens
        box.send_keys("Speak on.")
        driver.find_element(By.ID, "send").click()
        wait(
            lambda: (
                driver.find_element(By.ID, "send").is_enabled()
                and len(driver.find_elements(By.CSS_SELECTOR, ".msg .meta")) == 2
            )
        )
        stats = driver.find_element(By.ID, "stats").text
        cached = int(stats.split("cached ")[1].split(" ")[0])
        assert cached > 40, stats
        shot = tmp_path / "serve_page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"\nchat page screenshot: {shot}")

        # stop: the reply ends where it was, the server frees the row
        driver.find_element(By.ID, "max-tokens").clear()
        driver.find_element(By.ID, "max-tokens").send_keys("4000")
        box.send_keys("Tell me a long tale.")
        driver.find_element(By.ID, "send").click()
        wait(lambda: len(reply_text()) > 5)
        driver.find_element(By.ID, "stop").click()
        try:
            wait(lambda: "stopped" in driver.find_element(By.ID, "stats").text, timeout=30)
        except AssertionError:
            raise AssertionError(f"not stopped: {driver.find_element(By.ID, 'stats').text!r}") from None
        assert server.wait_metric("rwkvkit_active_rows", 0, timeout=5) == 0

        # new chat: the conversation is gone from the page and from what the next turn sends
        driver.find_element(By.ID, "new-chat").click()
        assert driver.find_elements(By.CSS_SELECTOR, ".msg") == []
        box.send_keys("Hello")
        driver.find_element(By.ID, "send").click()
        wait(
            lambda: (
                driver.find_element(By.ID, "send").is_enabled()
                and driver.find_elements(By.CSS_SELECTOR, ".msg .meta")
            )
        )
        assert len(driver.find_elements(By.CSS_SELECTOR, ".msg")) == 2
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
