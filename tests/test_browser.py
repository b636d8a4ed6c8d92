"""The search page in headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

Load the page, pick a file in the file input, choose the target, search, and see the ranked results rendered with their
previews: image thumbnails and mesh renders that actually decode, audio players, video players with a poster frame and
text snippets. One browser serves the whole module, so the file stays well under 30 s.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
selenium = pytest.importorskip("selenium")

from _serve_helpers import EXTENSIONS, FakeQuery, fake_info, live_server, make_gallery, tiny_workspace  # noqa: E402

from pipelines.serve import MediaCatalog, create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
                       reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync",
                 "--disable-extensions", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("served") / "ws"
    gallery = make_gallery(workspace)
    app = create_app(workspace, model="tiny", query_fn=FakeQuery(gallery), allowed_extensions=EXTENSIONS,
                     info_fn=fake_info, catalog=MediaCatalog(workspace, items=gallery))
    with live_server(app) as url:
        yield url, gallery


def search_with_file(driver, url: str, path: Path, target: str) -> list:
    """Open the page, pick ``path``, choose ``target``, search; returns the rendered result elements."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    driver.get(url + "/")
    wait = WebDriverWait(driver, 15)
    wait.until(ready.element_to_be_clickable((By.ID, "search")))
    driver.find_element(By.ID, "file").send_keys(str(path))
    Select(driver.find_element(By.ID, "target")).select_by_value(target)
    driver.find_element(By.ID, "search").click()
    wait.until(lambda d: "results for" in d.find_element(By.ID, "status").text
               or "error" in d.find_element(By.ID, "status").get_attribute("class"))
    return driver.find_elements(By.CSS_SELECTOR, "#results .result")


def pictures_decoded(driver) -> bool:
    return driver.execute_script(
        "const images = [...document.querySelectorAll('#results img')];"
        "return images.length > 0 && images.every((i) => i.complete && i.naturalWidth > 0);")


def test_page_shows_image_results_with_decoded_thumbnails_for_an_uploaded_sound(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    url, gallery = site
    results = search_with_file(browser, url, gallery["audio", "7/seven"], "image")
    assert [r.get_attribute("data-item-id") for r in results] == ["7/red", "3/blue"]
    assert results[0].find_element(By.CSS_SELECTOR, ".meta .top").text.startswith("#1")
    assert results[0].find_element(By.CSS_SELECTOR, ".score").text == "1.000"
    WebDriverWait(browser, 10).until(pictures_decoded)
    assert browser.find_element(By.ID, "status").text.startswith("2 image results for seven.wav")
    assert browser.find_elements(By.CSS_SELECTOR, "#query-preview audio")  # the query itself is playable


@pytest.mark.parametrize(("target", "element", "attribute", "url_end"), [
    ("audio", "audio", "src", "/api/media/audio/7%2Fseven"),
    ("video", "video", "poster", "/api/preview/video/7%2Fseven"),
    ("mesh", "img", "src", "/api/preview/mesh/7%2Fseven"),
    ("text", "blockquote", None, None),
])
def test_each_target_modality_gets_its_preview(browser, site, target, element, attribute, url_end):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    url, gallery = site
    (result,) = search_with_file(browser, url, gallery["image", "7/red"], target)
    view = result.find_element(By.CSS_SELECTOR, f".view {element}")
    if attribute:
        assert view.get_attribute(attribute).endswith(url_end)
    if target == "mesh":
        WebDriverWait(browser, 10).until(pictures_decoded)
    if target == "text":
        WebDriverWait(browser, 10).until(lambda d: view.text == "the number seven, written out in words")


def test_a_typed_text_query_shows_results(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    url, _ = site
    browser.get(url + "/")
    wait = WebDriverWait(browser, 15)
    wait.until(lambda d: d.find_element(By.ID, "search").is_enabled())
    browser.find_element(By.ID, "text").send_keys("seven")
    Select(browser.find_element(By.ID, "target")).select_by_value("image")
    browser.find_element(By.ID, "search").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 2)
    assert browser.find_element(By.ID, "status").text.startswith('2 image results for "seven"')


def test_a_refused_upload_shows_the_servers_message(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    url, _ = site
    bad = tmp_path / "notes.exe"
    bad.write_bytes(b"MZ")
    assert search_with_file(browser, url, bad, "image") == []
    status = browser.find_element(By.ID, "status")
    assert "error" in status.get_attribute("class")
    assert status.text.startswith("cannot search with a .exe file")


def test_the_page_runs_without_content_security_policy_violations(browser, site):
    url, gallery = site
    search_with_file(browser, url, gallery["image", "7/red"], "video")
    violations = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert violations == []


@pytest.fixture(scope="module")
def real_site(tmp_path_factory):
    """The page over a real workspace (generate, extract, train, index through the CLI); raw data outside it."""
    workspace, data = tiny_workspace(tmp_path_factory)
    with live_server(create_app(workspace, model="tiny", media_roots=[data])) as url:
        yield url, data


def test_a_trained_model_answers_an_uploaded_image_with_the_texts_it_finds(browser, real_site):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    url, data = real_site
    picture = sorted((data / "image" / "7").iterdir())[0]
    info = httpx.get(url + "/api/info").json()
    assert info["modalities"] == ["image", "text"] and info["targets"] == ["image", "text"]
    results = search_with_file(browser, url, picture, "text")
    with picture.open("rb") as f:
        expected = httpx.post(url + "/api/query", files={"file": (picture.name, f)}, data={"target": "text"}).json()
    assert len(results) == 10
    assert [r.get_attribute("data-item-id") for r in results] == [r["item_id"] for r in expected["results"]]
    for element, result in zip(results, expected["results"]):
        assert element.find_element(By.CSS_SELECTOR, ".top span").text == f"#{result['rank']} {result['label']}"
        quote = element.find_element(By.CSS_SELECTOR, "blockquote")
        WebDriverWait(browser, 10).until(lambda d, q=quote: q.text != "…")
        assert quote.text == Path(result["source_path"]).read_text().strip()
