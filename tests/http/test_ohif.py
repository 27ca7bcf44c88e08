"""OHIF, the web viewer, shows studies stored in dicomstore (issue 14, item 2).

The built viewer is the ``dist/`` of the npm package ``@ohif/app`` (fetched once with
``npm pack`` into a cache folder), served by a small static server with an ``app-config.js``
whose ``dicomweb`` data source is ``dicomstore serve --http-port`` (a real subprocess, with
``--http-cors-origin`` naming the viewer's origin). For each study, headless Chromium opens
``/viewer?StudyInstanceUIDs=…`` and waits until the viewport's canvas shows a non-uniform
image; then no request to dicomstore may have failed (the DevTools network log). On failure
a screenshot, the page's console log and the failed requests are written to a temporary
folder named in the message.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from browser_testlib import NetworkLog, chromium
from http_testlib import stow_post
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from tests.conftest import free_port, serve_command, wait_listening

#: The viewer's version, pinned: a new one is a deliberate change of this test.
OHIF_VERSION = "3.13.2"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dicomstore-tests"
#: How long the viewer may take to show an image (it loads ~40 MB of scripts first).
RENDER_TIMEOUT = 60

#: The data source of the viewer's app-config.js; ``{root}`` is dicomstore's base URL.
APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumberOfWebWorkers: 2,
  defaultDataSourceName: 'dicomstore',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomstore',
      configuration: {
        friendlyName: 'dicomstore',
        name: 'dicomstore',
        qidoRoot: '%(root)s',
        wadoRoot: '%(root)s',
        wadoUriRoot: '%(root)s',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
"""


def ohif_dist() -> Path:
    """The built viewer of ``@ohif/app`` at :data:`OHIF_VERSION`, unpacked once in the cache."""
    home = CACHE / f"ohif-{OHIF_VERSION}"
    dist = home / "package" / "dist"
    if (dist / "index.html").exists():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "npm is needed to fetch the OHIF viewer: apt-get install nodejs npm "
            "(scripts/run-tests.sh installs them)"
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        packed = subprocess.run(
            [npm, "pack", f"@ohif/app@{OHIF_VERSION}", "--pack-destination", work, "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if packed.returncode != 0:
            pytest.fail(f"npm pack @ohif/app@{OHIF_VERSION} failed: {packed.stderr.strip()}")
        tarball = Path(work) / packed.stdout.strip().splitlines()[-1]
        unpacked = Path(work) / "unpacked"
        with tarfile.open(tarball) as tar:
            tar.extractall(unpacked, filter="data")
        try:
            unpacked.rename(home)  # atomic: a concurrent run either wins or finds it done
        except OSError:
            if not (dist / "index.html").exists():
                raise
    return dist


class ViewerHandler(http.server.SimpleHTTPRequestHandler):
    """The viewer's files; ``/app-config.js`` from the test; any other unknown path is the
    single-page app's ``index.html`` (its router handles ``/viewer`` and the rest)."""

    app_config = b""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(self.app_config)))
            self.end_headers()
            self.wfile.write(self.app_config)
            return
        if not Path(self.translate_path(path)).is_file():
            self.path = "/index.html"
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def part10(ds: pydicom.Dataset) -> bytes:
    """``ds`` as a PS3.10 file, in its own transfer syntax."""
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ct_series(description: str, count: int = 4) -> list[bytes]:
    """``count`` slices of pydicom's CT_small (uncompressed), a new study, 5 mm apart."""
    study, series = generate_uid(), generate_uid()
    files = []
    for n in range(count):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyDescription = description
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        x, y, z = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, float(z) + 5 * n]
        ds.SliceLocation = float(z) + 5 * n
        files.append(part10(ds))
    return files


def single(name: str, description: str) -> list[bytes]:
    """One of pydicom's test files with new UIDs (a study of its own)."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyDescription = description
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    return [part10(ds)]


#: Each case: its Study Description (shown in the study list) and its files.
STUDIES: dict[str, tuple[str, Callable[[str], list[bytes]]]] = {
    "uncompressed CT series": ("OHIF test CT", ct_series),
    "JPEG baseline": ("OHIF test JPEG", lambda d: single("SC_rgb_jpeg_dcmtk.dcm", d)),
    "JPEG 2000": ("OHIF test J2K", lambda d: single("JPEG2000.dcm", d)),
}


@pytest.fixture(scope="module")
def ports() -> tuple[int, int]:
    """dicomstore's DICOMweb port and the viewer's."""
    return free_port(), free_port()


@pytest.fixture(scope="module")
def serve_log(tmp_path_factory) -> Path:
    """Where ``dicomstore serve`` writes its log (copied into the evidence on failure)."""
    return tmp_path_factory.mktemp("ohif") / "serve.log"


@pytest.fixture(scope="module")
def dicomstore_url(serve_log: Path, ports: tuple[int, int]) -> Iterator[str]:
    """``dicomstore serve`` with DICOMweb on a free port, CORS open to the viewer's origin."""
    http_port, viewer_port = ports
    command = serve_command(
        free_port(),
        serve_log.parent / "store",
        "--fsync",
        "off",
        "--http-port",
        str(http_port),
        "--http-cors-origin",
        f"http://127.0.0.1:{viewer_port}",
    )
    with serve_log.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log)
        try:
            wait_listening(http_port, proc)
            yield f"http://127.0.0.1:{http_port}"
        finally:
            proc.terminate()
            proc.wait(30)


