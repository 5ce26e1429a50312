"""The web viewer in a real headless Chromium against the real service (``python -m service``).

Debian's ``chromium`` driven by Playwright for Python through the system executable (no
downloaded browser). When the browser cannot start the tests fail; only a machine without
``/usr/bin/chromium`` and without ``CI`` set skips them, saying why.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from model_export.synth_stack import StackConfig, synth_stack
from tests.server import REPO, Server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = REPO / "artifacts"
#: Generous: the service runs the model three times per upload on a shared 2-core CPU.
RESULT_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.slow


def _no_browser(reason: str) -> None:
    """Fail in CI (a browser test that silently skips proves nothing); skip with the reason locally."""
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)


def write_disc_tiff(path: Path, size: int = 192, seed: int = 3) -> Path:
    """A 16-bit TIFF: bright discs (radius 6–10 px, ~30000–50000) on dark noise (~2000 ± 400)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(2000, 400, (size, size)).clip(0, 65535)
    step = size // 4
    for row in range(step // 2, size, step):
        for col in range(step // 2, size, step):
            centre = (int(col + rng.integers(-5, 6)), int(row + rng.integers(-5, 6)))
            value = float(rng.uniform(30000, 50000))
            cv2.circle(image, centre, int(rng.integers(6, 11)), value, thickness=-1, lineType=cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image.astype(np.uint16)), "OpenCV could not write the TIFF"
    return path


@contextmanager
def _run_service(workdir: Path, model: Path, **settings: str) -> Iterator[str]:
    """``python -m service`` on a free loopback port with ``UNET_*`` settings; yields its URL once ready."""
    env = {"UNET_MODEL_PATH": str(model), "UNET_INTRA_OP_THREADS": "2", **settings}
    server = Server(env, workdir / "service.log")
    try:
        yield server.wait_ready(90).url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model when the checkout has one, else a tiny random mini U-Net."""
    bundled = REPO / "models" / "nuclei-unet.onnx"
    if bundled.exists():
        return bundled
    from tests.models import write_conv_model

    return write_conv_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def service_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``python -m service`` without an API key.

    ``UNET_WEB_TEST_URL`` points the tests at a service that is already running instead.
    """
    if os.environ.get("UNET_WEB_TEST_URL"):
        yield os.environ["UNET_WEB_TEST_URL"].rstrip("/")
        return
    model = request.getfixturevalue("model_path")
    with _run_service(tmp_path_factory.mktemp("service"), model) as url:
        yield url


API_KEY = "web-viewer-test-key"


@pytest.fixture(scope="module")
def keyed_service_url(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``python -m service`` that requires ``X-API-Key: API_KEY``."""
    with _run_service(tmp_path_factory.mktemp("keyed-service"), model_path, UNET_API_KEY=API_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """System Chromium through Playwright; a browser that does not start is a failure."""
    if not CHROMIUM.exists():
        _no_browser(f"{CHROMIUM} is not installed (Debian package 'chromium')")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # a declared test dependency: missing means a broken install
        pytest.fail(f"playwright is not installed (pip install -e '.[test]'): {exc}")
    with sync_playwright() as playwright:
        try:
            instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                  headless=True, timeout=60_000)
        except Exception as exc:  # noqa: BLE001 - any launch failure must be loud
            pytest.fail(f"Chromium ({CHROMIUM}) did not start: {exc}")
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="module")
def tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_disc_tiff(tmp_path_factory.mktemp("images") / "discs.tif")


def _new_page(browser: Any, service_url: str) -> Any:
    page = browser.new_page(viewport={"width": 1180, "height": 760}, accept_downloads=True)
    page.set_default_timeout(RESULT_TIMEOUT_MS)
    page.goto(service_url + "/")
    return page


def _wait_for_count(page: Any) -> int:
    """Wait until the page shows an object count from the server and no request is running."""
    page.wait_for_function(
        "() => (/^\\d+$/.test(document.getElementById('info-count').textContent)"
        " && document.getElementById('progress-box').hidden)"
        " || document.getElementById('error').textContent !== ''"
    )
    error = page.locator("#error").text_content()
    assert error == "", f"the page shows an error instead of a result: {error}"
    return int(page.locator("#info-count").text_content())


@dataclass
class Viewer:
    page: Any
    requests: list[str]  # every URL the page asked for, in order


@pytest.fixture(scope="module")
def viewer(browser: Any, service_url: str, tiff: Path) -> Iterator[Viewer]:
    """The page after uploading the 16-bit TIFF through the file input, result shown."""
    page = _new_page(browser, service_url)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.locator("#file-input").set_input_files(str(tiff))
    _wait_for_count(page)
    try:
        yield Viewer(page, requests)
    finally:
        page.close()


def test_tiff_upload_shows_the_servers_object_count(viewer: Viewer, service_url: str, tiff: Path) -> None:
    page = viewer.page
    shown = int(page.locator("#info-count").text_content())
    reply = httpx.post(f"{service_url}/segment", params={"output": "labels"}, content=tiff.read_bytes(),
                       headers={"Content-Type": "image/tiff"}, timeout=120)
    assert reply.status_code == 200, reply.text
    assert shown == int(reply.headers["X-Object-Count"])
    # The preview (a TIFF the browser could not show itself) and the info panel are filled in.
    size = page.evaluate("() => [document.getElementById('preview').naturalWidth,"
                           " document.getElementById('preview').naturalHeight]")
    assert size == [192, 192]
    assert page.locator("#info-size").text_content() == "192 × 192 px"
    assert re.fullmatch(r"\d+", page.locator("#info-tiles").text_content())
    assert page.locator("#info-model").text_content() != "–"
    assert page.locator("#info-provider").text_content() == "CPUExecutionProvider"
    assert page.locator("#error").text_content() == ""


def test_threshold_slider_changes_foreground_area_without_new_upload(
    viewer: Viewer, service_url: str
) -> None:
    page = viewer.page
    before = page.locator("#info-foreground").text_content()
    assert before.endswith("%")
    probability_requests = sum("output=probability" in url for url in viewer.requests)
    slider = page.locator("#threshold")
    slider.focus()
    page.keyboard.press("Home")  # 0.01: nearly everything the model saw is foreground
    page.wait_for_function(f"() => document.getElementById('info-foreground').textContent !== {before!r}",
                             timeout=5_000)
    assert float(page.locator("#info-foreground").text_content().rstrip(" %")) > float(before.rstrip(" %"))
    # The mask followed from the probability map already in the browser; only the count is re-asked.
    _wait_for_count(page)
    assert sum("output=probability" in url for url in viewer.requests) == probability_requests
    assert page.locator("#info-count-threshold").text_content() == "0.01"
    assert any("output=geojson" in url and "threshold=0.01" in url for url in viewer.requests)

    # Back to the model's threshold, labels view, for the screenshot.
    model = httpx.get(f"{service_url}/v1/model", timeout=10).json()
    slider.fill(str(model["metadata"]["threshold"]))
    _wait_for_count(page)
    page.get_by_label("Labels").check()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-viewer.png"), full_page=True)


def test_split_choice_recounts_on_the_server(viewer: Viewer, service_url: str, tiff: Path) -> None:
    page = viewer.page
    model = httpx.get(f"{service_url}/v1/model", timeout=10).json()
    assert "center" in model["metadata"]["class_names"]  # the bundled model: every choice is offered
    assert not page.locator('#split option[value="center"]').is_disabled()

    def server_count(split: str) -> int:
        reply = httpx.post(f"{service_url}/segment", params={"output": "labels", "split": split},
                           content=tiff.read_bytes(), headers={"Content-Type": "image/tiff"}, timeout=120)
        assert reply.status_code == 200, reply.text
        return int(reply.headers["X-Object-Count"])

    for split in ("none", "center", ""):
        page.locator("#split").select_option(split)
        _wait_for_count(page)
        if split:
            assert any("output=geojson" in url and f"split={split}" in url for url in viewer.requests)
        expected = server_count(split or {"distance_watershed": "distance", "center_watershed": "center"}[
            model["objects"]["method"]])
        assert int(page.locator("#info-count").text_content()) == expected, split
    assert page.locator("#error").text_content() == ""


def test_nucleus_diameter_is_shown_and_can_be_entered(viewer: Viewer, service_url: str, tiff: Path) -> None:
    page = viewer.page
    # The bundled model knows its nucleus size: the server estimated this image's.
    assert page.locator("#info-diameter").text_content().endswith("px (estimated)")
    page.locator("#diameter").fill("30")
    page.locator("#diameter").dispatch_event("change")
    page.wait_for_function(
        "() => document.getElementById('info-diameter').textContent.includes('as entered')"
    )
    shown = _wait_for_count(page)
    assert page.locator("#info-diameter").text_content() == "30.0 px (as entered)"
    assert any("output=probability" in url and "diameter=30" in url for url in viewer.requests)
    reply = httpx.post(f"{service_url}/segment", params={"output": "labels", "diameter": 30},
                       content=tiff.read_bytes(), headers={"Content-Type": "image/tiff"}, timeout=120)
    assert shown == int(reply.headers["X-Object-Count"])
    page.locator("#diameter").fill("")  # back to the estimate for the tests that follow
    page.locator("#diameter").dispatch_event("change")
    page.wait_for_function("() => document.getElementById('info-diameter').textContent.includes('estimated')")
    _wait_for_count(page)


def test_download_buttons_name_files_after_the_input(viewer: Viewer) -> None:
    page = viewer.page
    for output in ("mask", "labels"):
        with page.expect_download() as info:
            page.locator(f"#download-{output}").click()
        download = info.value
        assert download.suggested_filename == f"discs_{output}.png"
        data = Path(download.path()).read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape[:2] == (192, 192)
        assert image.dtype == (np.uint8 if output == "mask" else np.uint16)


def _cache_outcomes(service_url: str) -> dict[str, float]:
    """``unet_prediction_cache_total`` by outcome, from the service's /metrics."""
    text = httpx.get(f"{service_url}/metrics", timeout=10).text
    found = dict(re.findall(r'^unet_prediction_cache_total\{outcome="(\w+)"\} (\S+)$', text, re.M))
    return {k: float(found.get(k, 0)) for k in ("hit", "miss")}


def test_a_dropped_file_runs_the_model_once_for_its_map_and_its_outlines(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    """The page asks for the probability map and then the outlines of the same file: the second
    answer is made from the first's prediction (service.prediction_cache), and so is a download."""
    fresh = write_disc_tiff(tmp_path / "fresh.tif", seed=17)  # never sent before: nothing kept
    before = _cache_outcomes(service_url)
    page = _new_page(browser, service_url)
    try:
        page.locator("#file-input").set_input_files(str(fresh))
        _wait_for_count(page)
        shown = _cache_outcomes(service_url)
        assert shown["miss"] - before["miss"] == 1  # the probability map: the model ran
        assert shown["hit"] - before["hit"] == 1  # the outlines: it did not
        with page.expect_download():
            page.locator("#download-labels").click()
        after = _cache_outcomes(service_url)
        assert (after["miss"], after["hit"]) == (shown["miss"], shown["hit"] + 1)
    finally:
        page.close()


def test_text_file_named_png_shows_the_problem_message(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("these are lab notes, not an image\n")
    page = _new_page(browser, service_url)
    try:
        page.locator("#file-input").set_input_files(str(fake))
        error = page.locator("#error")
        page.wait_for_function("() => document.getElementById('error').textContent.length > 0",
                               timeout=30_000)
        text = error.text_content()
        assert "HTTP 400" in text, text
        assert "image" in text.lower(), text
        assert error.get_attribute("role") == "alert"
        assert page.locator("#info-count").text_content() == "–"
    finally:
        page.close()


def test_api_key_is_asked_once_and_sent_with_every_request(
    browser: Any, keyed_service_url: str, tiff: Path
) -> None:
    page = _new_page(browser, keyed_service_url)
    keys: dict[str, str | None] = {}
    page.on("request", lambda r: keys.__setitem__(r.url, r.headers.get("x-api-key")))
    try:
        dialog = page.locator("#key-dialog")
        dialog.wait_for(state="visible", timeout=30_000)  # GET v1/model answered 401
        page.get_by_label("API key", exact=True).fill(API_KEY)
        page.locator("#key-ok").click()
        page.wait_for_function("() => !document.getElementById('model-line').textContent.startsWith('Conn')")
        page.locator("#file-input").set_input_files(str(tiff))
        _wait_for_count(page)
        assert not dialog.is_visible()
        assert page.evaluate("() => sessionStorage.getItem('unet.apiKey')") == API_KEY
        uploads = {url: key for url, key in keys.items() if "/segment" in url or "/ui/preview" in url}
        assert len(uploads) == 3 and set(uploads.values()) == {API_KEY}, uploads
    finally:
        page.close()


def _server_count(service_url: str, path: Path, **params: str) -> int:
    reply = httpx.post(f"{service_url}/segment", params={"output": "labels", **params},
                       content=path.read_bytes(), headers={"Content-Type": "image/tiff"}, timeout=120)
    assert reply.status_code == 200, reply.text
    return int(reply.headers["X-Object-Count"])


@pytest.fixture(scope="module")
def two_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-channel ImageJ TIFF calibrated at 0.65 µm/px: cytoplasm first, nuclei (discs) second."""
    tifffile = pytest.importorskip("tifffile")
    folder = tmp_path_factory.mktemp("two-channel")
    nuclei = cv2.imread(str(write_disc_tiff(folder / "nuclei.tif", seed=5)), cv2.IMREAD_UNCHANGED)
    cyto = cv2.GaussianBlur(nuclei, (0, 0), 12)  # a smooth glow: not the discs
    path = folder / "two-channel.tif"
    tifffile.imwrite(path, np.stack([cyto, nuclei]), imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"axes": "CYX", "unit": "micron", "Labels": ["Cytoplasm", "DAPI"]})
    return path


def test_channel_picker_lists_the_files_channels_and_segments_the_one_chosen(
    browser: Any, service_url: str, two_channel: Path
) -> None:
    page = _new_page(browser, service_url)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.locator("#file-input").set_input_files(str(two_channel))
        picker = page.get_by_label("Nuclei channel")
        picker.wait_for(state="visible")
        options = picker.locator("option").all_text_contents()
        assert options[1:] == ["0 · Cytoplasm", "1 · DAPI"], options
        page.wait_for_function("() => document.getElementById('plane-help').textContent.includes('channel')")
        assert not any("/segment" in url for url in requests), "segmented before a channel was chosen"
        assert page.locator("#info-pixel-size").text_content() == "0.65 µm/px (imagej)"

        for channel in ("1", "0"):
            picker.select_option(channel)
            shown = _wait_for_count(page)
            assert shown == _server_count(service_url, two_channel, channel=channel), channel
            assert any("output=geojson" in url and f"channel={channel}" in url for url in requests)
        assert page.locator("#info-plane").text_content() == "channel 0 (Cytoplasm)"

        picker.select_option("1")
        _wait_for_count(page)
        with page.expect_download() as info:
            page.locator("#download-objects").click()
        assert info.value.suggested_filename == "two-channel_objects.csv"
        header = Path(info.value.path()).read_text().splitlines()[0].split(",")
        assert "area_um2" in header and not any(c.endswith("_Cytoplasm") for c in header)
        # Every channel measured per nucleus in the saved table, the outlines shown left as they were
        requests.clear()
        assert not page.get_by_label("… on the sum over Z").is_visible()  # one plane: nothing to sum
        page.get_by_label("Measure every channel").check()
        with page.expect_download() as info:
            page.locator("#download-objects").click()
        measured = Path(info.value.path()).read_text().splitlines()[0].split(",")
        assert measured == [*header, "mean_intensity_Cytoplasm", "integrated_intensity_Cytoplasm",
                            "mean_intensity_DAPI", "integrated_intensity_DAPI"]
        assert [url for url in requests if "measure=all" in url] and all(
            "output=objects" in url for url in requests if "measure=" in url)
        # ... each less its local background around each nucleus
        requests.clear()
        page.get_by_label("Local background: ring of (px)").fill("4")
        with page.expect_download() as info:
            page.locator("#download-objects").click()
        ringed = Path(info.value.path()).read_text().splitlines()[0].split(",")
        assert ringed == [*measured[:-2], "background_Cytoplasm", "mean_intensity_corrected_Cytoplasm",
                          "integrated_intensity_corrected_Cytoplasm", *measured[-2:], "background_DAPI",
                          "mean_intensity_corrected_DAPI", "integrated_intensity_corrected_DAPI"]
        assert [url for url in requests if "background_ring=4" in url and "measure=all" in url]
        # ... and cells around the nuclei, with each channel over their cytoplasm, the ring beyond them
        page.get_by_label("Cells: grow each nucleus by (px)").fill("3")
        with page.expect_download() as info:
            page.locator("#download-geojson").click()
        cells = json.loads(Path(info.value.path()).read_text())["features"]
        assert cells and cells[0]["properties"]["objectType"] == "cell" and "nucleusGeometry" in cells[0]
        assert "mean_intensity_cytoplasm_Cytoplasm" in cells[0]["properties"]["measurements"]
        assert "mean_intensity_cytoplasm_corrected_Cytoplasm" in cells[0]["properties"]["measurements"]
        requests.clear()
        with page.expect_download() as info:
            page.locator("#download-rois").click()
        assert info.value.suggested_filename == "two-channel_rois.zip"
        # an ROI set has no table: neither the channels nor their background are asked for
        assert not [url for url in requests if "measure=" in url or "background_ring" in url]
    finally:
        page.close()


def _drop_and_segment_channel_1(
    browser: Any, service_url: str, path: Path, channels: list[str], pixel_size: str
) -> None:
    """A vendor file dropped on the page: its channels offered as ``channels``, its calibration
    shown as ``pixel_size`` (``0.5 µm/px (lif)``), and channel 1 chosen segments as the server does."""
    page = _new_page(browser, service_url)
    try:
        page.locator("#file-input").set_input_files(str(path))
        picker = page.get_by_label("Nuclei channel")
        picker.wait_for(state="visible")
        assert picker.locator("option").all_text_contents()[1:] == channels
        shown = "(expected) => document.getElementById('info-pixel-size').textContent === expected"
        page.wait_for_function(shown, arg=pixel_size)
        picker.select_option("1")
        assert _wait_for_count(page) == _server_count(service_url, path, channel="1") > 0
    finally:
        page.close()


def test_a_zeiss_czi_is_dropped_as_saved_and_its_channels_offered_by_name(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    """ZEN's own file, not an export: the page takes a .czi, offers its channels by name, shows
    ZEN's calibration and segments the channel chosen as the server does."""
    from tests.czi_files import ZSTD1, Tile, czi_bytes

    nuclei = cv2.imread(str(write_disc_tiff(tmp_path / "nuclei.tif", seed=6)), cv2.IMREAD_UNCHANGED)
    cyto = cv2.GaussianBlur(nuclei, (0, 0), 12)
    path = tmp_path / "experiment.czi"
    path.write_bytes(czi_bytes([Tile(cyto, c=0), Tile(nuclei, c=1)], {0: "AF488", 1: "DAPI"}, 0.65e-6, ZSTD1))
    _drop_and_segment_channel_1(browser, service_url, path, ["0 · AF488", "1 · DAPI"], "0.65 µm/px (czi)")


def test_a_leica_lif_is_dropped_as_saved_and_its_channels_offered_by_their_colours(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    """LAS X's own project file: the page takes a .lif, offers its channels by their colour
    tables, shows its calibration and segments the channel chosen as the server does."""
    from tests.lif_files import Image, lif_bytes

    nuclei = cv2.imread(str(write_disc_tiff(tmp_path / "nuclei.tif", seed=8)), cv2.IMREAD_UNCHANGED)
    cyto = cv2.GaussianBlur(nuclei, (0, 0), 12)
    path = tmp_path / "session.lif"
    path.write_bytes(lif_bytes([Image("Series001", np.stack([cyto, nuclei]), "CYX", ("Green", "Blue"), 0.5)]))
    _drop_and_segment_channel_1(browser, service_url, path, ["0 · Green", "1 · Blue"], "0.5 µm/px (lif)")


def test_a_leica_project_opening_on_a_refused_image_offers_its_other_images(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    """A LAS X project whose first image the service refuses (a λ-scan, as LAS X's own example
    projects open): the error says why, the image picker offers the project's images from the
    415's choices, and choosing the field probes and segments it as the server does."""
    from tests.lif_files import Image, lif_bytes

    nuclei = cv2.imread(str(write_disc_tiff(tmp_path / "nuclei.tif", seed=11)), cv2.IMREAD_UNCHANGED)
    cyto = cv2.GaussianBlur(nuclei, (0, 0), 12)
    sweep = np.zeros((5, *nuclei.shape), nuclei.dtype)
    path = tmp_path / "session.lif"
    path.write_bytes(lif_bytes([Image("sweep", sweep, "λYX"),
                                Image("field", np.stack([cyto, nuclei]), "CYX", ("Green", "Blue"), 0.5)]))
    page = _new_page(browser, service_url)
    try:
        page.locator("#file-input").set_input_files(str(path))
        series = page.get_by_label("Image in the file")
        series.wait_for(state="visible")
        assert "5 emission wavelengths" in page.locator("#error").text_content()
        size = f"{nuclei.shape[1]}×{nuclei.shape[0]}"
        assert series.locator("option").all_text_contents()[1:] == [f"0 · sweep ({size})",
                                                                    f"1 · field ({size} · 2 ch)"]
        series.select_option("1")
        picker = page.get_by_label("Nuclei channel")
        picker.wait_for(state="visible")
        assert picker.locator("option").all_text_contents()[1:] == ["0 · Green", "1 · Blue"]
        picker.select_option("1")
        assert _wait_for_count(page) == _server_count(service_url, path, series="1", channel="1") > 0
    finally:
        page.close()


def test_a_nikon_nd2_is_dropped_as_saved_its_positions_and_channels_offered_by_their_names(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    """NIS-Elements' own file: the page takes a .nd2, offers its XY positions and its channels by
    their names in NIS, shows its calibration and segments the position and channel chosen as the
    server does."""
    from tests.nd2_files import Nd2, write_nd2

    nuclei = cv2.imread(str(write_disc_tiff(tmp_path / "nuclei.tif", seed=9)), cv2.IMREAD_UNCHANGED)
    marker = cv2.GaussianBlur(nuclei, (0, 0), 12)
    other = nuclei.copy()
    other[:, : other.shape[1] // 2] = nuclei.min()  # the second field: the right half's nuclei only
    fields = np.stack([np.dstack([marker, nuclei]), np.dstack([marker, other])])  # PYXC
    path = tmp_path / "plate.nd2"
    path.write_bytes(write_nd2(Nd2(fields, "PYXC", ("FITC", "DAPI"), 0.5, position_names=("A1", "B2"))))
    page = _new_page(browser, service_url)
    try:
        page.locator("#file-input").set_input_files(str(path))
        picker = page.get_by_label("Nuclei channel")
        picker.wait_for(state="visible")
        assert picker.locator("option").all_text_contents()[1:] == ["0 · FITC", "1 · DAPI"]
        series = page.get_by_label("Image in the file")
        size = f"{nuclei.shape[1]}×{nuclei.shape[0]}"
        assert series.locator("option").all_text_contents()[1:] == [f"0 · A1 ({size} · 2 ch)",
                                                                    f"1 · B2 ({size} · 2 ch)"]
        page.wait_for_function("() => document.getElementById('info-pixel-size').textContent.includes('nd2')")
        assert page.locator("#info-pixel-size").text_content() == "0.5 µm/px (nd2)"
        picker.select_option("1")
        first = _wait_for_count(page)
        assert first == _server_count(service_url, path, channel="1") > 0
        series.select_option("1")
        picker.wait_for(state="visible")
        picker.select_option("1")
        second = _server_count(service_url, path, series="1", channel="1")
        assert second not in (first, 0)  # another field: the count tells the positions apart
        page.wait_for_function(f"() => document.getElementById('info-count').textContent === '{second}'"
                               " || document.getElementById('error').textContent !== ''")
        assert _wait_for_count(page) == second
    finally:
        page.close()


def test_an_olympus_oib_is_dropped_as_saved_and_its_channels_offered_by_their_dyes(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    """FluoView's own file: the page takes a .oib, offers its channels by their dye names, shows its
    calibration and segments the channel chosen as the server does."""
    from tests.oib_files import Oib, write_oib

    nuclei = cv2.imread(str(write_disc_tiff(tmp_path / "nuclei.tif", seed=10)), cv2.IMREAD_UNCHANGED)
    marker = cv2.GaussianBlur(nuclei, (0, 0), 12)
    path = tmp_path / "cells.oib"
    dyes = ("Alexa Fluor 488", "Hoechst 33342")
    path.write_bytes(write_oib(Oib(np.stack([marker, nuclei]), "CYX", dyes, 0.31)))
    _drop_and_segment_channel_1(browser, service_url, path, [f"0 · {dyes[0]}", f"1 · {dyes[1]}"],
                                "0.31 µm/px (oib)")


def test_an_lsm_a_deltavision_file_a_zvi_and_an_imaris_file_are_dropped_their_channels_offered_by_name(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    """ZEN's LSM (its tracks the samples of one page, named as ZEN names them), softWoRx's
    DeltaVision file (waves named by wavelength), AxioVision's ZVI and an Imaris file: the page takes
    each, shows its calibration and segments the channel chosen as the server does."""
    from tests.dv_files import dv_bytes
    from tests.vendor_tiffs import lsm_bytes

    nuclei = cv2.imread(str(write_disc_tiff(tmp_path / "nuclei.tif", seed=11)), cv2.IMREAD_UNCHANGED)
    marker = cv2.GaussianBlur(nuclei, (0, 0), 12)
    lsm = tmp_path / "cells.lsm"
    tracks = ["Ch1-T1", "ChS1-T2", "Ch2-T3"]
    lsm.write_bytes(lsm_bytes(np.stack([marker, nuclei, marker])[None], "ZCYX", (0.42, 0.42, 1.0), tracks))
    _drop_and_segment_channel_1(browser, service_url, lsm, [f"{i} · {n}" for i, n in enumerate(tracks)],
                                "0.42 µm/px (lsm)")
    dv = tmp_path / "cells.dv"
    dv.write_bytes(dv_bytes(np.stack([marker, nuclei])[None, :, None], 0.13, 0.3, wavelengths=(525, 455)))
    _drop_and_segment_channel_1(browser, service_url, dv, ["0 · 525 nm", "1 · 455 nm"], "0.13 µm/px (dv)")
    from tests.zvi_files import Plane, zvi_bytes

    zvi = tmp_path / "cells.zvi"
    zvi.write_bytes(zvi_bytes([Plane(marker, c=0, name="eGFP"), Plane(nuclei, c=3, name="DAPI")], 0.25))
    _drop_and_segment_channel_1(browser, service_url, zvi, ["0 · eGFP", "1 · DAPI"], "0.25 µm/px (zvi)")
    from tests.ims_files import ims_bytes

    imaris = tmp_path / "cells.ims"  # Chromium gives a .ims no image type: sent as octet-stream
    stack = np.stack([marker, nuclei])[None, :, None]  # T, C, Z, Y, X
    imaris.write_bytes(ims_bytes(stack, (0.2, 0.2, 1.0), ["Ki67", "DAPI"]))
    _drop_and_segment_channel_1(browser, service_url, imaris, ["0 · Ki67", "1 · DAPI"], "0.2 µm/px (ims)")


def test_a_file_of_several_images_offers_them_and_each_is_probed_when_chosen(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    """A two-position OME-TIFF: the first image is segmented at once (one channel), the picker
    names both; the second, chosen, brings its own two channels to choose from and is segmented
    as the server segments series=1."""
    tifffile = pytest.importorskip("tifffile")
    nuclei = cv2.imread(str(write_disc_tiff(tmp_path / "nuclei.tif", seed=7)), cv2.IMREAD_UNCHANGED)
    path = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as writer:
        writer.write(nuclei, metadata={"axes": "YX", "Name": "Pos0"})
        writer.write(np.stack([cv2.GaussianBlur(nuclei, (0, 0), 12), np.ascontiguousarray(nuclei[::-1])]),
                     metadata={"axes": "CYX", "Name": "Pos1", "Channel": {"Name": ["Actin", "DAPI"]}})
    page = _new_page(browser, service_url)
    try:
        page.locator("#file-input").set_input_files(str(path))
        first = _wait_for_count(page)
        assert first == _server_count(service_url, path) > 0
        series = page.get_by_label("Image in the file")
        assert series.is_visible()
        size = f"{nuclei.shape[1]}×{nuclei.shape[0]}"
        assert series.locator("option").all_text_contents()[1:] == [f"0 · Pos0 ({size})",
                                                                    f"1 · Pos1 ({size} · 2 ch)"]
        series.select_option("1")
        picker = page.get_by_label("Nuclei channel")
        picker.wait_for(state="visible")
        assert picker.locator("option").all_text_contents()[1:] == ["0 · Actin", "1 · DAPI"]
        picker.select_option("1")
        assert _wait_for_count(page) == _server_count(service_url, path, series="1", channel="1")
    finally:
        page.close()


def test_one_stain_exported_in_blue_is_segmented_at_once_and_the_page_says_which_channel(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    discs = cv2.imread(str(write_disc_tiff(tmp_path / "discs.tif", seed=5)), cv2.IMREAD_UNCHANGED)
    blue = np.zeros((*discs.shape, 3), np.uint8)
    blue[:, :, 0] = (discs >> 8).astype(np.uint8)  # OpenCV writes BGR: blue first
    path = tmp_path / "dapi_rgb.png"
    cv2.imwrite(str(path), blue)
    page = _new_page(browser, service_url)
    try:
        page.locator("#file-input").set_input_files(str(path))
        shown = _wait_for_count(page)  # no choice asked for
        assert shown == _server_count(service_url, path) > 0
        options = page.get_by_label("Nuclei channel").locator("option").all_text_contents()
        assert options[0] == "(default: blue, the only colour with signal)", options
        assert "only the blue channel" in page.locator("#warnings").text_content()
    finally:
        page.close()


@pytest.fixture(scope="module")
def stained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An H&E-like colour PNG: dark purple nuclei (the discs) on a pink field."""
    from tests.api.test_polarity import he_like

    folder = tmp_path_factory.mktemp("stained")
    nuclei = cv2.imread(str(write_disc_tiff(folder / "nuclei.tif", seed=7)), cv2.IMREAD_UNCHANGED)
    path = folder / "stained.png"
    cv2.imwrite(str(path), he_like(nuclei)[:, :, ::-1])  # OpenCV writes BGR
    return path


def test_dark_nuclei_choice_segments_a_colour_stain_without_a_channel(
    browser: Any, service_url: str, stained: Path
) -> None:
    page = _new_page(browser, service_url)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.locator("#file-input").set_input_files(str(stained))
        page.wait_for_function("() => document.getElementById('plane-help').textContent.includes('channel')")
        assert "Dark on a bright background" in page.locator("#plane-help").text_content()
        assert not any("/segment" in url for url in requests), "segmented a colour image without a choice"
        page.get_by_label("Nuclei are").select_option("dark")
        shown = _wait_for_count(page)
        assert any("output=geojson" in url and "polarity=dark" in url for url in requests)
        reply = httpx.post(f"{service_url}/segment", params={"output": "labels", "polarity": "dark"},
                           content=stained.read_bytes(), headers={"Content-Type": "image/png"}, timeout=120)
        assert reply.status_code == 200, reply.text
        assert shown == int(reply.headers["X-Object-Count"]) > 0
        assert "colours mixed" in page.locator("#info-plane").text_content()
    finally:
        page.close()


def test_a_stacks_channels_can_be_measured_on_their_sum_while_the_maximum_is_segmented(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    tifffile = pytest.importorskip("tifffile")
    nuclei = [cv2.imread(str(write_disc_tiff(tmp_path / f"n{k}.tif", seed=k)), cv2.IMREAD_UNCHANGED)
              for k in range(3)]
    marker = [cv2.GaussianBlur(plane, (0, 0), 6) for plane in nuclei]
    stack = tmp_path / "zc.tif"
    tifffile.imwrite(stack, np.stack([np.stack(pair) for pair in zip(marker, nuclei, strict=True)]),
                     imagej=True, metadata={"axes": "ZCYX", "Labels": ["Marker", "DAPI"] * 3})
    page = _new_page(browser, service_url)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.locator("#file-input").set_input_files(str(stack))
        page.get_by_label("Nuclei channel").wait_for(state="visible")
        page.get_by_label("Nuclei channel").select_option("1")
        page.get_by_label("Z-slice").select_option("max")
        _wait_for_count(page)
        page.get_by_label("Measure every channel").check()
        page.get_by_label("… on the sum over Z").check()
        with page.expect_download() as info:
            page.locator("#download-objects").click()
        saved = Path(info.value.path()).read_text()
        assert [url for url in requests if "measure_project=sum" in url and "project=max" in url]
        direct = httpx.post(f"{service_url}/segment", content=stack.read_bytes(), timeout=120,
                            headers={"Content-Type": "image/tiff"},
                            params={"output": "objects", "channel": "1", "project": "max", "measure": "all",
                                    "measure_project": "sum"})
        assert direct.status_code == 200 and saved == direct.text
        assert "mean_intensity_Marker" in saved.splitlines()[0]
    finally:
        page.close()


def test_an_unlabelled_stack_shows_its_warning_and_a_max_projection_is_offered(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    tifffile = pytest.importorskip("tifffile")
    planes = [cv2.imread(str(write_disc_tiff(tmp_path / f"p{k}.tif", seed=k)), cv2.IMREAD_UNCHANGED)
              for k in range(3)]
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack(planes), photometric="minisblack")  # no metadata: pages of unknown kind
    page = _new_page(browser, service_url)
    try:
        page.locator("#file-input").set_input_files(str(stack))
        zplane = page.get_by_label("Z-slice")
        zplane.wait_for(state="visible")
        assert "z-slices, time points or channels" in page.locator("#warnings").text_content()
        zplane.select_option("max")
        assert _wait_for_count(page) == _server_count(service_url, stack, project="max")
        assert page.locator("#info-plane").text_content() == "maximum projection over Z"
        zplane.select_option("sum")
        assert _wait_for_count(page) == _server_count(service_url, stack, project="sum")
        page.wait_for_function("() => document.getElementById('info-plane').textContent.startsWith('sum')")
        assert page.locator("#info-plane").text_content() == "sum projection over Z"

        page.locator("#zoom-in").click()
        assert page.locator("#zoom-level").text_content() == "150%"
        assert "scale(1.5)" in page.locator("#stage").get_attribute("style")
        page.locator("#zoom-reset").click()
        assert page.locator("#zoom-level").text_content() == "100%"
    finally:
        page.close()


def test_a_z_stack_offers_its_nuclei_in_3d_as_a_job_and_saves_its_files(
    browser: Any, service_url: str, tmp_path: Path
) -> None:
    """The button runs POST /jobs?output=labels3d (every slice: no z=), shows the count the job
    found, saves the job's ZIP (the 3-D labels and the table), then deletes the job."""
    tifffile = pytest.importorskip("tifffile")
    image, _ = synth_stack(2, StackConfig(depth=6, size=96, nuclei=5))
    stack = tmp_path / "cells.tif"
    tifffile.imwrite(stack, image, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "spacing": 1.0, "unit": "um"})
    page = _new_page(browser, service_url)
    requests: list[tuple[str, str]] = []
    page.on("request", lambda r: requests.append((r.method, r.url)))
    try:
        page.locator("#file-input").set_input_files(str(stack))
        button = page.get_by_role("button", name="3-D nuclei of the whole stack (ZIP)")
        button.wait_for(state="visible")
        with page.expect_download() as download_info:
            button.click()
        saved = tmp_path / "saved.zip"
        download_info.value.save_as(saved)
        assert download_info.value.suggested_filename == "cells_labels3d.zip"
        page.wait_for_function("() => document.getElementById('progress-box').hidden")
        shown = page.locator("#info-count-3d").text_content()
        assert page.locator("#error").text_content() == ""
        job_ids = {m.group(1) for _, url in requests if (m := re.search(r"/jobs/([0-9a-f]{32})", url))}
        # With cells asked for (set beside a slice's result), the same button grows them in 3-D: a
        # third file in the ZIP.
        page.get_by_label("Z-slice").select_option("max")
        _wait_for_count(page)
        page.get_by_label("Cells: grow each nucleus by (px)").fill("3")
        with page.expect_download() as with_cells:
            button.click()
        saved_cells = tmp_path / "saved_cells.zip"
        with_cells.value.save_as(saved_cells)
        page.wait_for_function("() => document.getElementById('progress-box').hidden")
        assert page.locator("#error").text_content() == ""
        shown_cells = page.locator("#info-count-3d").text_content()
    finally:
        page.close()
    with zipfile.ZipFile(saved) as zipped:
        assert sorted(zipped.namelist()) == ["labels3d.tif", "objects3d.csv"]
        rows = zipped.read("objects3d.csv").decode().strip().splitlines()[1:]
    assert shown == f"{len(rows)} in 6 slices" and rows
    with zipfile.ZipFile(saved_cells) as zipped:
        assert sorted(zipped.namelist()) == ["cells3d.tif", "labels3d.tif", "objects3d.csv"]
        table = zipped.read("objects3d.csv").decode().strip().splitlines()
        assert "cell_volume_voxels" in table[0]
    assert shown_cells == f"{len(table) - 1} in 6 slices, each with its cell grown 3 px in 3-D"
    posts = [url for method, url in requests if method == "POST" and "/jobs?" in url]
    assert len(posts) == 2 and all("output=labels3d" in p and "z=" not in p for p in posts), posts
    assert "expand" not in posts[0] and "expand=3" in posts[1]
    (job_id,) = job_ids
    assert ("GET", f"{service_url}/jobs/{job_id}/files.zip") in requests
    assert ("DELETE", f"{service_url}/jobs/{job_id}") in requests


REDOC_CREDIT_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def test_api_docs_render_offline_and_list_segment(browser: Any, service_url: str) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` load their scripts from assets installed with the package:
    with every request to anywhere but the service aborted, both still list ``POST /segment``."""
    page = browser.new_page(viewport={"width": 1180, "height": 760})
    page.set_default_timeout(60_000)
    blocked: list[str] = []

    def only_the_service(route: Any) -> None:
        if route.request.url.startswith(service_url + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_service)
    loaded: list[str] = []
    page.on("requestfinished", lambda r: loaded.append(r.url))
    try:
        page.goto(service_url + "/docs")
        page.locator(".opblock-summary-path[data-path='/segment']").wait_for()
        assert page.locator(".opblock-post .opblock-summary-path[data-path='/segment']").count() == 1
        page.goto(service_url + "/redoc")
        page.locator("h2", has_text="Segment one image").first.wait_for()  # the operation's section
        page.get_by_text("/segment", exact=True).first.wait_for(state="attached")
    finally:
        page.close()
    # ReDoc's sidebar credit always tries its vendor's logo from a CDN and drops the <img> when that
    # fails (redoc.standalone.js: onError hides it; no option turns it off): cosmetic, allowed.
    outside = [u for u in blocked if u != REDOC_CREDIT_LOGO]
    assert outside == [], f"the docs pages asked for outside resources: {outside}"
    assert any(u.endswith("/swagger-ui-bundle.js") for u in loaded)
    assert any(u.endswith("/redoc.standalone.js") for u in loaded)


# --- large images go through jobs ----------------------------------------------------------------

#: The jobs server's UNET_WEB_JOB_ABOVE_PIXELS: the 192² TIFF stays direct, the 1024² one is a job.
JOB_ABOVE = 512 * 512
#: Every change of the progress bar and its label, recorded in the page as it happens.
RECORD_PROGRESS = """
window.__progress = [];
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("progress");
  const label = document.getElementById("progress-label");
  new MutationObserver(() => window.__progress.push(
    [bar.hasAttribute("value") ? bar.value : null, label.textContent])
  ).observe(document.getElementById("progress-box"),
            {attributes: true, subtree: true, childList: true, characterData: true});
});
"""
JOB_ID = re.compile(r"/jobs/([0-9a-f]{32})(?:/result)?$")


@pytest.fixture(scope="module")
def jobs_service_url(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real model on small tiles, one per run: a 1024² job has a hundred-odd tiles, so its
    progress is seen advancing between the page's polls."""
    with _run_service(tmp_path_factory.mktemp("jobs-service"), model_path,
                      UNET_WEB_JOB_ABOVE_PIXELS=str(JOB_ABOVE), UNET_TILE_SIZE="128", UNET_TILE_OVERLAP="32",
                      UNET_MAX_BATCH_SIZE="1") as url:
        yield url


@pytest.fixture(scope="module")
def large_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_disc_tiff(tmp_path_factory.mktemp("large") / "large.tif", size=1024, seed=7)


def _recording_page(browser: Any, url: str) -> tuple[Any, list[tuple[str, str]]]:
    """A page on the viewer that records its progress bar and every request (method, URL)."""
    page = browser.new_page(viewport={"width": 1180, "height": 760})
    page.set_default_timeout(3 * RESULT_TIMEOUT_MS)  # two jobs of a hundred-odd tiles each
    page.add_init_script(RECORD_PROGRESS)
    requests: list[tuple[str, str]] = []
    page.on("request", lambda r: requests.append((r.method, r.url)))
    page.goto(url + "/")
    return page, requests


def _throttle_uploads(page: Any, bytes_per_s: int, cdp: Any = None) -> Any:
    """Chromium's own network throttling of the page's uploads (-1: none); its DevTools session."""
    if cdp is None:
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                  "uploadThroughput": bytes_per_s})
    return cdp


def test_a_large_image_runs_as_jobs_with_an_advancing_progress_bar_and_its_result_is_shown(
    browser: Any, jobs_service_url: str, large_tiff: Path
) -> None:
    page, requests = _recording_page(browser, jobs_service_url)
    try:
        page.locator("#file-input").set_input_files(str(large_tiff))
        shown = _wait_for_count(page)
        progress = page.evaluate("() => window.__progress")
        width = page.evaluate("() => document.getElementById('preview').naturalWidth")
    finally:
        page.close()
    assert shown == _server_count(jobs_service_url, large_tiff)
    assert width == 1024

    posts = [url for method, url in requests if method == "POST"]
    assert any("/jobs?" in u and "output=probability" in u for u in posts), posts
    assert any("/jobs?" in u and "output=geojson" in u for u in posts), posts
    assert not any("/segment?" in u for u in posts), "a large image was sent to POST /segment"
    # Offline: no host but the service (blob: and data: URLs are the page's own memory).
    network = [url for _, url in requests if url.split(":", 1)[0] in ("http", "https", "ws", "wss")]
    outside = [url for url in network if not url.startswith(jobs_service_url + "/")]
    assert network and not outside, outside

    # The bar showed tiles done of total, and advanced between polls, with a time left.
    fractions = [value for value, label in progress if value is not None and " tiles" in label]
    partial = [f for f in fractions if 0 < f < 1]
    assert partial, f"the bar never showed a job part-way: {progress}"
    assert any(later > partial[0] for later in fractions[fractions.index(partial[0]):]), progress
    eta = re.compile(r"\d+ of \d+ tiles, about \d+ (s|min) left")
    assert any(eta.search(label) for _, label in progress), progress

    # Each job's result was fetched, then the job deleted: nothing left on the server's disk.
    ids = {m.group(1) for _, url in requests if (m := JOB_ID.search(url))}
    assert len(ids) == 2, ids
    for job_id in ids:
        assert ("GET", f"{jobs_service_url}/jobs/{job_id}/result") in requests
        assert ("DELETE", f"{jobs_service_url}/jobs/{job_id}") in requests
        assert httpx.get(f"{jobs_service_url}/jobs/{job_id}", timeout=10).status_code == 404


def test_a_small_image_keeps_the_direct_path(browser: Any, jobs_service_url: str, tiff: Path) -> None:
    page, requests = _recording_page(browser, jobs_service_url)
    try:
        page.locator("#file-input").set_input_files(str(tiff))
        shown = _wait_for_count(page)
    finally:
        page.close()
    assert shown == _server_count(jobs_service_url, tiff)
    posts = [url for method, url in requests if method == "POST"]
    assert any("/segment?" in u and "output=probability" in u for u in posts), posts
    assert not any("/jobs" in u for _, u in requests), requests


def test_cancel_stops_the_job_on_the_server_and_shows_no_result(
    browser: Any, jobs_service_url: str, large_tiff: Path
) -> None:
    page, requests = _recording_page(browser, jobs_service_url)
    try:
        page.locator("#file-input").set_input_files(str(large_tiff))
        # The job is running: some tiles done, not all. The label must name tiles: the same bar
        # shows the upload's fraction first, before the job (and its Cancel button) exists.
        page.wait_for_function(
            "() => { const bar = document.getElementById('progress');"
            " const label = document.getElementById('progress-label').textContent;"
            " return label.includes(' tiles') && bar.hasAttribute('value')"
            " && bar.value > 0 && bar.value < 1; }")
        cancel = page.locator("#cancel-job")
        assert cancel.is_visible()
        cancel.click()
        page.wait_for_function("() => document.getElementById('error').textContent.includes('Cancelled')")
        assert page.locator("#progress-box").is_hidden() and cancel.is_hidden()
        assert page.locator("#info-count").text_content() == "–"
    finally:
        page.close()
    (job_id,) = {m.group(1) for _, url in requests if (m := JOB_ID.search(url))}
    assert ("DELETE", f"{jobs_service_url}/jobs/{job_id}") in requests
    assert ("GET", f"{jobs_service_url}/jobs/{job_id}/result") not in requests
    status = httpx.get(f"{jobs_service_url}/jobs/{job_id}", timeout=10).json()
    assert status["status"] == "cancelled", status


def test_cancel_during_the_upload_stops_it_and_the_page_takes_the_next_file(
    browser: Any, jobs_service_url: str, large_tiff: Path, tiff: Path
) -> None:
    page, requests = _recording_page(browser, jobs_service_url)
    try:
        # Uploads throttled to 64 kB/s: the file (~2 MB) is still being sent when Cancel is pressed.
        cdp = _throttle_uploads(page, 64 * 1024)
        page.locator("#file-input").set_input_files(str(large_tiff))
        page.wait_for_function(
            "() => document.getElementById('progress-label').textContent.includes('uploading')")
        cancel = page.locator("#cancel-job")
        cancel.wait_for(state="visible")
        cancel.click()
        page.wait_for_function("() => document.getElementById('error').textContent.includes('Cancelled')")
        assert page.locator("#progress-box").is_hidden() and cancel.is_hidden()
        assert page.locator("#info-count").text_content() == "–"
        cancelled_requests = list(requests)

        # Nothing of the cancelled file is left running, and the next file is segmented as usual.
        _throttle_uploads(page, -1, cdp)
        page.locator("#file-input").set_input_files(str(tiff))
        shown = _wait_for_count(page)
    finally:
        page.close()
    posts = [url for method, url in cancelled_requests if method == "POST"]
    assert posts == [f"{jobs_service_url}/probe"], cancelled_requests
    assert not any("/jobs" in u for _, u in requests), requests
    assert shown == _server_count(jobs_service_url, tiff)


#: A server that takes 200 kB per request: the project below must be stored to be read at all.
SMALL_UPLOAD_BYTES = 200_000


@pytest.fixture(scope="module")
def small_upload_service(
    model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """The real model behind a 200 kB request limit, and its jobs folder (where stored files go)."""
    jobs = tmp_path_factory.mktemp("small-upload-jobs")
    with _run_service(tmp_path_factory.mktemp("small-upload-service"), model_path,
                      UNET_MAX_UPLOAD_BYTES=str(SMALL_UPLOAD_BYTES), UNET_JOBS_DIR=str(jobs)) as url:
        yield url, jobs


def _project_of_noise_and_nuclei(
    tmp_path: Path, fillers: int, side: int, seed: int, nuclei_last: bool
) -> tuple[Path, int]:
    """``session.lif``: ``fillers`` images of noise (``side`` px square, a LAS X session's other
    acquisitions, making it large) and one of discs (0.5 µm/px), last or first; its path and the
    nuclei image's index."""
    from tests.lif_files import Image, lif_bytes

    nuclei = cv2.imread(str(write_disc_tiff(tmp_path / "nuclei.tif", seed=9)), cv2.IMREAD_UNCHANGED)
    rng = np.random.default_rng(seed)
    noise = [Image(f"Series{k:03d}", rng.integers(0, 4096, (side, side), dtype=np.uint16), "YX", ("Gray",))
             for k in range(1, fillers + 1)]
    discs = Image("Series099" if nuclei_last else "Series000", nuclei, "YX", ("Gray",), 0.5)
    project = tmp_path / "session.lif"
    project.write_bytes(lif_bytes([*noise, discs] if nuclei_last else [discs, *noise]))
    return project, fillers if nuclei_last else 0


def test_a_project_past_the_upload_limit_is_sent_once_and_its_images_segmented(
    browser: Any, small_upload_service: tuple[str, Path], tmp_path: Path
) -> None:
    """A LAS X project three times what one request may carry: the page stores it once (POST
    uploads), then the probe, the preview and the segmentations name it (upload=) and send nothing;
    the image chosen is segmented as the server segments it; the next file frees the stored one."""
    url, jobs = small_upload_service
    project, nuclei_at = _project_of_noise_and_nuclei(tmp_path, fillers=10, side=192, seed=4,
                                                      nuclei_last=True)
    assert project.stat().st_size > 3 * SMALL_UPLOAD_BYTES
    page, requests = _recording_page(browser, url)
    try:
        # Uploads throttled to 256 kB/s: the file takes seconds to store, and the bar says how far
        # it is and how long is left.
        _throttle_uploads(page, 256 * 1024)
        page.locator("#file-input").set_input_files(str(project))
        _wait_for_count(page)  # the first image, segmented at once
        labels = [label for _, label in page.evaluate("() => window.__progress")]
        sending = re.compile(r"Sending the file: uploading \d+% · [\d.]+ (bytes|KB|MB) of [\d.]+ (KB|MB), "
                             r"about \d+ s left")
        assert any(sending.fullmatch(label) for label in labels), labels
        series = page.get_by_label("Image in the file")
        series.select_option(str(nuclei_at))
        page.wait_for_function("() => document.getElementById('info-pixel-size').textContent.includes('lif')")
        shown = _wait_for_count(page)
        (upload_id,) = [p.name for p in (jobs / "uploads").iterdir()]
        first_file = list(requests)
        page.locator("#file-input").set_input_files(str(tmp_path / "nuclei.tif"))
        _wait_for_count(page)
    finally:
        page.close()
    posts = [u for method, u in first_file if method == "POST"]
    assert posts[0] == f"{url}/uploads", posts
    # every later request of that file named the stored copy instead of sending it
    assert all(f"upload={upload_id}" in u for u in posts[1:]), posts
    assert {u.split("?")[0].removeprefix(url) for u in posts[1:]} >= {"/probe", "/ui/preview", "/segment"}
    # the next file freed it
    assert ("DELETE", f"{url}/uploads/{upload_id}") in requests
    assert httpx.get(f"{url}/uploads/{upload_id}", timeout=10).status_code == 404
    # what the page showed is what the server gives for that image of the project
    direct = httpx.post(f"{url}/segment", params={"series": str(nuclei_at)}, content=project.read_bytes(),
                        headers={"Content-Type": "application/octet-stream"}, timeout=120)
    assert direct.status_code == 413  # no request may carry it
    again = httpx.post(f"{url}/uploads", content=project.read_bytes(),
                       headers={"Content-Type": "application/octet-stream"}, timeout=120).json()
    reply = httpx.post(f"{url}/segment", params={"output": "labels", "series": str(nuclei_at),
                                                  "upload": again["id"]}, timeout=120)
    assert reply.status_code == 200, reply.text
    assert shown == int(reply.headers["X-Object-Count"]) > 0


def test_a_piece_lost_while_storing_is_sent_again_from_what_the_server_kept(
    browser: Any, small_upload_service: tuple[str, Path], tmp_path: Path
) -> None:
    """A project of ~11 MB is stored in 8 MiB pieces (a resumable upload); the connection drops on
    the second piece: the page asks the server how far it got (HEAD), sends the rest from there, and
    the stored file is the file, byte for byte; its image is then segmented as the server does."""
    url, jobs = small_upload_service
    project, _ = _project_of_noise_and_nuclei(tmp_path, fillers=5, side=1024, seed=5, nuclei_last=False)
    piece = 8 * 1024 * 1024
    assert piece < project.stat().st_size < 2 * piece
    page, requests = _recording_page(browser, url)
    dropped: list[str] = []

    def drop_the_second_piece(route: Any) -> None:
        if route.request.method == "PATCH" and route.request.headers.get("upload-offset") == str(piece) \
                and not dropped:
            dropped.append(route.request.url)
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/uploads/*", drop_the_second_piece)
    try:
        page.locator("#file-input").set_input_files(str(project))
        shown = _wait_for_count(page)
        labels = [label for _, label in page.evaluate("() => window.__progress")]
        # read before the page is closed (leaving it deletes the stored file)
        (upload_id,) = {u.rsplit("/", 1)[1] for method, u in requests if method == "PATCH"}
        stored = (jobs / "uploads" / upload_id / "data").read_bytes()
        reply = httpx.post(f"{url}/segment", params={"output": "labels", "series": "0", "upload": upload_id},
                           timeout=120)
    finally:
        page.close()
    assert dropped and any(re.fullmatch(r"Sending the file: connection lost at 8\.4 MB; resuming in 1 s "
                                        r"\(try 1 of 5\)", label) for label in labels), labels
    calls = [(method, u.removeprefix(url)) for method, u in requests if "/uploads" in u]
    upload = f"/uploads/{upload_id}"
    assert calls[:5] == [("POST", "/uploads"), ("PATCH", upload), ("PATCH", upload), ("HEAD", upload),
                         ("PATCH", upload)], calls
    assert stored == project.read_bytes()
    assert reply.status_code == 200, reply.text
    assert shown == int(reply.headers["X-Object-Count"]) > 0


def test_the_tables_of_every_image_of_a_project_are_saved_as_one_zip(
    browser: Any, small_upload_service: tuple[str, Path], tmp_path: Path
) -> None:
    """A LAS X project of three images past the upload limit: with the nuclei channel chosen, one
    click saves each image's table (NAME_s0.csv…) and a manifest; the image without that channel is
    listed with the 422 that says so. Every table is what the server gives for that image, and the
    stored file is not sent again."""
    from tests.lif_files import Image, lif_bytes

    url, _ = small_upload_service
    discs = [cv2.imread(str(write_disc_tiff(tmp_path / f"n{k}.tif", seed=k)), cv2.IMREAD_UNCHANGED)
             for k in (11, 12)]
    noise = np.random.default_rng(6).integers(0, 4096, (192, 192), dtype=np.uint16)
    project = tmp_path / "plate.lif"
    project.write_bytes(lif_bytes([
        Image("A1", np.stack([noise, discs[0]]), "CYX", ("Green", "Blue"), 0.5),
        Image("A2", np.stack([noise, discs[1]])[:, :, :100], "CYX", ("Green", "Blue"), 0.5),  # half the discs
        Image("Overview", np.stack([noise] * 10), "ZYX", ("Gray",), 0.5),
    ]))
    assert project.stat().st_size > SMALL_UPLOAD_BYTES
    page, requests = _recording_page(browser, url)
    try:
        page.locator("#file-input").set_input_files(str(project))
        picker = page.get_by_label("Nuclei channel")
        picker.wait_for(state="visible")
        picker.select_option("1")
        _wait_for_count(page)
        posts_before = [u for method, u in requests if method == "POST"]
        with page.expect_download() as info:
            page.locator("#download-every").click()
        assert info.value.suggested_filename == "plate_objects.zip"
        with zipfile.ZipFile(info.value.path()) as archive:
            assert archive.testzip() is None  # every member's CRC-32 checks
            members = {name: archive.read(name) for name in archive.namelist()}
        every = [u for method, u in requests if method == "POST"][len(posts_before):]
    finally:
        page.close()
    assert sorted(members) == ["manifest.json", "plate_s0.csv", "plate_s1.csv"]
    manifest = json.loads(members["manifest.json"])
    assert [(e["series"], e["name"], e["status"]) for e in manifest["images"]] == [
        (0, "A1", 200), (1, "A2", 200), (2, "Overview", 422)]
    assert "channel" in manifest["images"][2]["problem"]["detail"]
    assert every and all("upload=" in u and "output=objects" in u for u in every), every
    stored = httpx.post(f"{url}/uploads", content=project.read_bytes(),
                        headers={"Content-Type": "application/octet-stream"}, timeout=120).json()
    for k in (0, 1):
        reply = httpx.post(f"{url}/segment", params={"upload": stored["id"], "series": str(k), "channel": "1",
                                                      "output": "objects"}, timeout=120)
        assert reply.status_code == 200, reply.text
        assert manifest["images"][k]["object_count"] == int(reply.headers["X-Object-Count"]) > 0
        table = members[f"plate_s{k}.csv"].decode()
        assert table.count("\n") == reply.text.count("\n")  # one row per nucleus, as the server's
    assert manifest["images"][0]["object_count"] > manifest["images"][1]["object_count"]
