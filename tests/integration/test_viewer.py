"""The OHIF viewer at /viewer, driven in Debian's headless Chromium against a real archive.

One archive (``openvna serve --viewer-dir .viewer/ohif``) with the synthetic sample
studies imported serves every test of this module; each browser test gets a fresh page
whose console messages and network traffic are written to ``test-artifacts/viewer/``
beside its screenshots, so that a failure in CI can be read without rerunning it.
Images are judged by their pixels (a rendered CT is not uniform and not black; a cine
shows different pixels on its next frame), not only by the DOM.

Needs ``make viewer`` (the OHIF release) and ``/usr/bin/chromium``; ``make test``
provides both. Under CI (``CI=true``) a missing one fails the tests, elsewhere it skips
them with the reason. Chromium runs with its background connections off: this machine
refuses connections to the outside, and the viewer must not need any.
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)
from playwright.sync_api import Request as BrowserRequest
from playwright.sync_api import Response as BrowserResponse
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, generate_uid

from openvna.sample import GeneratedStudy
from openvna.web.viewer import rebase, study_viewer_url
from tests.conftest import ARTIFACTS, ROOT, ArchiveProcess, free_port, wait_until

pytestmark = pytest.mark.integration

VIEWER_DIST = ROOT / ".viewer" / "ohif"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREEN: ViewportSize = {"width": 1400, "height": 900}
RENDER_TIMEOUT = 60.0
"""Seconds for OHIF to load and draw a study (SwiftShader renders without a GPU)."""
VIEWER_ARTIFACTS = ARTIFACTS / "viewer"

FIRST_VISIT_OVERLAYS = """
sessionStorage.setItem('investigationalUseDialog', 'hidden');
localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
"""
"""What a returning user has already dismissed: OHIF's "investigational use" banner and
its onboarding tour, both drawn over the viewport on a first visit."""

GrayImage = npt.NDArray[np.float32]


def require(condition: bool, message: str) -> None:
    """Fail under CI, skip (with the reason) elsewhere: CI must not skip silently."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class CompressedStudy:
    folder: Path
    study_uid: str


@pytest.fixture(scope="module")
def compressed_ct(
    sample_studies: tuple[Path, list[GeneratedStudy]], tmp_path_factory: pytest.TempPathFactory
) -> CompressedStudy:
    """A sample CT again, as a new study in JPEG 2000 Lossless.

    Its frames go to the browser as stored, so OHIF decodes them with its OpenJPEG
    ``.wasm`` in a web worker: the path that depends on the rebased webpack runtime of
    the worker bundles, which uncompressed studies never exercise.
    """
    _, studies = sample_studies
    ct = study_of(studies, "CT")
    folder = tmp_path_factory.mktemp("jpeg2000")
    study_uid, series_uid = generate_uid(), generate_uid()
    for index, path in enumerate(ct.paths):
        dataset = dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.StudyDescription = "CT CHEST JPEG 2000"
        dataset.compress(JPEG2000Lossless)
        dataset.save_as(folder / f"{index:04d}.dcm", enforce_file_format=True)
    return CompressedStudy(folder, study_uid)


