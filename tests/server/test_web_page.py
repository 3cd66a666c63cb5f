"""The web page in a real headless Chromium, driven by Playwright, against a real server: the key, a digits job with
its live progress bar, the gallery after a reload, and "reuse these settings"."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_native_api import wait_done

if TYPE_CHECKING:
    from playwright.sync_api import Playwright

BROWSER_VARIABLE = "IMAGEGEN_TEST_BROWSER"
NO_BROWSER = (f"no Chromium: install Debian's chromium, run `playwright install chromium`, or set {BROWSER_VARIABLE} "
              "to a Chromium-family executable")
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


def find_chromium(playwright: Playwright) -> str | None:
    """The browser to drive: $IMAGEGEN_TEST_BROWSER, else the one `playwright install chromium` put in Playwright's
    own folder, else a Chromium on PATH (Debian's ``chromium``, Ubuntu's ``chromium-browser``, ``google-chrome``)."""
    if chosen := os.environ.get(BROWSER_VARIABLE):
        return chosen
    if Path(playwright.chromium.executable_path).is_file():
        return playwright.chromium.executable_path
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        executable = find_chromium(playwright)
        if executable is None:
            pytest.skip(NO_BROWSER)
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.mark.slow
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
                                              "loras": ["sd15_peft:0.5"], "fast": "int8"})
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
    expect(page.locator("#fast")).to_be_hidden()  # digits takes no speed-up

    marked_up_job.get_by_role("button", name="Reuse these settings").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(MARKUP_PROMPT)
    expect(page.get_by_label("Negative prompt")).to_have_value("blurry")
    expect(page.get_by_label("LoRAs")).to_have_value("sd15_peft:0.5")
    expect(page.get_by_label("Recipe")).to_have_value("sd15")
    expect(page.get_by_label("int8")).to_be_checked()  # the speed-ups it ran with, from its infotext
    expect(page.get_by_label("tiny-vae")).not_to_be_checked()
    assert page.evaluate("requestBody().fast") == "int8"
    assert errors == []


# Every text the status line shows, with whether it was styled as an error.
RECORD_STATUS = """() => {
    const status = document.getElementById("status");
    window.statusSeen = [];
    new MutationObserver(() => window.statusSeen.push([status.textContent, status.classList.contains("error")]))
        .observe(status, {childList: true, characterData: true, subtree: true, attributes: true});
}"""


@pytest.mark.slow
def test_the_page_marks_missing_models_and_shows_refusals_as_errors(server, browser) -> None:
    from playwright.sync_api import expect

    with server.client() as client:
        ready = {recipe["name"]: recipe["ready"] for recipe in client.get("/v1/recipes").json()}
    page = browser.new_page()
    page.set_default_timeout(20_000)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url)
    page.get_by_label("API key").fill(server.api_key)
    page.get_by_role("button", name="Use key").click()
    expect(page.get_by_label("Recipe")).to_have_value("digits")
    labels = page.get_by_label("Recipe").locator("option").all_inner_texts()
    assert labels == [name if ready[name] else f"{name} (not downloaded)" for name in ready]
    assert ready["digits"] and not all(ready.values())  # the tiny cache lacks some recipes' models
    assert page.locator('link[rel="icon"]').get_attribute("href") == "/web/icon.svg"

    page.evaluate(RECORD_STATUS)
    page.get_by_label("Prompt", exact=True).fill("banana")
    page.get_by_role("button", name="Generate").click()
    status = page.get_by_role("status")
    expect(status).to_contain_text("this model knows no class 'banana'")
    expect(status).to_have_class("error")  # styled as an error, not raw JSON in an alert

    page.get_by_label("Prompt", exact=True).fill("4")
    page.get_by_role("button", name="Generate").click()
    expect(status).to_have_text("Done", timeout=60_000)
    expect(status).not_to_have_class("error")
    seen = page.evaluate("window.statusSeen")
    assert not [text for text, _ in seen if text.startswith("Step 0 of")], seen
    assert all(error for text, error in seen if "banana" in text), seen

    # A latent recipe shows live previews above the result while it runs, then only the result.
    page.evaluate("""() => {
        const preview = document.getElementById("preview");
        window.previewSources = [];
        new MutationObserver(() => { if (preview.src) window.previewSources.push(preview.src); })
            .observe(preview, {attributes: true, attributeFilter: ["src"]});
    }""")
    page.get_by_label("Recipe").select_option("sd15")
    for field, value in (("Width", "64"), ("Height", "64"), ("Steps", "120"), ("Prompt", "a lighthouse")):
        page.get_by_label(field, exact=True).fill(value)
    page.get_by_role("button", name="Generate").click()
    expect(status).to_contain_text("of 120")  # this job's steps, not the last job's "Done"
    expect(status).to_have_text("Done", timeout=60_000)
    assert page.evaluate("window.previewSources.every((source) => source.startsWith('blob:'))")
    assert page.evaluate("window.previewSources.length") > 0, (page.evaluate("window.statusSeen")[-5:], errors)
    expect(page.locator("#preview")).to_be_hidden()


def test_the_icon_is_served_where_browsers_ask_for_it(server) -> None:
    import httpx

    for path in ("/web/icon.svg", "/favicon.ico"):
        icon = httpx.get(f"{server.url}{path}")
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        assert icon.text.lstrip().startswith("<svg")


def test_the_page_and_its_files_are_public_and_forbid_inline_scripts(server) -> None:
    import httpx

    page = httpx.get(server.url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{server.url}/web/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{server.url}/web/index.html").status_code == 404  # only the listed assets
    assert httpx.get(f"{server.url}/web/..%2Fweb.py").status_code == 404


def test_the_browser_comes_from_the_variable_then_playwrights_folder_then_path(monkeypatch, tmp_path) -> None:
    from types import SimpleNamespace

    bundled, on_path = tmp_path / "ms-playwright" / "chrome", tmp_path / "bin" / "chromium"
    playwright = SimpleNamespace(chromium=SimpleNamespace(executable_path=str(bundled)))
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.delenv(BROWSER_VARIABLE, raising=False)
    assert find_chromium(playwright) is None  # the fixture then skips with NO_BROWSER
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert find_chromium(playwright) == str(on_path)
    bundled.parent.mkdir()
    bundled.write_text("")
    assert find_chromium(playwright) == str(bundled)
    monkeypatch.setenv(BROWSER_VARIABLE, "/opt/chrome/chrome")
    assert find_chromium(playwright) == "/opt/chrome/chrome"
