"""How fast `sftmill view` answers in a real browser on a big run: the time
from a search or a filter to the page showing its result, measured in
headless Chromium (driven over the DevTools protocol, real time, not
Chromium's virtual time), for the served page and for the static file.

    python benchmarks/viewer.py RUN_DIR [--screenshots docs/]

RUN_DIR: e.g. a 20,000-prompt run kept by
`python benchmarks/llm_throughput.py --whole-run 20000 --served-embeddings --keep /tmp/big`
(its run folder is /tmp/big/run).  Prints the rows loaded, the server's
start-up, and per mode the page's first rows, a text search ("quark") and a
switch to the rejected items, in milliseconds (the page's own `selftest`,
which records each step's time on <body>).  `--screenshots` writes the
screenshots of docs/ (a record with its conversation and a cited passage,
the rejected items, the quality tab).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def in_browser(url: str, timeout_s: float = 120) -> dict:
    """Open `url` in headless Chromium and wait for the page's selftest; its figures."""
    from websockets.sync.client import connect

    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([shutil.which("chromium"), *FLAGS, f"--user-data-dir={profile}",
                                 "--remote-debugging-port=0", "--window-size=1400,1000", "about:blank"],
                                stderr=subprocess.PIPE, text=True)
        try:
            line = ""
            while "DevTools listening on" not in line:
                line = proc.stderr.readline()
            browser = re.search(r"ws://\S+", line).group(0)
            port = browser.split(":")[2].split("/")[0]
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
            page = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
            with connect(page, max_size=None) as ws:
                ids = iter(range(1, 10**6))

                def call(method, **params):
                    n = next(ids)
                    ws.send(json.dumps({"id": n, "method": method, "params": params}))
                    while True:
                        msg = json.loads(ws.recv())
                        if msg.get("id") == n:
                            return msg.get("result", {})

                started = time.perf_counter()
                call("Page.navigate", url=url)
                first = None
                while time.perf_counter() - started < timeout_s:
                    got = call("Runtime.evaluate", returnByValue=True, expression=(
                        "JSON.stringify({rows: document.querySelectorAll('.row').length, "
                        "...(document.body ? document.body.dataset : {})})"))
                    if "value" not in got.get("result", {}):  # the page is still loading
                        time.sleep(0.02)
                        continue
                    data = json.loads(got["result"]["value"])
                    if first is None and data["rows"]:
                        first = time.perf_counter() - started
                    if data.get("ready") == "1":
                        return {"first_rows_ms": round(1000 * first), **{
                            k: v for k, v in data.items() if k.endswith("Ms") or k == "rejectedShown"}}
                    time.sleep(0.02)
                raise TimeoutError(f"the page at {url} did not finish its selftest")
        finally:
            proc.kill()
            proc.wait()


def screenshot(url: str, path: Path) -> None:
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        subprocess.run([shutil.which("chromium"), *FLAGS, f"--user-data-dir={profile}",
                        "--window-size=1400,900", "--virtual-time-budget=20000",
                        f"--screenshot={path}", url], capture_output=True, timeout=180)


def main(run_dir: Path, shots: Path | None) -> None:
    from sftmill.tasks.report.viewer import load_run

    started = time.perf_counter()
    view = load_run(run_dir)
    loaded = time.perf_counter() - started
    out = {"rows": len(view.rows), "kept": view.summary["kept"], "load_s": round(loaded, 2)}
    server = subprocess.Popen([sys.executable, "-m", "sftmill.cli", "view", str(run_dir), "--port", "0",
                               "--no-open"], stderr=subprocess.PIPE, text=True)
    try:
        started = time.perf_counter()
        url = re.search(r"http://\S+/", server.stderr.readline()).group(0)
        out["server_start_s"] = round(time.perf_counter() - started, 1)
        out["served"] = in_browser(url + "#selftest")
        if shots:
            shots.mkdir(parents=True, exist_ok=True)
            screenshot(url + "#selftest", shots / "viewer-record.png")
            screenshot(url + "#selftest-rejected", shots / "viewer-rejected.png")
            screenshot(url + "#quality", shots / "viewer-quality.png")
    finally:
        server.terminate()
        server.wait()
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "view.html"
        subprocess.run([sys.executable, "-m", "sftmill.cli", "view", str(run_dir), "--html", str(page)],
                       check=True, capture_output=True)
        out["static_mb"] = round(page.stat().st_size / 1e6, 1)
        out["static"] = in_browser(page.as_uri() + "#selftest")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--screenshots", type=Path, help="write the docs' screenshots into this folder")
    args = parser.parse_args()
    main(args.run_dir, args.screenshots)
