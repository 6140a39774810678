"""The web page GET /ui in a real browser: headless Chromium (Debian's `chromium`, which scripts/setup.sh
installs) driven by Playwright against a real `bentoml serve` with API keys on.

The page's classes, probabilities and flags must equal /classify's answers for the same files. Screenshots
go to $GALAXYVIT_SCREENSHOTS when set, else to a temporary folder; docs/serving_ui_desktop.jpg and
docs/serving_ui_phone.png are its desktop.png and phone.png.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from astropy.io import fits
from PIL import Image
from playwright.sync_api import Browser, sync_playwright
from tiny_galaxies import write_tiny_dataset

from galaxyvit.paths import REAL_SAMPLE_IMAGES
from serving.auth import hash_key
from serving.process import ServerProcess
from training.random_models import export_random

KEY = "webui-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REAL = sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))
CHROMIUM = os.environ.get("GALAXYVIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
WAIT_MS = 120_000  # generous: the machine may be busy


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three real cutouts, a FITS cutout (the grey of the first), a text file and an upload over the limit."""
    folder = tmp_path_factory.mktemp("webui-files")
    for path in REAL:
        shutil.copy(path, folder / path.name)
    grey = np.asarray(Image.open(REAL[0]).convert("L"), np.float32)[::-1]  # FITS rows run bottom to top
    fits.PrimaryHDU(grey).writeto(folder / "cutout.fits")
    (folder / "notes.txt").write_text("not an image\n")
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (900, 900, 3), np.uint8)).save(big, format="PNG")
    (folder / "huge.png").write_bytes(big.getvalue())  # about 2.4 MB: over max_upload_bytes below
    return {path.name: path for path in folder.iterdir()}


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory):
    """`vit` (tiny, calibrated, with a not-a-galaxy rule) and `linformer` (tiny, neither), API keys on."""
    base = tmp_path_factory.mktemp("webui-models")
    home = base / "bentoml_home"
    data = write_tiny_dataset(base / "data", n_train=16, n_valid=16, n_test=0)
    export_random("vit", base, home, tiny=True, valid_acc=0.5, valid_dir=data)
    export_random("linformer", base, home, tiny=True)
    keys = base / "keys.txt"
    keys.write_text(hash_key(KEY) + "\n")
    settings = {
        "models": ["vit", "linformer"],
        "max_upload_bytes": 2 * 1024 * 1024,
        "intra_op_threads": 1,
        "max_latency_ms": 1000,
        "api_keys_file": str(keys),
        "feedback_burst": 2,  # the third feedback within a minute is a 429 with Retry-After
        "feedback_per_minute": 1,
    }
    with ServerProcess(settings, store=home, workdir=base / "server", ready_timeout=240) as server:
        yield server


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("GALAXYVIT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium (Playwright's own browser download is unreachable), closed with this module.

    Playwright's sync API runs an event loop while it is open; a session-wide one (pytest-playwright's
    fixtures) would make `asyncio.run` fail in every test that runs after this module."""
    if CHROMIUM is None:
        pytest.skip("no Chromium: run scripts/setup.sh as root where apt is available (it installs Debian's chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def test_the_page_and_its_files_need_no_key_but_the_endpoints_do(ui_server):
    page = httpx.get(f"{ui_server.url}/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self' covers scripts
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="ui/app.js"' in page.text and "cdn" not in page.text.lower()
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        asset = httpx.get(f"{ui_server.url}/ui/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
    assert httpx.get(f"{ui_server.url}/ui/missing.js").status_code == 404
    assert httpx.get(f"{ui_server.url}/models").status_code == 401
    assert httpx.get(f"{ui_server.url}/models", headers=AUTH).status_code == 200


def classify(server: ServerProcess, path: Path, tta: int = 1) -> dict:
    """/classify's answer for one file, as the page asks it."""
    data = {"model": "vit", **({"tta": "8"} if tta == 8 else {})}
    with open(path, "rb") as f:
        answer = httpx.post(f"{server.url}/classify", files={"images": (path.name, f)}, data=data, headers=AUTH,
                            timeout=120)  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"][0]


def page_results(page) -> dict[str, dict]:
    """What the page shows for each finished image: class, flag, request id, tta, {class: probability} and the
    percentages it prints."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('article.result[data-state="done"]')].map((a) => [
            a.dataset.file, {
              class_name: a.querySelector('.class-name').textContent,
              in_distribution: a.dataset.inDistribution,
              flag: a.querySelector('.flag').textContent,
              request_id: a.dataset.requestId,
              tta: Number(a.dataset.tta),
              spread: a.querySelector('.spread')?.textContent ?? null,
              probabilities: Object.fromEntries([...a.querySelectorAll('li.bar')].map(
                (li) => [li.dataset.class, Number(li.dataset.p)])),
              shown: Object.fromEntries([...a.querySelectorAll('li.bar')].map(
                (li) => [li.dataset.class, li.querySelector('.value').textContent])),
            }]))"""
    )


