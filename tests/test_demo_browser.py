"""The web demo in a real headless Chromium: scripts/demo_browser_check.py uploads a video on the page served here,
finds the top-5 that /predict gives, and writes a screenshot (artifacts/demo_page.png, or $VIDJAX_ARTIFACTS_DIR).

Chromium is the system's (/usr/bin/chromium or $CHROMIUM), never a Playwright download. Missing: installed with
apt-get where CI is set and this is root on a Debian-like machine; otherwise the test is skipped, saying how to
install it.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from test_predict import make_clip

pytest.importorskip("playwright")
pytest.importorskip("gradio")
from test_demo import FIXTURES, serve  # noqa: E402

from vidjax import pretrained  # noqa: E402
from vidjax.commands.convert import convert  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "demo_browser_check.py"
INSTALL = "apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def chromium():
    """The Chromium binary, installed first on a CI machine that lacks it; skips the test where there is none."""
    path = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
    if os.access(path, os.X_OK):
        return path
    if os.environ.get("CI") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(INSTALL, shell=True, check=True, timeout=600)
        if os.access(path, os.X_OK):
            return path
    pytest.skip(f"no Chromium at {path} (set $CHROMIUM to another); install it with `{INSTALL}` "
                f"(as root on Debian/Ubuntu), or run with CI=1 as root to have this test install it")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_browser")
    convert(from_hf=str(FIXTURES / "videomae_classification_bin" / "source"), out=str(folder / "classifier"))
    model = pretrained.load(folder / "classifier")
    app, page, client = serve(model, checkpoint=str(folder / "classifier"), num_examples=1)
    yield app, page.local_url, make_clip(folder / "upload.mp4", seed=7)
    page.close()
    app.cleanup()


@pytest.mark.slow
def test_the_page_shows_the_top_5_of_an_uploaded_video(chromium, server):  # chromium first: skip before serving
    app, url, video = server
    proc = subprocess.run([sys.executable, str(SCRIPT), f"--url={url}", f"--video={video}", f"--chromium={chromium}",
                           "--timeout=40"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = list(app.predict(video))  # the top 5, best first
    assert result["found"] is True and result["labels"] == expected and len(expected) == 5
    screenshot = pathlib.Path(result["screenshot"])
    artifacts = pathlib.Path(os.environ.get("VIDJAX_ARTIFACTS_DIR") or ROOT / "artifacts")
    assert screenshot == artifacts / "demo_page.png"
    data = screenshot.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 20_000  # a rendered page, not a blank image
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the IHDR chunk
    assert width == 1280 and height >= 600
