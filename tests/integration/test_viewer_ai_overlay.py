"""OHIF shows the lung SEG of an AI result over its CT, judged by screenshot pixels.

The whole path of issue #4 as a reader sees it: a chest phantom (real CT DICOM with a
known lung mask) is sent with dcmtk's ``storescu`` to an archive serving the viewer with
``--stable-after 1``; the study becomes stable, the built-in ``ct-lung`` model runs in the
AI worker and stores a DICOM SEG (and an SR) into the study. OHIF, in Debian's headless
Chromium, opens the study; the SEG is double-clicked in the study browser and opened
("Do you want to open this Segmentation?" -> Yes) on the CT.

The same slice is captured before and after the SEG is shown. The pixels that changed
must be the segment's colour and must lie where the phantom's lungs are on that slice
(its ground truth, mapped onto the viewport): they cover the lungs and stay off the body
wall, the mediastinum and the air around the body. A SEG that is absent, empty, shifted
by a couple of CT pixels, upside down, far off its slice or body-sized fails.
Screenshots, console messages and requests go to ``test-artifacts/viewer/``.

OHIF drops a SEG it cannot use without saying so on the console (the exception of its
SOP class handler is swallowed); the page therefore reports a failed display set
creation itself (``DISPLAY_SET_ERRORS``), and a missing SEG names both that error and
the SEG's ``/metadata`` elements that came back in an unusable form.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from scipy import ndimage  # type: ignore[import-untyped, unused-ignore]

from openvna.sample.phantoms import ChestPhantom, write_chest_phantom
from openvna.web.viewer import study_viewer_url
from tests.conftest import ArchiveProcess, free_port, run_tool, wait_until
from tests.integration.test_viewer import (
    CHROMIUM,
    CHROMIUM_ARGS,
    RENDER_TIMEOUT,
    VIEWER_ARTIFACTS,
    VIEWER_DIST,
    ViewerPage,
    require,
    traced_page,
    viewport_canvas,
    wait_for_image,
)

pytestmark = pytest.mark.integration

PHANTOM_SLICES, PHANTOM_MATRIX, PHANTOM_SPACING_MM = 48, 256, 6.0
"""A small chest (48 x 256 x 256, 6 mm slices): quick to send, segment and draw."""
AI_TIMEOUT = 90.0
"""Seconds for the study to become stable and ``ct-lung`` to complete (a few here)."""
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
REFERENCED_SERIES = "00081115"

DISPLAY_SET_ERRORS = """
(() => {
  window.__displaySetErrors = [];
  let services;
  Object.defineProperty(window, 'services', {
    configurable: true,
    get() { return services; },
    set(value) {
      services = value;
      try {
        const displaySets = value && value.displaySetService;
        const make = displaySets && displaySets.makeDisplaySets;
        if (typeof make !== 'function') return;
        displaySets.makeDisplaySets = (...args) => {
          try {
            return make(...args);
          } catch (error) {
            const first = Array.isArray(args[0]) ? args[0][0] : undefined;
            const text = `display set of ${first && first.Modality} series ` +
              `${first && first.SeriesInstanceUID} not created: ${error}`;
            window.__displaySetErrors.push(text);
            console.error(text);
            throw error;
          }
        };
      } catch (error) {
        console.warn(`display set errors not watched: ${error}`);
      }
    },
  });
})();
"""
"""OHIF's ``window.services`` is set when the mode starts, before any series is read;
wrapping ``makeDisplaySets`` there makes a SEG that OHIF refuses leave its reason on the
console. Only observes: the error is thrown on as before."""

RgbImage = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ai_viewer_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveProcess]:
    """An archive with the viewer, the built-in models and a one-second stability wait."""
    require(
        (VIEWER_DIST / "index.html").is_file(),
        f"the OHIF viewer is not installed in {VIEWER_DIST} (run `make viewer`)",
    )
    root = tmp_path_factory.mktemp("ai-viewer-archive")
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENVNA_AI__")}
    archive = ArchiveProcess(
        root / "data",
        free_port(),
        "OPENVNA",
        None,
        root / "archive.log",
        ("--viewer-dir", str(VIEWER_DIST), "--stable-after", "1"),
        env=env,
    )
    archive.start()
    try:
        yield archive
    finally:
        archive.stop()


@dataclass(frozen=True)
class LungResult:
    phantom: ChestPhantom
    seg_series_uid: str
    seg_metadata: dict[str, Any]


def get_json(archive: ArchiveProcess, path: str) -> Any:
    request = urllib.request.Request(
        f"{archive.http_url}{path}", headers={"Accept": "application/dicom+json, application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else []


def first_value(dataset: dict[str, Any], tag: str) -> Any:
    values = dataset.get(tag, {}).get("Value") or [None]
    return values[0]


@pytest.fixture(scope="module")
def lung_result(
    ai_viewer_archive: ArchiveProcess, tmp_path_factory: pytest.TempPathFactory
) -> LungResult:
    """The phantom sent with storescu, and the SEG that ``ct-lung`` stored for it."""
    archive = ai_viewer_archive
    phantom = write_chest_phantom(
        tmp_path_factory.mktemp("chest"),
        slices=PHANTOM_SLICES,
        matrix=PHANTOM_MATRIX,
        slice_spacing_mm=PHANTOM_SPACING_MM,
    )
    run_tool("storescu", "-aec", archive.ae_title, *archive.address, *map(str, phantom.paths))
    study = phantom.study_uid
    jobs: list[dict[str, Any]] = []

    def lung_job_ended() -> bool:
        jobs[:] = [
            job
            for job in get_json(archive, f"/api/ai/jobs?study={study}")
            if job["model"] == "ct-lung"
        ]
        return bool(jobs) and jobs[0]["state"] in ("completed", "failed", "cancelled")

    wait_until(lung_job_ended, AI_TIMEOUT, f"the ct-lung job of {study} to end")
    assert jobs[0]["state"] == "completed", f"ct-lung did not complete: {jobs[0]}"

    series = get_json(archive, f"/dicom-web/studies/{study}/series")
    seg_series = [item for item in series if first_value(item, "00080060") == "SEG"]
    assert len(seg_series) == 1, f"expected one SEG series in the study, got {series}"
    seg_uid = str(first_value(seg_series[0], "0020000E"))
    metadata = get_json(archive, f"/dicom-web/studies/{study}/series/{seg_uid}/metadata")
    assert len(metadata) == 1 and first_value(metadata[0], "00080016") == SEG_CLASS
    return LungResult(phantom, seg_uid, metadata[0])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require(CHROMIUM.is_file(), f"{CHROMIUM} is missing (make test installs Debian's chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def overlay_page(
    browser: Browser, ai_viewer_archive: ArchiveProcess, request: pytest.FixtureRequest
) -> Iterator[ViewerPage]:
    """A fresh browser context that reports refused display sets; traffic always saved."""
    yield from traced_page(browser, ai_viewer_archive, request.node.name, DISPLAY_SET_ERRORS)


# --------------------------------------------------------------------------- helpers


def rgb(png: bytes) -> RgbImage:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def save(image: RgbImage, name: str) -> Path:
    path = VIEWER_ARTIFACTS / name
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return path


def cielab_to_rgb(dicom_lab: list[int]) -> npt.NDArray[np.float64]:
    """sRGB (0..255) of a DICOM scaled CIELab triplet (PS3.3 C.10.7.1.1, D65 white)."""
    lightness = dicom_lab[0] / 65535 * 100
    a_star = dicom_lab[1] / 65535 * 255 - 128
    b_star = dicom_lab[2] / 65535 * 255 - 128
    fy = (lightness + 16) / 116
    f = np.array([fy + a_star / 500, fy, fy - b_star / 200])
    xyz = np.where(f**3 > 0.008856, f**3, (f - 16 / 116) / 7.787) * [0.950456, 1.0, 1.088754]
    to_linear_rgb = np.array(
        [
            [3.2404542, -1.5371385, -0.4985314],
            [-0.9692660, 1.8760108, 0.0415560],
            [0.0556434, -0.2040259, 1.0572252],
        ]
    )
    linear = np.clip(to_linear_rgb @ xyz, 0.0, 1.0)
    srgb = np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
    return np.asarray(srgb * 255.0, dtype=np.float64)


def segment_colour(seg: dict[str, Any]) -> npt.NDArray[np.float64]:
    segments = seg["00620002"]["Value"]
    assert len(segments) == 1, f"ct-lung should store one segment, the SEG has {len(segments)}"
    lab = segments[0].get("0062000D", {}).get("Value")
    assert lab, "the lung segment has no Recommended Display CIELab Value (0062,000D)"
    return cielab_to_rgb([int(value) for value in lab])


def unusable_sequences(seg: dict[str, Any]) -> list[str]:
    """Sequences of the SEG's metadata given as a BulkDataURI, not as items.

    DICOM JSON gives a sequence's items inline (PS3.18 Annex F); in place of them a
    BulkDataURI leaves a client such as OHIF with no items. OHIF needs Referenced Series
    Sequence (0008,1115) to tie a SEG to its CT.
    """
    return sorted(
        tag
        for tag, element in seg.items()
        if element.get("vr") == "SQ" and "BulkDataURI" in element
    )


def image_square(before: RgbImage, rows: int, columns: int) -> tuple[int, int, float]:
    """(top, left, screen pixels per image pixel) of the CT inside the viewport shot.

    The phantom fills its whole matrix with air or body (never black), the viewport
    around it is black: the drawn image is the longest run of columns (and of rows)
    whose median is not black (corner text and markers are too small to move a median).
    """
    gray = before.mean(axis=2)
    top, height = longest_run(np.median(gray, axis=1) > 20.0)
    left, width = longest_run(np.median(gray, axis=0) > 20.0)
    assert width and height, "no CT drawn in the viewport"
    scale_x, scale_y = width / columns, height / rows
    assert abs(scale_x - scale_y) / scale_x < 0.03, f"not square pixels: {width}x{height}"
    return top, left, float((scale_x + scale_y) / 2)


def longest_run(flags: npt.NDArray[np.bool_]) -> tuple[int, int]:
    """(start, length) of the longest run of true values (the viewport's 1-pixel
    outline is a run of its own)."""
    padded = np.concatenate(([0], flags.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    starts, stops = edges[::2], edges[1::2]
    if not starts.size:
        return 0, 0
    best = int(np.argmax(stops - starts))
    return int(starts[best]), int(stops[best] - starts[best])


def on_screen(mask: Mask, shape: tuple[int, int], top: int, left: int, scale: float) -> Mask:
    """``mask`` (image pixels) as drawn on a viewport shot of ``shape``, nearest neighbour."""
    screen = np.zeros(shape, dtype=bool)
    rows = ((np.arange(shape[0]) - top + 0.5) / scale).astype(int)
    columns = ((np.arange(shape[1]) - left + 0.5) / scale).astype(int)
    row_ok = (rows >= 0) & (rows < mask.shape[0])
    column_ok = (columns >= 0) & (columns < mask.shape[1])
    inside = np.ix_(np.flatnonzero(row_ok), np.flatnonzero(column_ok))
    screen[inside] = mask[np.ix_(rows[row_ok], columns[column_ok])]
    return screen


def slice_text(page: Page, slices: int) -> Locator:
    """OHIF's overlay that names the slice shown: ``I:7 (7/48)``."""
    return page.get_by_text(re.compile(rf"\(\d+/{slices}\)")).first


