"""The playground page in a real browser: Debian's Chromium, headless, driven by Selenium through chromedriver
(installed by scripts/install-browser.sh, which `make test` runs). Saves a screenshot to .artifacts/playground.png."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request

import pytest
from conftest import GOLDEN_DATE, ROOT, local_host

from tokencounter.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = ROOT / ".artifacts" / "playground.png"

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):
        pytest.fail("chromium and chromedriver are missing: scripts/install-browser.sh installs them", pytrace=False)
    pytest.skip("chromium/chromedriver not installed (scripts/install-browser.sh)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def host():
    with local_host(Settings(date_string=GOLDEN_DATE, preload=False)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def answers(browser) -> int:
    return int(browser.execute_script("return document.body.dataset.answers || '0'"))


def wait_for_answer(browser, count: int) -> None:
    WebDriverWait(browser, 30).until(lambda b: answers(b) >= count)


def counts(browser) -> tuple[int, int, int]:
    return tuple(
        int(browser.find_element(By.ID, i).text) for i in ("prompt-tokens", "completion-tokens", "total-tokens")
    )


def api(host: str, envelope: dict) -> dict:
    request = urllib.request.Request(
        host + "/api/tokencounter", data=json.dumps(envelope).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def paste(browser, element_id: str, text: str) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def test_opens_with_the_readme_example_counted(browser, host):
    browser.get(host + "/")
    wait_for_answer(browser, 1)
    assert counts(browser) == (28, 8, 36)
    rows = [r.text.split() for r in browser.find_elements(By.CSS_SELECTOR, "#messages tbody tr")]
    assert rows[0] == ["0", "system", "6"] and rows[1] == ["1", "user", "7"]
    assert rows[2][-1] == "15"  # template overhead: 6 + 7 + 15 = 28
    spans = browser.find_elements(By.CSS_SELECTOR, "#rendered span")
    assert len(spans) == 28
    assert [s.text for s in browser.find_elements(By.CSS_SELECTOR, "#rendered span.special")][:2] == [
        "<|begin_of_text|>",
        "<|start_header_id|>",
    ]
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT)) and SCREENSHOT.stat().st_size > 10_000


def test_a_pasted_request_counts_as_the_api_counts(browser, host):
    browser.get(host + "/")
    wait_for_answer(browser, 1)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    request = {
        "messages": [
            {"role": "system", "content": "Réponds en français. 東京 🦙"},
            {"role": "user", "content": "Quel temps fait-il à Paris ?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    }
    response = {"choices": [{"message": {"role": "assistant", "content": "Il fait 18 °C."}, "finish_reason": "stop"}]}
    paste(browser, "request", json.dumps(request))
    paste(browser, "response", json.dumps(response))
    Select(browser.find_element(By.ID, "model")).select_by_visible_text("meta-llama/Llama-3.1-8B-Instruct")
    browser.find_element(By.ID, "count").click()
    wait_for_answer(browser, 2)
    expected = api(host, {"RequestBody": json.dumps({**request, "model": "meta-llama/Llama-3.1-8B-Instruct"}),
                          "ResponseBody": json.dumps(response)})["usage"]  # fmt: skip
    assert counts(browser) == (expected["prompt_tokens"], expected["completion_tokens"], expected["total_tokens"])
    assert expected["prompt_tokens"] > 100


def test_content_is_shown_as_text_never_run(browser, host):
    browser.get(host + "/")
    wait_for_answer(browser, 1)
    attack = '<img src=x onerror="document.body.dataset.pwned=1"><script>document.body.dataset.pwned=2</script>'
    paste(browser, "request", json.dumps({"model": "llama-3", "messages": [{"role": "user", "content": attack}]}))
    paste(browser, "response", "")
    browser.find_element(By.ID, "count").click()
    wait_for_answer(browser, 2)
    assert browser.find_elements(By.CSS_SELECTOR, "#rendered img, #rendered script, #messages img") == []
    assert browser.execute_script("return document.body.dataset.pwned") is None
    assert attack in browser.find_element(By.ID, "rendered").get_attribute("textContent")


def test_errors_are_shown(browser, host):
    browser.get(host + "/")
    wait_for_answer(browser, 1)
    paste(browser, "request", '{"messages": []}')
    browser.find_element(By.ID, "count").click()
    wait_for_answer(browser, 2)
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "400 invalid_field" in error.text
