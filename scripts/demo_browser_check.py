r"""Checks the web demo in a real headless browser: the page loads, a video uploads, the top-5 appears, a screenshot.

  python scripts/demo_browser_check.py --url=http://127.0.0.1:7860/ --video=clip.mp4
  python scripts/demo_browser_check.py --checkpoint=/work/finetune           # serves the demo itself, then checks

Drives Chromium through Playwright (`pip install playwright`; no `playwright install`: it uses the system's
Chromium, --chromium or $CHROMIUM, default /usr/bin/chromium, e.g. Debian's `apt-get install chromium`). It opens
the page, uploads --video through the page's file input (default: the demo's first bundled example when it serves
the demo itself), presses Predict, and waits until every one of the labels that the demo's /predict endpoint gives
for the same file (asked through gradio_client) is shown in the top-5 box. Then it writes a full-page screenshot to
--out (default $VIDJAX_ARTIFACTS_DIR/demo_page.png, else artifacts/demo_page.png at the repository root) and
prints one JSON line: {"url", "video", "labels", "found", "screenshot", "seconds"}.

With --checkpoint (instead of --url) the demo is started in this process on a free port (vidjax and the demo extra
needed) and stopped at the end. Exit status 0 when the top-5 was found, 1 when it was not within --timeout
seconds (the screenshot is still written, to show what the page did show), 2 for bad arguments or no Chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Headless, no sandbox (containers run as root), and none of the background traffic a sandboxed machine cannot make.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def default_screenshot() -> pathlib.Path:
    """$VIDJAX_ARTIFACTS_DIR/demo_page.png, else artifacts/demo_page.png at the repository root."""
    return pathlib.Path(os.environ.get("VIDJAX_ARTIFACTS_DIR") or ROOT / "artifacts") / "demo_page.png"


def find_chromium(explicit: str = "") -> str | None:
    """The Chromium to drive: `explicit`, else $CHROMIUM, else /usr/bin/chromium; None when it is not there."""
    for candidate in (explicit, os.environ.get("CHROMIUM", ""), DEFAULT_CHROMIUM):
        if candidate:
            return candidate if os.access(candidate, os.X_OK) else shutil.which(candidate)
    return None


def check_page(url: str, video: str, screenshot: pathlib.Path, *, chromium: str, timeout_s: float = 30.0) -> dict:
    """Uploads `video` on the demo page at `url`, presses Predict and waits for /predict's labels in the top-5 box;
    writes `screenshot` either way. Returns {"url", "video", "labels", "found", "screenshot", "seconds"}."""
    from gradio_client import Client, handle_file
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    start = time.monotonic()
    labels = list(Client(url, verbose=False).predict(handle_file(video), api_name="/predict"))
    found = False
    timeout_ms = timeout_s * 1000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
            page.set_input_files("#video input[type=file]", video, timeout=timeout_ms)
            # The upload is done when the player shows it; pressing Predict earlier would send no video.
            page.wait_for_selector("#video video", timeout=timeout_ms)
            page.click("#predict", timeout=timeout_ms)
            box = page.locator("#labels")
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not found:
                text = box.inner_text(timeout=timeout_ms)
                found = all(label in text for label in labels)
                if not found:
                    page.wait_for_timeout(200)
        except PlaywrightError as e:
            print(f"error: the page did not do what was expected: {e}", file=sys.stderr)
        finally:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            if browser.contexts and browser.contexts[0].pages:
                browser.contexts[0].pages[0].screenshot(path=str(screenshot), full_page=True)
            browser.close()
    return {"url": url, "video": video, "labels": labels, "found": found, "screenshot": str(screenshot),
            "seconds": round(time.monotonic() - start, 2)}


def _serve(checkpoint: str):
    """(url, first example's path, stop function) of the demo for `checkpoint`, served from this process."""
    from vidjax import pretrained
    from vidjax.commands import demo

    model = pretrained.load_for_command(checkpoint)
    if model is None:
        sys.exit(2)
    app = demo.Demo(model, settings=demo.Settings(num_examples=1), checkpoint=checkpoint)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page = app.launch(port=port, prevent_thread_lock=True, quiet=True)

    def stop():
        page.close()
        app.cleanup()

    return f"http://127.0.0.1:{port}/", app.examples[0][0], stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/demo_browser_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running demo (`python -m vidjax.demo`), e.g. http://127.0.0.1:7860/")
    where.add_argument("--checkpoint", metavar="DIR", help="serve the demo for this checkpoint here, then check it")
    parser.add_argument("--video", default="", help="the video to upload (default with --checkpoint: an example)")
    parser.add_argument("--out", default="", metavar="PNG", help=f"screenshot path (default {default_screenshot()})")
    parser.add_argument("--chromium", default="", help=f"Chromium binary (default $CHROMIUM or {DEFAULT_CHROMIUM})")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each step (default 30)")
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print(f"error: no Chromium at {args.chromium or os.environ.get('CHROMIUM') or DEFAULT_CHROMIUM}; install "
              f"it (Debian: `apt-get install chromium`) or pass --chromium=PATH.", file=sys.stderr)
        return 2
    if args.url and not args.video:
        print("error: --url needs --video=FILE, the video to upload.", file=sys.stderr)
        return 2
    if args.video and not os.path.isfile(args.video):
        print(f"error: --video={args.video}: no such file.", file=sys.stderr)
        return 2
    url, video, stop = (args.url, args.video, None) if args.url else _serve(args.checkpoint)
    try:
        result = check_page(url, args.video or video, pathlib.Path(args.out) if args.out else default_screenshot(),
                            chromium=chromium, timeout_s=args.timeout)
    finally:
        if stop is not None:
            stop()
    print(json.dumps(result))
    if not result["found"]:
        print(f"error: the labels {result['labels']} did not all appear on the page within {args.timeout:g} s; see "
              f"{result['screenshot']}.", file=sys.stderr)
    return 0 if result["found"] else 1


if __name__ == "__main__":
    sys.exit(main())