@pytest.fixture(scope="module")
def viewer_archive(
    sample_studies: tuple[Path, list[GeneratedStudy]],
    compressed_ct: CompressedStudy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ArchiveProcess]:
    """An archive serving the installed viewer: the sample studies and ``compressed_ct``."""
    require(
        (VIEWER_DIST / "index.html").is_file(),
        f"the OHIF viewer is not installed in {VIEWER_DIST} (run `make viewer`)",
    )
    samples_dir, _ = sample_studies
    root = tmp_path_factory.mktemp("viewer-archive")
    archive = ArchiveProcess(
        root / "data",
        free_port(),
        "OPENVNA",
        None,
        root / "archive.log",
        ("--viewer-dir", str(VIEWER_DIST)),
    )
    archive.start()
    try:
        archive.cli("import", str(samples_dir), str(compressed_ct.folder))
        yield archive
    finally:
        archive.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require(CHROMIUM.is_file(), f"{CHROMIUM} is missing (make test installs Debian's chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Traffic:
    """What one page said and asked for: written to test-artifacts, asserted on."""

    origin: str
    console: list[str] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    external: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text}")

    def on_page_error(self, error: Exception) -> None:
        self.console.append(f"pageerror: {error}")

    def on_request(self, request: BrowserRequest) -> None:
        url = request.url
        if not url.startswith((self.origin + "/", "data:", "blob:")):
            self.external.append(url)

    def on_response(self, response: BrowserResponse) -> None:
        request = response.request
        self.responses.append(
            {
                "status": response.status,
                "method": request.method,
                "url": response.url,
                "accept": request.headers.get("accept"),
            }
        )

    def on_request_failed(self, request: BrowserRequest) -> None:
        self.failed.append(
            {"method": request.method, "url": request.url, "failure": request.failure}
        )

    def dicomweb(self, minimum_status: int = 0) -> list[dict[str, Any]]:
        return [
            entry
            for entry in self.responses
            if urlsplit(entry["url"]).path.startswith("/dicom-web")
            and entry["status"] >= minimum_status
        ]

    def save(self, name: str) -> Path:
        path = VIEWER_ARTIFACTS / f"{name}.traffic.json"
        record = {
            "console": self.console,
            "responses": self.responses,
            "failed": self.failed,
            "external": self.external,
        }
        path.write_text(json.dumps(record, indent=2), encoding="utf-8")
        return path

    def assert_dicomweb_healthy(self) -> None:
        """No DICOMweb request failed on the server, none was refused, none left the site."""
        server_errors = self.dicomweb(500)
        assert not server_errors, f"DICOMweb requests failed with 5xx: {server_errors}"
        refused = self.dicomweb(400)
        assert not refused, f"DICOMweb requests OHIF made were refused: {refused}"
        dropped = [entry for entry in self.failed if "/dicom-web" in entry["url"]]
        assert not dropped, f"DICOMweb requests broke off: {dropped}"
        assert not self.external, f"the viewer reached outside the archive: {self.external}"


@dataclass
class ViewerPage:
    page: Page
    traffic: Traffic
    archive: ArchiveProcess


@pytest.fixture
def viewer_page(
    browser: Browser, viewer_archive: ArchiveProcess, request: pytest.FixtureRequest
) -> Iterator[ViewerPage]:
    """A fresh browser context on the archive; its traffic is saved whatever the outcome."""
    yield from traced_page(browser, viewer_archive, request.node.name)


def traced_page(
    browser: Browser, archive: ArchiveProcess, test_name: str, *init_scripts: str
) -> Iterator[ViewerPage]:
    """A page in a new context whose console, errors and requests are recorded; on exit
    (whatever the outcome) its last screenshot and traffic go to the artefacts."""
    VIEWER_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=SCREEN, device_scale_factor=1)
    for script in (FIRST_VISIT_OVERLAYS, *init_scripts):
        context.add_init_script(script)
    page = context.new_page()
    traffic = Traffic(archive.http_url)
    page.on("console", traffic.on_console)
    page.on("pageerror", traffic.on_page_error)
    page.on("request", traffic.on_request)
    page.on("response", traffic.on_response)
    page.on("requestfailed", traffic.on_request_failed)
    try:
        yield ViewerPage(page, traffic, archive)
    finally:
        name = re.sub(r"[^\w.-]+", "_", test_name)
        try:
            page.screenshot(path=VIEWER_ARTIFACTS / f"{name}.last.png")
        finally:
            traffic.save(name)
            context.close()


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(url: str, **headers: str) -> Fetched:
    """One GET, redirects not followed, body as sent (still gzip if the server chose)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=60)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(
            "GET", target, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )
        response = connection.getresponse()
        return Fetched(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


def decoded(fetched: Fetched) -> bytes:
    if fetched.headers.get("content-encoding") == "gzip":
        return gzip.decompress(fetched.body)
    return fetched.body


def gray(png: bytes) -> GrayImage:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)


def centre(image: GrayImage, fraction: float = 0.5) -> GrayImage:
    """The middle of a viewport: the image, without the corner text OHIF lays over it."""
    rows, columns = image.shape
    top, left = int(rows * (1 - fraction) / 2), int(columns * (1 - fraction) / 2)
    return image[top : rows - top, left : columns - left]


def shows_an_image(image: GrayImage) -> bool:
    """Drawn pixels: neither uniform nor black (the synthetic studies have structure)."""
    middle = centre(image)
    return float(middle.std()) > 12.0 and float((middle > 20).mean()) > 0.1


def viewport_canvas(page: Page) -> Locator:
    return page.locator("canvas.cornerstone-canvas").first


def wait_for_image(viewer: ViewerPage, what: str) -> GrayImage:
    """Screenshots of the viewport canvas until one shows an image; that image.

    On timeout the failure names the DICOMweb requests that went wrong, which is
    nearly always why nothing was drawn.
    """
    canvas = viewport_canvas(viewer.page)
    expect(canvas).to_be_visible(timeout=RENDER_TIMEOUT * 1000)
    latest: list[GrayImage] = []

    def drawn() -> bool:
        latest[:] = [gray(canvas.screenshot())]
        return shows_an_image(latest[0])

    try:
        wait_until(drawn, RENDER_TIMEOUT, what)
    except AssertionError as error:
        refused = viewer.traffic.dicomweb(400)
        raise AssertionError(f"{error}; DICOMweb requests that failed: {refused}") from None
    return latest[0]


def patient_name(study: GeneratedStudy) -> str:
    """The patient as OHIF's study list writes a PN: ``FAMILY, GIVEN``."""
    name = dcmread(study.paths[0], stop_before_pixels=True).PatientName
    return ", ".join(part for part in (name.family_name, name.given_name) if part)