@pytest.fixture(scope="module")
def studies(dicomstore_url: str) -> dict[str, str]:
    """Each case of :data:`STUDIES` stored through STOW-RS: its Study Instance UID."""
    uids = {}
    with httpx.Client(base_url=dicomstore_url, timeout=30) as client:
        for case, (description, make) in STUDIES.items():
            files = make(description)
            reply = stow_post(client, files)
            assert reply.status_code == 200, reply.text
            uids[case] = pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID
    return uids


@pytest.fixture(scope="module")
def viewer(dicomstore_url: str, ports: tuple[int, int]) -> Iterator[str]:
    """The OHIF dist on the viewer's port, its data source ``dicomstore_url``."""
    dist = ohif_dist()
    config = (APP_CONFIG % {"root": dicomstore_url}).encode()
    handler = type("Handler", (ViewerHandler,), {"app_config": config})

    def make(*args: Any) -> ViewerHandler:
        return handler(*args, directory=str(dist))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", ports[1]), make)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{ports[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium"), network_log=True) as driver:
        yield driver


#: The statistics of the viewport's canvas: how many pixels, how many differ from the first.
CANVAS_STATS = """
const canvas = document.querySelector('.cornerstone-canvas')
  || document.querySelector('[data-viewport-uid] canvas');
if (!canvas || !canvas.width || !canvas.height) return null;
const copy = document.createElement('canvas');
copy.width = canvas.width; copy.height = canvas.height;
const ctx = copy.getContext('2d');
ctx.drawImage(canvas, 0, 0);
const data = ctx.getImageData(0, 0, copy.width, copy.height).data;
const levels = new Set();
let lit = 0;
for (let i = 0; i < data.length; i += 4) {
  const v = (data[i] + data[i + 1] + data[i + 2]);
  levels.add(v);
  if (v > 30) lit++;
}
return {width: copy.width, height: copy.height, levels: levels.size, lit: lit};
"""


@pytest.mark.parametrize(
    "case",
    [
        "uncompressed CT series",
        "JPEG baseline",
        "JPEG 2000",
    ],
)
def test_ohif_shows_the_study(
    case: str, studies, viewer, dicomstore_url, browser, serve_log
) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    network = NetworkLog(browser, dicomstore_url)
    network.forget()  # the earlier cases' requests and console lines
    browser.get_log("browser")
    browser.get(f"{viewer}/viewer?StudyInstanceUIDs={studies[case]}")
    canvas: dict[str, Any] = {}

    def shown_or_failed(driver: Any) -> bool:
        """The image is in the viewport and every request ended, or a request failed."""
        canvas.update(driver.execute_script(CANVAS_STATS) or {})
        shown = canvas.get("levels", 0) > 16 and canvas.get("lit", 0) > 100
        return bool(network.update().failed) or (shown and network.idle)

    problems = []
    try:
        WebDriverWait(browser, RENDER_TIMEOUT).until(shown_or_failed)
    except TimeoutException:
        problems.append(f"no image in the viewport after {RENDER_TIMEOUT} s: canvas {canvas}")
    problems += [f"request to dicomstore: {line}" for line in network.failed]
    if network.answered == 0:
        problems.append("no request reached dicomstore")
    if problems:
        folder = save_evidence(browser, case, problems, serve_log)
        message = f"{case}: " + "; ".join(problems) + f" (screenshot and logs in {folder})"
        pytest.fail(message)


def test_ohif_study_list_shows_every_study(
    studies, viewer, dicomstore_url, browser, serve_log
) -> None:
    """The viewer's study list (QIDO-RS ``/studies``) names every stored study."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    network = NetworkLog(browser, dicomstore_url)
    network.forget()
    browser.get_log("browser")
    browser.get(f"{viewer}/")
    wanted = [description for description, _ in STUDIES.values()]

    def listed_or_failed(driver: Any) -> bool:
        text = driver.find_element(By.TAG_NAME, "body").text
        return bool(network.update().failed) or all(a in text for a in wanted)

    problems = []
    try:
        WebDriverWait(browser, RENDER_TIMEOUT).until(listed_or_failed)
    except TimeoutException:
        text = browser.find_element(By.TAG_NAME, "body").text
        missing = [a for a in wanted if a not in text]
        problems.append(f"the study list lacks {missing} after {RENDER_TIMEOUT} s")
    problems += [f"request to dicomstore: {line}" for line in network.failed]
    if problems:
        folder = save_evidence(browser, "study list", problems, serve_log)
        pytest.fail("; ".join(problems) + f" (screenshot and logs in {folder})")


def save_evidence(driver: Any, case: str, problems: list[str], serve_log: Path) -> Path:
    """A screenshot, the console log, dicomstore's log and the problems, in a new
    temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="ohif-" + case.replace(" ", "-") + "-"))
    driver.save_screenshot(str(folder / "screenshot.png"))
    console = driver.get_log("browser")
    (folder / "console.json").write_text(json.dumps(console, indent=1))
    (folder / "problems.txt").write_text("\n".join(problems) + "\n")
    shutil.copy(serve_log, folder / "serve.log")
    return folder