def go_to_slice(page: Page, target: int, slices: int) -> None:
    """Scroll the stack with the mouse wheel (one slice per step) until ``target`` shows."""
    canvas = viewport_canvas(page)
    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    label = slice_text(page, slices)
    expect(label).to_be_visible(timeout=RENDER_TIMEOUT * 1000)

    def shown() -> int:
        match = re.search(rf"\((\d+)/{slices}\)", label.inner_text())
        return int(match.group(1)) if match else -1

    def settled_after(previous: int) -> int:
        """The slice shown once scrolling from ``previous`` has stopped (or 10 s)."""
        seen, since, give_up = previous, time.monotonic(), time.monotonic() + 10.0
        while time.monotonic() < give_up:
            now = shown()
            if now != seen:
                seen, since = now, time.monotonic()
            elif seen == target or (seen != previous and time.monotonic() - since > 0.3):
                break
            time.sleep(0.05)
        return seen

    deadline = time.monotonic() + RENDER_TIMEOUT
    current = shown()
    while current != target:
        assert current > 0, f"no slice number in {label.inner_text()!r}"
        assert time.monotonic() < deadline, f"slice {current}, not {target}, after scrolling"
        for _ in range(abs(target - current)):
            page.mouse.wheel(0, 120 if target > current else -120)
        current = settled_after(current)