def study_of(studies: list[GeneratedStudy], modality: str) -> GeneratedStudy:
    return next(study for study in studies if study.modality == modality)


# --------------------------------------------------------------------------- serving


def test_viewer_files_are_served_under_viewer(viewer_archive: ArchiveProcess) -> None:
    """index.html, app-config.js, bundles and wasm: right place, type and caching."""
    base = viewer_archive.http_url

    redirect = fetch(f"{base}/viewer?x=1")
    assert redirect.status in (307, 308)
    assert redirect.headers["location"] == "/viewer/?x=1"
    assert fetch(f"{base}/").headers.get("location") == "/viewer/"

    index = fetch(f"{base}/viewer/")
    assert index.status == 200
    assert index.headers["content-type"].startswith("text/html")
    assert index.headers["cache-control"] == "no-cache"
    html = decoded(index).decode()
    assert 'window.PUBLIC_URL="/viewer/"' in html
    assert not re.search(r'(?:href|src)="/(?!viewer/)', html), "root-relative URL left"
    bundle_name = re.search(r'src="/viewer/(app\.bundle\.[0-9a-f]+\.js)"', html)
    assert bundle_name is not None

    # SPA fallback: OHIF's client routes get index.html; missing files do not
    route = fetch(f"{base}/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert route.status == 200 and decoded(route) == decoded(index)
    assert fetch(f"{base}/viewer/no-such-chunk.js").status == 404

    config = fetch(f"{base}/viewer/app-config.js")
    assert config.status == 200
    assert config.headers["content-type"].startswith("text/javascript")
    assert config.headers["cache-control"] == "no-cache"
    config_text = decoded(config).decode()
    assert '"routerBasename": "/viewer"' in config_text
    assert 'archive + "/dicom-web"' in config_text
    assert "cloudfront" not in config_text  # the release's demo server is never served

    app = fetch(f"{base}/viewer/{bundle_name.group(1)}", accept_encoding="gzip")
    assert app.status == 200
    assert app.headers["content-type"].startswith("text/javascript")
    assert app.headers["content-encoding"] == "gzip"
    assert "immutable" in app.headers["cache-control"]
    assert b'__webpack_require__.p = "/viewer/"' in decoded(app)
    revalidated = fetch(
        f"{base}/viewer/{bundle_name.group(1)}",
        accept_encoding="gzip",
        if_none_match=app.headers["etag"],
    )
    assert revalidated.status == 304 and revalidated.body == b""

    # a lazily loaded chunk and a web worker bundle carry the rebased webpack runtime
    chunks = sorted(VIEWER_DIST.glob("*.bundle.*.js"))
    worker = next(
        path
        for path in chunks
        if b'__webpack_require__.p = "/"' in path.read_bytes() and not path.name.startswith("app.")
    )
    served_worker = fetch(f"{base}/viewer/{worker.name}")
    assert served_worker.status == 200
    assert b'__webpack_require__.p = "/viewer/"' in decoded(served_worker)
    chunk = next(path for path in chunks if not path.name.startswith("app."))
    assert fetch(f"{base}/viewer/{chunk.name}").status == 200

    wasm_path = sorted(VIEWER_DIST.glob("*.wasm"))[0]
    wasm = fetch(f"{base}/viewer/{wasm_path.name}", accept_encoding="identity")
    assert wasm.status == 200
    assert wasm.headers["content-type"] == "application/wasm"
    assert wasm.body == wasm_path.read_bytes()

    css = decoded(fetch(f"{base}/viewer/app.bundle.css")).decode()
    assert "url(/viewer/" in css and not re.search(r"url\(/(?!viewer/)", css)


def test_viewer_not_installed_explains_how_to_install(
    start_archive: Callable[..., ArchiveProcess], tmp_path: Path
) -> None:
    empty = tmp_path / "no-viewer"
    empty.mkdir()
    archive = start_archive("--viewer-dir", str(empty))
    for path in ("/viewer", "/viewer/", "/viewer/app-config.js", "/viewer/viewer"):
        answer = fetch(archive.http_url + path)
        assert answer.status == 404, path
        assert "make viewer" in json.loads(answer.body)["error"]
    assert fetch(archive.http_url + "/").headers.get("location") == "/api/system"


def test_study_viewer_url() -> None:
    assert (
        study_viewer_url("http://pacs:8042/", "1.2.840.1")
        == "http://pacs:8042/viewer/viewer?StudyInstanceUIDs=1.2.840.1"
    )


def test_rebase_moves_root_urls_under_viewer_once() -> None:
    """The literals a PUBLIC_URL "/" build bakes in move under /viewer/, nothing else."""
    html = (
        b'<script>window.PUBLIC_URL="/"</script><link href="/app.css">'
        b'<script src="/viewer/x.js"></script><a href="//cdn.example/x">'
    )
    rebased = rebase(PurePosixPath("index.html"), html)
    assert rebased == (
        b'<script>window.PUBLIC_URL="/viewer/"</script><link href="/viewer/app.css">'
        b'<script src="/viewer/x.js"></script><a href="//cdn.example/x">'
    )
    assert rebase(PurePosixPath("index.html"), rebased) == rebased
    runtime = b'__webpack_require__.p = "/";\nconst route = "/";'
    assert rebase(PurePosixPath("89.bundle.0123456789abcdef.js"), runtime) == (
        b'__webpack_require__.p = "/viewer/";\nconst route = "/";'
    )
    css = b'a{src:url(/f.woff2)}b{background:url("/viewer/i.png")}c{background:url(//x/y)}'
    assert rebase(PurePosixPath("app.bundle.css"), css) == (
        b'a{src:url(/viewer/f.woff2)}b{background:url("/viewer/i.png")}c{background:url(//x/y)}'
    )
    assert rebase(PurePosixPath("assets/logo.png"), b"/") == b"/"


# --------------------------------------------------------------------------- in the browser


def test_study_list_shows_the_sample_studies(
    viewer_page: ViewerPage, sample_studies: tuple[Path, list[GeneratedStudy]]
) -> None:
    """Every sample patient is listed (accented names included), from QIDO-RS."""
    _, studies = sample_studies
    page = viewer_page.page
    page.goto(f"{viewer_page.archive.http_url}/viewer/")
    for name in sorted({patient_name(study) for study in studies}):
        expect(page.get_by_text(name, exact=True).first).to_be_visible(
            timeout=RENDER_TIMEOUT * 1000
        )
    total = len(studies) + 1  # and compressed_ct
    expect(page.get_by_text(re.compile(rf"\b1-{total} of {total}\b"))).to_be_visible()
    png = page.screenshot(path=VIEWER_ARTIFACTS / "study-list.png")
    assert float(gray(png).std()) > 5.0, "the study list page is blank"
    viewer_page.traffic.assert_dicomweb_healthy()


def test_ct_study_renders(
    viewer_page: ViewerPage, sample_studies: tuple[Path, list[GeneratedStudy]]
) -> None:
    """The study link opens the CT and its slice is drawn: structure, not black."""
    _, studies = sample_studies
    ct = study_of(studies, "CT")
    page = viewer_page.page
    page.goto(study_viewer_url(viewer_page.archive.http_url, ct.study_instance_uid))
    image = wait_for_image(viewer_page, "the CT slice to be drawn")
    page.locator(".cornerstone-viewport-element").first.screenshot(
        path=VIEWER_ARTIFACTS / "ct-viewport.png"
    )
    middle = centre(image)
    assert float(middle.std()) > 12.0 and float(middle.max()) > 100.0
    viewer_page.traffic.assert_dicomweb_healthy()
    frames = [entry for entry in viewer_page.traffic.dicomweb() if "/frames/" in entry["url"]]
    assert frames and all(entry["status"] == 200 for entry in frames)


def test_compressed_ct_decodes_in_the_viewer(
    viewer_page: ViewerPage, compressed_ct: CompressedStudy
) -> None:
    """JPEG 2000 frames are decoded by OHIF's worker codec, fetched from /viewer/."""
    page = viewer_page.page
    page.goto(study_viewer_url(viewer_page.archive.http_url, compressed_ct.study_uid))
    image = wait_for_image(viewer_page, "the JPEG 2000 CT slice to be decoded and drawn")
    viewport_canvas(page).screenshot(path=VIEWER_ARTIFACTS / "ct-jpeg2000.png")
    assert float(centre(image).std()) > 12.0
    viewer_page.traffic.assert_dicomweb_healthy()
    codecs = [
        entry
        for entry in viewer_page.traffic.responses
        if urlsplit(entry["url"]).path.endswith(".wasm")
    ]
    assert codecs, "no .wasm codec was fetched"
    assert all(
        entry["status"] == 200 and urlsplit(entry["url"]).path.startswith("/viewer/")
        for entry in codecs
    ), codecs


def test_us_cine_frames_render_and_navigate(
    viewer_page: ViewerPage, sample_studies: tuple[Path, list[GeneratedStudy]]
) -> None:
    """The multi-frame cine draws, and the mouse wheel shows another of its frames."""
    _, studies = sample_studies
    us = study_of(studies, "US")
    page = viewer_page.page
    page.goto(study_viewer_url(viewer_page.archive.http_url, us.study_instance_uid))
    first = wait_for_image(viewer_page, "the first ultrasound frame to be drawn")
    canvas = viewport_canvas(page)
    canvas.screenshot(path=VIEWER_ARTIFACTS / "us-frame-1.png")

    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    latest: list[GrayImage] = []

    def next_frame_drawn() -> bool:
        page.mouse.wheel(0, 120)  # OHIF's stack scroll: one frame per wheel step
        latest[:] = [gray(canvas.screenshot())]
        return (
            shows_an_image(latest[0])
            and float(np.abs(centre(latest[0]) - centre(first)).mean()) > 1.0
        )

    wait_until(next_frame_drawn, RENDER_TIMEOUT, "another cine frame to be drawn")
    canvas.screenshot(path=VIEWER_ARTIFACTS / "us-frame-next.png")
    frames = int(dcmread(us.paths[0], stop_before_pixels=True).NumberOfFrames)
    assert frames > 1
    # OHIF's overlay names the frame shown, "(n/frames)": no longer the first one
    expect(page.get_by_text(re.compile(rf"\((?!1/)\d+/{frames}\)")).first).to_be_visible()
    viewer_page.traffic.assert_dicomweb_healthy()
    frame_numbers = {
        int(match.group(1))
        for entry in viewer_page.traffic.dicomweb()
        if (match := re.search(r"/frames/(\d+)", entry["url"])) and entry["status"] == 200
    }
    assert len(frame_numbers) >= 2, f"frames fetched: {sorted(frame_numbers)}"
