r"""Many users at once on the web demo: concurrent requests, good and bad files, checked answers, latency, memory.

  python scripts/load_demo.py --checkpoint=/work/finetune
  python scripts/load_demo.py --checkpoint=DIR --requests=200 --clients=16 --json=load.json
  python scripts/load_demo.py --checkpoint=DIR --demo_args="--concurrency=8 --max_batch=32"

Starts `python -m vidjax.demo --checkpoint=DIR` in its own process on 127.0.0.1 (a free port, --window, --max_mb,
--max_seconds, no examples; --demo_args adds flags), so that the memory read is the server's alone. It writes its
files into a temporary folder: 3 good noise clips (2 s, 25 fps, 40x56), and four it must refuse: a truncated mp4, a
text file, a good clip padded over --max_mb, and a small clip longer than --max_seconds. Then --clients threads,
each with its own gradio_client, share --requests calls to /predict, taking the files in turn (6 good and 4 bad in
every 10), each call bounded by --timeout seconds; the run ends when every request has been answered or has timed
out. Each good answer must equal the checkpoint run directly in this process on the same file
(`vidjax.tasks.predictions.prediction_entry` with the demo's window): the same top labels in the same order, values
within 1e-5. Each bad file must be refused with its message (what was wrong, and the flag). A traceback in the server's
log counts as a server error. The server's resident memory (VmRSS of /proc/PID/status) is read after the first 20
answers and after the last.

Prints one JSON report (and writes it to --json): requests, clients, good / bad counts, answered_correctly,
refused_as_expected, wrong ([{request, file, why}]), server_errors, latency_s (p50 / p95 / max of good and of bad
requests, from submit to answer), rss_mb (after_first_20, after_run, growth as a fraction), seconds and
requests_per_s. Latencies are wall-clock on whatever else the machine is doing: compare runs on one idle machine.

Exit status 0 when every answer was right, no server error was logged and RSS grew by less than 10%; 1 otherwise;
2 for bad arguments or a demo that did not start within --start_timeout seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

FIRST = 20  # answers after which the first RSS is read
KINDS = ("good", "good", "truncated", "good", "large", "good", "text", "good", "long", "good")
GOOD_CLIPS = 3
RSS_GROWTH_LIMIT = 0.10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux: /proc/PID/status)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS line in /proc/{pid}/status")


def write_files(folder: pathlib.Path, max_mb: float, max_seconds: float) -> dict[str, list[str]]:
    """{kind: [paths]}: good clips, and one file of each kind the demo must refuse."""
    from vidjax.data import encode  # vidjax: only where this script makes files or answers

    good = []
    for seed in range(GOOD_CLIPS):
        frames = np.random.default_rng(seed).integers(0, 256, (50, 40, 56, 3), dtype=np.uint8)
        good.append(encode.write_mp4(str(folder / f"clip_{seed}.mp4"), frames, 25))
    data = pathlib.Path(good[0]).read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "notes.txt").write_text("this is a text file, not a video\n")
    (folder / "large.mp4").write_bytes(data + bytes(int(max_mb * 2**20)))
    # Flat grey frames: a long clip that stays small, so only its duration is over the limit.
    num_frames = int((max_seconds + 1) * 25)
    long = encode.write_mp4(str(folder / "long.mp4"), np.full((num_frames, 40, 56, 3), 128, np.uint8), 25)
    return {"good": good, "truncated": [str(folder / "truncated.mp4")], "text": [str(folder / "notes.txt")],
            "large": [str(folder / "large.mp4")], "long": [long]}


def expected_answers(checkpoint: str, paths: list[str], window: float) -> dict[str, dict[str, float]]:
    """{path: {label: value}} of the checkpoint run directly on each file, as the demo's /predict gives it."""
    from vidjax import pretrained, tasks
    from vidjax.tasks import predictions

    model = pretrained.load(checkpoint)
    runner = pretrained.BatchRunner(model, predictions.scores_fn(model.task), 8)
    answers = {}
    for path in paths:
        aggregate = predictions.prediction_entry(model, runner, path, window_s=window)["aggregate"]
        if "values" in aggregate:
            answers[path] = dict(aggregate["values"])
        else:
            score = tasks.readout_of(model.task).score_name
            answers[path] = {row["label"]: row[score] for row in aggregate["top_k"]}
    return answers


def refusals(max_mb: float, max_seconds: float) -> dict[str, str]:
    """{kind: text its refusal must contain}."""
    return {"truncated": "truncated.mp4 cannot be read as a video", "text": "notes.txt cannot be read as a video",
            "large": f"over this demo's limit of {max_mb:g} MB (--max_mb)",
            "long": f"over this demo's limit of {max_seconds:g} s (--max_seconds)"}


def start_demo(checkpoint: str, port: int, log: pathlib.Path, flags: list[str],
               timeout: float) -> subprocess.Popen:
    """`python -m vidjax.demo` serving on 127.0.0.1:port, its output in `log`; waits until it answers."""
    import httpx

    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vidjax.demo", f"--checkpoint={checkpoint}", f"--port={port}",
                                 *flags], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the demo did not answer within {timeout:g} s:\n{log.read_text()[-3000:]}")


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": round(float(np.percentile(values, 50)), 4), "p95": round(float(np.percentile(values, 95)), 4),
            "max": round(max(values), 4)}