def stable_shot(page: Page, what: str) -> RgbImage:
    """A viewport screenshot once two in a row are equal (the render has settled)."""
    canvas = viewport_canvas(page)
    shots: list[RgbImage] = [rgb(canvas.screenshot())]

    def settled() -> bool:
        shots.append(rgb(canvas.screenshot()))
        del shots[:-2]
        return shots[0].shape == shots[1].shape and bool(np.abs(shots[0] - shots[1]).max() <= 2.0)

    wait_until(settled, RENDER_TIMEOUT, what)
    return shots[-1]


@dataclass(frozen=True)
class OverlayCheck:
    changed: Mask
    covered: float
    """Share of the (eroded) lungs on screen whose pixels changed."""
    inside: float
    """Share of the changed pixels within the (dilated) lungs on screen."""
    overlap: float
    """Intersection over union of the changed pixels and the lungs on screen."""
    cosine: float
    """Cosine between the mean colour change and the way to the segment colour."""

    def describe(self) -> str:
        return (
            f"{int(self.changed.sum())} pixels changed, {self.covered:.1%} of the lungs "
            f"covered, {self.inside:.1%} of the change inside the lungs, overlap (IoU) "
            f"{self.overlap:.3f}, colour cosine {self.cosine:.2f}"
        )


def check_overlay(
    before: RgbImage, after: RgbImage, lungs: Mask, region: Mask, colour: npt.NDArray[np.float64]
) -> OverlayCheck:
    """Compare two shots of one slice: where pixels changed, and towards which colour."""
    changed = (np.abs(after - before).max(axis=2) > 30.0) & region
    core = ndimage.binary_erosion(lungs, iterations=3)
    margin = ndimage.binary_dilation(lungs, iterations=4)
    covered = float(changed[core].mean()) if core.any() else 0.0
    inside = float(changed[margin].sum() / changed.sum()) if changed.any() else 0.0
    overlap = float((changed & lungs).sum() / max(int((changed | lungs).sum()), 1))
    cosine = 0.0
    if changed[core].any():
        shift = (after[changed & core] - before[changed & core]).mean(axis=0)
        towards = colour - before[changed & core].mean(axis=0)
        cosine = float(shift @ towards / (np.linalg.norm(shift) * np.linalg.norm(towards)))
    return OverlayCheck(changed, covered, inside, overlap, cosine)