def wait_for_results(page, n: int, tta: int = 1) -> None:
    page.wait_for_function(
        """([n, tta]) => {
            const cards = [...document.querySelectorAll('article.result')];
            return cards.length === n && cards.every((a) => a.dataset.state === 'error'
                || (a.dataset.state === 'done' && Number(a.dataset.tta) === tta));
        }""",
        arg=[n, tta],
        timeout=WAIT_MS,
    )


def open_page(browser, server: ServerProcess, width: int, height: int):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{server.url}/ui")
    return context, page


def enter_key(page) -> None:
    page.get_by_text("This service needs an API key").wait_for()  # /models answered 401: the page says so
    assert page.locator("#key-box").get_attribute("open") is not None
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Use this key").click()
    page.wait_for_function("() => !document.getElementById('model').disabled", timeout=WAIT_MS)


def compare(shown: dict, expected: dict) -> None:
    assert shown["class_name"] == expected["class_name"]
    assert shown["in_distribution"] == {True: "true", False: "false", None: "null"}[expected["in_distribution"]]
    assert list(shown["probabilities"]) == list(expected["probabilities"])  # every class, in label order
    for name, p in expected["probabilities"].items():
        assert shown["probabilities"][name] == pytest.approx(p, abs=1e-6)  # float32 noise of another batch at most
        assert shown["shown"][name] == f"{100 * p:.1f}%"