def load_test(checkpoint: str, *, requests: int = 200, clients: int = 16, window: float = 1.0,
              max_mb: float = 0.25, max_seconds: float = 3.0, timeout: float = 60.0, start_timeout: float = 180.0,
              demo_args: list[str] | None = None) -> dict:
    """Runs the load test of the module docstring; returns its report."""
    flags = [f"--window={window}", f"--max_mb={max_mb}", f"--max_seconds={max_seconds}", "--examples=0",
             *(demo_args or [])]
    with tempfile.TemporaryDirectory(prefix="vidjax-load-") as folder:
        folder = pathlib.Path(folder)
        files = write_files(folder, max_mb, max_seconds)
        expected = expected_answers(checkpoint, files["good"], window)
        port, log = free_port(), folder / "demo.log"
        proc = start_demo(checkpoint, port, log, flags, start_timeout)
        return _send(proc, f"http://127.0.0.1:{port}/", log, files, expected, refusals(max_mb, max_seconds),
                     requests=requests, clients=clients, timeout=timeout, flags=flags)


def _send(proc: subprocess.Popen, url: str, log: pathlib.Path, files: dict[str, list[str]],
          expected: dict[str, dict[str, float]], messages: dict[str, str], *, requests: int, clients: int,
          timeout: float, flags: list[str]) -> dict:
    """The requests of the load test against the running demo `proc`, which it stops; returns the report."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    lock = threading.Lock()
    state = {"next": 0, "answered": 0, "rss_first": None}
    latency: dict[str, list[float]] = {"good": [], "bad": []}
    wrong: list[dict] = []
    counts = {"answered_correctly": 0, "refused_as_expected": 0}

    def check(i: int, kind: str, path: str, result, error: BaseException | None) -> str | None:
        """Why request i's outcome is wrong, or None."""
        if kind == "good":
            if error is not None:
                return f"refused: {type(error).__name__}: {error}"
            want = expected[path]
            if list(result) != list(want):
                return f"labels {list(result)} != {list(want)}"
            if not np.allclose(list(result.values()), list(want.values()), rtol=0, atol=1e-5):
                return f"values {list(result.values())} != {list(want.values())}"
            return None
        if not isinstance(error, AppError):
            return f"not refused with a message: {type(error).__name__}: {error}" if error else f"answered {result}"
        return None if messages[kind] in str(error) else f"message {str(error)!r} lacks {messages[kind]!r}"

    def client_loop() -> None:
        client = Client(url, verbose=False)
        while True:
            with lock:
                i = state["next"]
                if i >= requests:
                    return
                state["next"] += 1
            kind = KINDS[i % len(KINDS)]
            path = files[kind][(i // len(KINDS)) % len(files[kind])]
            result, error = None, None
            start = time.perf_counter()
            try:
                result = client.submit(handle_file(path), api_name="/predict").result(timeout=timeout)
            except Exception as e:  # noqa: BLE001  (AppError is a refusal; anything else is reported as wrong)
                error = e
            seconds = time.perf_counter() - start
            why = check(i, kind, path, result, error)
            with lock:
                latency["good" if kind == "good" else "bad"].append(seconds)
                if why:
                    wrong.append({"request": i, "file": os.path.basename(path), "why": why})
                else:
                    counts["answered_correctly" if kind == "good" else "refused_as_expected"] += 1
                state["answered"] += 1
                if state["answered"] == FIRST:
                    state["rss_first"] = rss_mb(proc.pid)

    start = time.perf_counter()
    try:
        threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - start
        rss_after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        server_log = log.read_text(errors="replace")
    rss_first = state["rss_first"] or rss_after
    good = sum(KINDS[i % len(KINDS)] == "good" for i in range(requests))
    return {
        "requests": requests, "clients": clients, "good": good, "bad": requests - good, **counts, "wrong": wrong,
        "server_errors": server_log.count("Traceback"), "latency_s": {k: percentiles(v) for k, v in latency.items()},
        "rss_mb": {f"after_first_{FIRST}": round(rss_first, 1), "after_run": round(rss_after, 1),
                   "growth": round(rss_after / rss_first - 1, 4)},
        "seconds": round(seconds, 2), "requests_per_s": round(requests / seconds, 2),
        "demo_flags": flags,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python scripts/load_demo.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="the checkpoint the demo serves (one with a classification or regression head)")
    parser.add_argument("--requests", type=int, default=200, help="requests in all (default 200)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients, one thread each (default 16)")
    parser.add_argument("--window", type=float, default=1.0, help="the demo's --window in seconds (default 1)")
    parser.add_argument("--max_mb", type=float, default=0.25, help="the demo's --max_mb (default 0.25)")
    parser.add_argument("--max_seconds", type=float, default=3.0, help="the demo's --max_seconds (default 3)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one request may take (default 60)")
    parser.add_argument("--start_timeout", type=float, default=180.0,
                        help="seconds the demo may take to start (default 180)")
    parser.add_argument("--demo_args", default="", help='more flags for the demo, e.g. "--concurrency=8"')
    parser.add_argument("--json", default="", metavar="FILE", help="also write the report here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.requests < 1 or args.clients < 1:
        print("error: --requests and --clients must be at least 1.", file=sys.stderr)
        return 2
    try:
        report = load_test(args.checkpoint, requests=args.requests, clients=args.clients, window=args.window,
                           max_mb=args.max_mb, max_seconds=args.max_seconds, timeout=args.timeout,
                           start_timeout=args.start_timeout, demo_args=shlex.split(args.demo_args))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        pathlib.Path(args.json).write_text(text + "\n")
    ok = not report["wrong"] and not report["server_errors"] and report["rss_mb"]["growth"] < RSS_GROWTH_LIMIT
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
