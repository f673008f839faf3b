"""The OHIF viewer behind authentication, driven in headless Chromium.

With ``security.require_auth`` on, opening a study link sends the browser to the login
page; after a password login the session cookie (HttpOnly, SameSite=Strict) carries every
DICOMweb request OHIF makes, and the CT is drawn. A browser without the cookie gets
nothing from DICOMweb.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from openvna.sample import GeneratedStudy
from openvna.web.viewer import study_viewer_url
from tests.conftest import ArchiveProcess, free_port, openvna_command
from tests.integration.test_viewer import (  # noqa: F401 - browser is a fixture
    VIEWER_DIST,
    ViewerPage,
    browser,
    centre,
    require,
    study_of,
    traced_page,
    wait_for_image,
)

pytestmark = pytest.mark.integration

USERNAME = "rita"
PASSWORD = "a long pass phrase for rita"


@pytest.fixture(scope="module")
def secured_archive(
    sample_studies: tuple[Path, list[GeneratedStudy]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ArchiveProcess]:
    """An archive with authentication on, the samples imported, one radiologist."""
    require(
        (VIEWER_DIST / "index.html").is_file(),
        f"the OHIF viewer is not installed in {VIEWER_DIST} (run `make viewer`)",
    )
    samples_dir, _ = sample_studies
    root = tmp_path_factory.mktemp("viewer-login")
    data_dir = root / "data"
    env = {
        **os.environ,
        "OPENVNA_SECURITY__REQUIRE_AUTH": "true",
        "OPENVNA_SECURITY__DICOM_AES": json.dumps(
            [{"ae_title": "ECHOSCU", "roles": ["technologist"]}]
        ),
    }
    subprocess.run(
        [
            *openvna_command(),
            *("user", "add", USERNAME, "--role", "radiologist", "--password-stdin"),
            *("--data-dir", str(data_dir)),
        ],
        input=PASSWORD,
        text=True,
        check=True,
        capture_output=True,
        env=env,
    )
    archive = ArchiveProcess(
        data_dir,
        free_port(),
        "OPENVNA",
        None,
        root / "archive.log",
        ("--viewer-dir", str(VIEWER_DIST)),
        env,
    )
    archive.start()
    try:
        archive.cli("import", str(samples_dir))
        yield archive
    finally:
        archive.stop()


@pytest.fixture
def login_page(
    browser: Browser,  # noqa: F811 - the fixture imported above
    secured_archive: ArchiveProcess,
    request: pytest.FixtureRequest,
) -> Iterator[ViewerPage]:
    yield from traced_page(browser, secured_archive, request.node.name)


def test_dicomweb_refuses_a_request_without_credentials(secured_archive: ArchiveProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{secured_archive.http_url}/dicom-web/studies", timeout=30)
    assert refused.value.code == 401


def test_study_link_asks_for_login_then_the_ct_renders(
    login_page: ViewerPage, sample_studies: tuple[Path, list[GeneratedStudy]]
) -> None:
    _, studies = sample_studies
    ct = study_of(studies, "CT")
    page = login_page.page
    page.goto(study_viewer_url(login_page.archive.http_url, ct.study_instance_uid))
    page.wait_for_url("**/login?**", timeout=30_000)
    page.fill("#username", USERNAME)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/viewer/**", timeout=30_000)
    image = wait_for_image(login_page, "the CT slice to be drawn after login")
    assert float(centre(image).std()) > 12.0
    cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
    session = cookies["openvna_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    login_page.traffic.assert_dicomweb_healthy()
    frames = [entry for entry in login_page.traffic.dicomweb() if "/frames/" in entry["url"]]
    assert frames and all(entry["status"] == 200 for entry in frames)


def test_wrong_password_stays_on_the_login_page(login_page: ViewerPage) -> None:
    page = login_page.page
    page.goto(f"{login_page.archive.http_url}/viewer/")
    page.wait_for_url("**/login?**", timeout=30_000)
    page.fill("#username", USERNAME)
    page.fill("#password", "not the password at all")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "/viewer/" not in page.url.split("?")[0]
    assert "openvna_session" not in {cookie["name"] for cookie in page.context.cookies()}
