"""Screenshots for the README's review walkthrough, taken in a real browser:
a served pipeline run (embedded model, the example corpus, a prompt gate in
Label Studio) paused at its gate — the Label Studio task a reviewer sees and
the form Prefect's UI shows for the paused run.

    python docs/screenshots.py --label-studio-venv ~/.cache/sftmill-tests/label-studio-1.23.2

Needs Debian's chromium and `pip install playwright` in the Python that runs
this script (not the project's venv: playwright is a tool here, not a
dependency); uses .venv for sftmill and Prefect.  Writes docs/img/*.png.
Takes ~10 minutes on 2 cores (the embedded model writes the prompts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PY = ROOT / ".venv" / "bin" / "python"
TOKEN = "sftmill-screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label-studio-venv", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="sftmill-shots-"))
    procs = []
    try:
        ls_port, prefect_port = free_port(), free_port()
        ls_url, api = f"http://127.0.0.1:{ls_port}", f"http://127.0.0.1:{prefect_port}/api"
        procs.append(subprocess.Popen(
            [str(args.label_studio_venv / "bin" / "label-studio"), "start", "--no-browser",
             "--internal-host", "127.0.0.1", "-p", str(ls_port), "--data-dir", str(tmp / "ls"),
             "--username", "lead@example.org", "--password", "lead-password-1",
             "--user-token", TOKEN, "--enable-legacy-api-token"],
            env={**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(tmp / "ls")},
            stdout=(tmp / "ls.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True))
        env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
               "PREFECT_UI_API_URL": api}  # the UI's own calls (default: port 4200)
        procs.append(subprocess.Popen(
            [str(PY), "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(prefect_port)], env=env, stdout=(tmp / "prefect.log").open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True))
        wait(lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200, 300, "Prefect")
        wait(lambda: httpx.get(f"{ls_url}/api/projects", timeout=5,
                               headers={"Authorization": f"Token {TOKEN}"}).status_code == 200,
             600, "Label Studio")

        shutil.copytree(ROOT / "data" / "example" / "corpus", tmp / "corpus")
        recipe = (ROOT / "data" / "example" / "recipe.yaml").read_text()
        recipe = recipe.replace("../../runs/quarks-and-gluons", str(tmp / "run"))
        recipe = recipe.replace("backend: local", "backend: none")
        (tmp / "recipe.yaml").write_text(
            recipe + "\nreview: {gates: [prompts], sample: 5, tool: label_studio}\n")
        serve_env = {**env, "PREFECT_API_URL": api, "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
                     "PREFECT_LOCAL_STORAGE_PATH": str(tmp / "results"), "SFTMILL_PAUSE_POLL_S": "2",
                     "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": TOKEN}
        procs.append(subprocess.Popen([str(PY), "-m", "sftmill.cli", "serve"], cwd=ROOT,
                                      env=serve_env, stdout=(tmp / "serve.log").open("wb"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
        dep = wait(lambda: (lambda r: r.json() if r.status_code == 200 else None)(
            httpx.get(f"{api}/deployments/name/sftmill-pipeline/pipeline", timeout=10)),
            180, "the served deployment")
        httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", timeout=30, json={
            "parameters": {"params": {"recipe_path": str(tmp / "recipe.yaml"),
                                      "target_prompts": 10}}}).raise_for_status()
        paused = wait(lambda: httpx.post(f"{api}/flow_runs/filter", timeout=30, json={
            "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}).json(), 1800, "the gate")[0]
        project = httpx.get(f"{ls_url}/api/projects", timeout=10,
                            headers={"Authorization": f"Token {TOKEN}"}).json()["results"][0]
        task = httpx.get(f"{ls_url}/api/projects/{project['id']}/export", timeout=30,
                         params={"exportType": "JSON", "download_all_tasks": "true"},
                         headers={"Authorization": f"Token {TOKEN}"}).json()[0]

        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{ls_url}/user/login/")
            page.fill("input[name=email]", "lead@example.org")
            page.fill("input[name=password]", "lead-password-1")
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            page.goto(f"{ls_url}/projects/{project['id']}/data?task={task['id']}")
            page.wait_for_selector("text=Edited prompt", timeout=120_000)
            page.wait_for_timeout(3000)
            # A reviewer mid-decision: "edit" chosen (its hotkey is 3), a better prompt typed.
            page.get_by_text("edit").first.click()
            page.locator("textarea").first.fill(
                "Why can a quark never be observed on its own, outside a hadron?")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / "review_label_studio_task.png"))

            ui = f"http://127.0.0.1:{api.split(':')[2].split('/')[0]}"
            page.goto(f"{ui}/runs/flow-run/{paused['id']}")
            page.get_by_role("button", name="Resume").first.wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
            page.screenshot(path=str(args.out / "review_prefect_paused_run.png"))
            page.get_by_role("button", name="Resume").first.click()
            page.wait_for_selector("text=Review there", timeout=60_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / "review_prefect_pause_form.png"))
            browser.close()
        print(f"wrote {', '.join(sorted(str(f) for f in args.out.glob('review_*.png')))}")
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