def bounding_box(mask: Mask) -> tuple[int, int, int, int]:
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(columns[0]), int(rows[-1]), int(columns[-1])


def seg_thumbnail(page: Page) -> Locator:
    """The SEG's entry in OHIF's study browser (a thumbnail-less series row)."""
    return (
        page.locator("[data-cy^='study-browser-thumbnail']")
        .filter(has=page.locator("[data-cy='series-modality-label']", has_text=re.compile("^SEG$")))
        .first
    )


# --------------------------------------------------------------------------- the test


def test_ai_lung_seg_overlays_its_ct_in_ohif(
    overlay_page: ViewerPage, lung_result: LungResult
) -> None:
    page, traffic = overlay_page.page, overlay_page.traffic
    phantom = lung_result.phantom
    slices = phantom.lung_mask.shape[0]
    colour = segment_colour(lung_result.seg_metadata)

    # the slice with the most lung; OHIF shows instance 1 (the most superior) first
    # and the phantom's volume index 0 is the most inferior slice
    volume_index = int(np.argmax(phantom.lung_mask.sum(axis=(1, 2))))
    shown_index = slices - volume_index
    lung_slice = phantom.lung_mask[volume_index]

    page.goto(study_viewer_url(overlay_page.archive.http_url, phantom.study_uid))
    wait_for_image(overlay_page, "the phantom CT to be drawn")
    go_to_slice(page, shown_index, slices)
    before = stable_shot(page, "the CT slice to settle before the SEG")
    save(before, "ai-seg-before.png")

    thumbnail = seg_thumbnail(page)
    try:
        expect(thumbnail).to_be_visible(timeout=RENDER_TIMEOUT * 1000)
    except AssertionError:
        refused = page.evaluate("() => window.__displaySetErrors || []")
        raise AssertionError(
            "OHIF shows no SEG in the study browser. Display sets OHIF refused: "
            f"{refused or 'none reported'}. Sequences of the SEG's WADO-RS metadata sent "
            f"as BulkDataURI instead of items: {unusable_sequences(lung_result.seg_metadata)}"
            f" (OHIF needs {REFERENCED_SERIES}, Referenced Series Sequence, inline)."
        ) from None
    expect(thumbnail).to_contain_text("ct-lung")
    thumbnail.dblclick()

    # OHIF previews the SEG on its CT and asks whether to open (hydrate) it
    prompt = page.get_by_text("Do you want to open this Segmentation?")
    expect(prompt).to_be_visible(timeout=RENDER_TIMEOUT * 1000)
    page.get_by_role("button", name="Yes").click()
    expect(prompt).to_be_hidden(timeout=RENDER_TIMEOUT * 1000)

    # opening a SEG jumps to its first frame: back to the slice shot before
    go_to_slice(page, shown_index, slices)
    top, left, scale = image_square(before, *lung_slice.shape)
    lungs = on_screen(lung_slice, before.shape[:2], top, left, scale)
    region = on_screen(np.ones_like(lung_slice), before.shape[:2], top, left, scale)
    region = ndimage.binary_erosion(region, iterations=2)

    latest: list[OverlayCheck] = []
    after_shots: list[RgbImage] = []

    def overlay_drawn() -> bool:
        after_shots[:] = [stable_shot(page, "the viewport to settle with the SEG")]
        latest[:] = [check_overlay(before, after_shots[0], lungs, region, colour)]
        return latest[0].covered > 0.95

    try:
        wait_until(overlay_drawn, RENDER_TIMEOUT, "the SEG overlay to cover the lungs")
    except AssertionError as error:
        if not latest:
            raise
        raise AssertionError(f"{error}: {latest[0].describe()}") from None
    finally:
        if after_shots:
            save(after_shots[0], "ai-seg-after.png")
    after, result = after_shots[0], latest[0]
    changes = np.where(result.changed[..., None], after, after * 0.25)
    save(changes, "ai-seg-changed.png")

    # ct-lung finds this phantom's lungs almost exactly (IoU 0.996 on this slice, as
    # drawn): a SEG shifted by a couple of CT pixels, upside down, far off its slice or
    # drawn over the body fails at least one of these
    assert result.covered > 0.95, result.describe()
    assert result.inside > 0.98, f"overlay outside the lungs: {result.describe()}"
    assert result.overlap > 0.95, f"overlay not on the lungs: {result.describe()}"
    assert result.cosine > 0.8, f"the change is not towards {colour.round()}: {result.describe()}"
    expected_box, drawn_box = bounding_box(lungs), bounding_box(result.changed)
    tolerance = 2 * scale
    assert all(
        abs(drawn - expected) <= tolerance
        for drawn, expected in zip(drawn_box, expected_box, strict=True)
    ), f"overlay box {drawn_box} (top, left, bottom, right), lungs at {expected_box}"

    refused = page.evaluate("() => window.__displaySetErrors || []")
    assert not refused, f"OHIF refused display sets: {refused}"
    seg_requests = [
        entry for entry in traffic.dicomweb() if lung_result.seg_series_uid in entry["url"]
    ]
    assert any("/instances/" in entry["url"] for entry in seg_requests), seg_requests
    traffic.assert_dicomweb_healthy()
