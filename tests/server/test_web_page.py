"""The web page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a real
server: the key, a digits job with its live progress bar, the gallery after a reload, and "reuse these settings"."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_native_api import wait_done

CHROMIUM = "/usr/bin/chromium"
# No background connections: this machine's closed network refuses them (and CI's need not allow them either).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MARKUP_PROMPT = '<b>bold</b> <img src=x onerror="window.injected = 1">'
# Every value the progress bar takes, recorded in the page as it changes.
RECORD_PROGRESS = """() => {
    const bar = document.getElementById("progress");
    window.progressSeen = [];
    new MutationObserver(() => window.progressSeen.push([bar.value, bar.max])).observe(bar, {attributes: true});
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def test_the_page_generates_with_live_progress_and_reuses_settings_from_the_gallery(server, browser) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    page.set_default_timeout(20_000)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url)
    expect(page.get_by_role("status")).to_have_text("This server needs an API key: enter it above.")
    page.get_by_label("API key").fill(server.api_key)
    page.get_by_role("button", name="Use key").click()
    expect(page.get_by_label("Recipe")).to_have_value("digits")
    expect(page.get_by_label("Steps")).to_have_attribute("placeholder", "15")  # the recipe's default

    page.get_by_label("Prompt", exact=True).fill("7")
    page.get_by_label("Steps").fill("150")  # the most allowed: about a second, several progress events
    page.get_by_label("Seed").fill("4242")
    page.evaluate(RECORD_PROGRESS)
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("status")).to_have_text("Done", timeout=60_000)
    result = page.locator("#result img")
    expect(result).to_have_count(1)
    expect(result).to_have_attribute("alt", "7")
    assert result.evaluate("image => image.complete && [image.naturalWidth, image.naturalHeight]") == [256, 256]
    progress = page.evaluate("window.progressSeen")
    assert any(0 < value < maximum for value, maximum in progress), progress  # it moved while the job ran
    assert progress[-1] == [1, 1], progress

    # A job with markup in its prompt, a negative prompt and a LoRA, submitted by another client.
    with server.client() as client:
        other = client.post("/v1/jobs", json={"prompt": MARKUP_PROMPT, "negative_prompt": "blurry", "recipe": "sd15",
                                              "width": 64, "height": 64, "num_inference_steps": 2, "seed": 99,
                                              "loras": ["sd15_peft:0.5"]})
        assert other.status_code == 202, other.text
        assert wait_done(client, other.json()["id"])["state"] == "done"

    page.reload()  # the key stays in the browser; the gallery lists both jobs, newest first
    digits_job = page.get_by_role("listitem").filter(has_text="Seed: 4242,")
    marked_up_job = page.get_by_role("listitem").filter(has_text="Seed: 99,")
    expect(digits_job.locator("img")).to_have_count(1)
    expect(digits_job.locator("pre")).to_contain_text("Steps: 150")
    expect(marked_up_job.locator("pre")).to_contain_text(MARKUP_PROMPT)  # shown as text, never run as markup
    assert page.locator("#gallery b").count() == 0 and page.evaluate("window.injected") is None

    for field, value in (("Prompt", "changed"), ("Steps", "3"), ("Seed", "1")):
        page.get_by_label(field, exact=True).fill(value)
    page.get_by_label("Recipe").select_option("sd15")
    digits_job.get_by_role("button", name="Reuse these settings").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("7")
    expect(page.get_by_label("Recipe")).to_have_value("digits")
    expect(page.get_by_label("Steps")).to_have_value("150")
    expect(page.get_by_label("Seed")).to_have_value("4242")
    expect(page.get_by_label("Width")).to_have_value("256")

    marked_up_job.get_by_role("button", name="Reuse these settings").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(MARKUP_PROMPT)
    expect(page.get_by_label("Negative prompt")).to_have_value("blurry")
    expect(page.get_by_label("LoRAs")).to_have_value("sd15_peft:0.5")
    expect(page.get_by_label("Recipe")).to_have_value("sd15")
    assert errors == []


def test_the_page_and_its_files_are_public_and_forbid_inline_scripts(server) -> None:
    import httpx

    page = httpx.get(server.url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{server.url}/web/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{server.url}/web/index.html").status_code == 404  # only the listed assets
    assert httpx.get(f"{server.url}/web/..%2Fweb.py").status_code == 404