def test_the_page_in_a_browser(browser, ui_server, files, screenshots):
    context, page = open_page(browser, ui_server, 1280, 900)
    enter_key(page)
    assert page.locator("#model option").all_inner_texts() == ["vit", "linformer"]
    info = page.locator("#model-info").inner_text()
    assert "validation accuracy 50.0%" in info and "calibrated (T = " in info and "Classes: " in info

    uploads = [*REAL, files["cutout.fits"]]
    page.locator("#files").set_input_files([str(files[p.name]) for p in uploads])
    wait_for_results(page, len(uploads))
    shown = page_results(page)
    assert sorted(shown) == sorted(p.name for p in uploads)
    for path in uploads:
        expected = classify(ui_server, files[path.name])
        compare(shown[path.name], expected)
        words = "Looks like a galaxy" if expected["in_distribution"] else "Maybe not a galaxy"
        assert words in shown[path.name]["flag"]
    page.screenshot(path=str(screenshots / "desktop-classified.png"), full_page=True)

    page.get_by_label("Average over 8 rotated and flipped views").check()
    wait_for_results(page, len(uploads), tta=8)
    eight = page_results(page)
    for path in REAL:
        expected = classify(ui_server, files[path.name], tta=8)
        compare(eight[path.name], expected)
        assert f"±{expected['spread']:.3f}" in eight[path.name]["spread"]

    first = page.locator(f'article[data-file="{REAL[0].name}"]')
    first.get_by_role("button", name="Show attention map").click()
    overlay = first.locator("canvas.overlay")
    overlay.wait_for()
    assert first.locator("figure.attention").get_attribute("data-method") == "rollout"
    assert first.locator(".bar-legend canvas").count() == 1
    drawn = overlay.evaluate("(c) => c.toDataURL()")
    first.get_by_label("Map opacity").fill("0")
    assert overlay.evaluate("(c) => c.toDataURL()") != drawn  # the slider redraws the map
    first.get_by_label("Map opacity").fill("0.6")
    rollout = overlay.evaluate("(c) => c.toDataURL()")
    choice = first.get_by_label("Map", exact=True)
    names = choice.locator("option").all_inner_texts()
    assert len(names) > 1 and names == ["rollout", *(f"head {h}" for h in range(1, len(names)))]
    choice.select_option("head 1")
    assert first.locator("figure.attention").get_attribute("data-map") == "head 1"
    assert overlay.evaluate("(c) => c.toDataURL()") != rollout  # the first head's map is drawn, not the rollout
    fits_card = page.locator('article[data-file="cutout.fits"]')
    fits_card.get_by_role("button", name="Show attention map").click()
    figure = fits_card.locator("figure.server-figure img")
    figure.wait_for()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 448", arg=figure.element_handle())

    right = next(name for name in eight[REAL[0].name]["probabilities"] if name != eight[REAL[0].name]["class_name"])
    first.get_by_label("Right class").select_option(right)
    first.get_by_role("button", name="Send feedback").click()
    first.get_by_text("Thank you: recorded as").wait_for()
    again = httpx.post(f"{ui_server.url}/feedback", json={"request_id": eight[REAL[0].name]["request_id"],
                       "label": right}, headers=AUTH)  # fmt: skip
    assert again.status_code == 409  # the page's feedback was recorded for this very prediction
    second = page.locator(f'article[data-file="{REAL[1].name}"]')
    second.get_by_role("button", name="Send feedback").click()
    busy = second.locator(".feedback-status")
    busy.get_by_text("Too much feedback from this key. Try again in").wait_for()
    assert "429 rate_limited" in busy.inner_text()
    page.screenshot(path=str(screenshots / "desktop.png"), full_page=True)

    first.get_by_text("Copy this request as curl / Python").click()
    curl = first.locator("pre.curl").inner_text()
    python = first.locator("pre.python").inner_text()
    assert f"-F 'images=@{REAL[0].name}'" in curl and "tta=8" in curl and "$GALAXYVIT_API_KEY" in curl
    env = {**os.environ, "GALAXYVIT_API_KEY": KEY}
    folder = files[REAL[0].name].parent
    ran = subprocess.run(["bash", "-c", curl], cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and f'"class_name":"{eight[REAL[0].name]["class_name"]}"' in ran.stdout, ran.stdout
    ran = subprocess.run([sys.executable, "-c", python], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert ran.returncode == 0 and ran.stdout.strip() == eight[REAL[0].name]["class_name"], ran.stderr
    page.screenshot(path=str(screenshots / "desktop-snippets.png"), full_page=True)

    page.get_by_label("Average over 8 rotated and flipped views").uncheck()
    page.locator("#files").set_input_files([str(files["notes.txt"]), str(files["huge.png"])])
    wait_for_results(page, len(uploads) + 2)
    text = page.locator('article[data-file="notes.txt"]')
    assert text.get_attribute("data-state") == "error"
    assert "“notes.txt” is not an image the service can read" in text.locator(".error").inner_text()
    assert "415 not_an_image" in text.locator(".detail").inner_text()
    huge = page.locator('article[data-file="huge.png"]')
    assert "“huge.png” is too large for this service" in huge.locator(".error").inner_text()
    context.close()


def test_the_page_at_phone_width(browser, ui_server, files, screenshots):
    context, page = open_page(browser, ui_server, 390, 844)
    enter_key(page)
    page.locator("#files").set_input_files([str(files[p.name]) for p in REAL])
    wait_for_results(page, len(REAL))
    first = page.locator(f'article[data-file="{REAL[0].name}"]')
    first.get_by_role("button", name="Show attention map").click()
    first.locator("canvas.overlay").wait_for()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # nothing sticks out sideways
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select')]
                 .filter((c) => !(c.labels && c.labels.length) && !c.getAttribute('aria-label')).map((c) => c.id)"""
    )
    assert unlabelled == []
    second = page.locator(f'article[data-file="{REAL[1].name}"]')
    second.get_by_role("button", name="Show attention map").focus()
    page.keyboard.press("Enter")  # the keyboard alone works the page's buttons
    second.locator("canvas.overlay").wait_for()
    page.screenshot(path=str(screenshots / "phone-full.png"), full_page=True)
    page.evaluate("(y) => window.scrollTo(0, y)", first.bounding_box()["y"] + page.evaluate("() => window.scrollY") - 8)
    page.screenshot(path=str(screenshots / "phone.png"))
    page.get_by_label("Model", exact=True).select_option("linformer")  # another model: every image is classified again
    page.wait_for_function(
        """() => [...document.querySelectorAll('article.result')].every((a) => a.dataset.state === 'done'
                 && a.querySelector('.confidence').textContent.includes('model linformer'))""",
        timeout=WAIT_MS,
    )
    assert "No not-a-galaxy check" in first.locator(".flag").inner_text()
    first.get_by_role("button", name="Show attention map").click()
    signed = first.locator('figure.attention[data-method="linformer-value-projection"]')
    signed.wait_for()
    assert signed.get_attribute("data-map") == "head mean"  # the Linformer has no rollout
    signed.get_by_label("Map", exact=True).focus()
    page.keyboard.press("ArrowDown")  # the keyboard alone picks a head
    page.wait_for_function("(f) => f.dataset.map === 'head 1'", arg=signed.element_handle(), timeout=WAIT_MS)
    context.close()
