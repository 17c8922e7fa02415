"""`sftmill view`: a run folder's records, rejected items and quality in a
browser — served locally, or written as one self-contained HTML file."""

from __future__ import annotations

import json
import threading
import webbrowser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import typer

from sftmill.cli.common import app, console, fail
from sftmill.core.files import write_atomic
from sftmill.tasks.report.viewer import PAGE_SIZE, RunView, load_run, searchable, select
from sftmill.tasks.report.viewer_page import page_html


def loaded(run_dirs: list[Path]) -> list[RunView]:
    views = []
    for run_dir in run_dirs:
        try:
            views.append(load_run(run_dir))
        except FileNotFoundError:
            fail(f"{run_dir}: no sftmill.duckdb here (not a run folder)")
        except Exception as err:  # duckdb: held by a run still writing to it
            fail(f"{run_dir}: cannot read its run database ({str(err).splitlines()[0]}); "
                 "a run still writing to it must end first")
    return views


def handler(views: list[RunView]) -> type[BaseHTTPRequestHandler]:
    page = page_html().encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: the console is the user's
            pass

        def _send(self, body: bytes, kind: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, data) -> None:
            self._send(json.dumps(data, ensure_ascii=False, default=str).encode(), "application/json")

        def do_GET(self) -> None:
            url = urlparse(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path in ("/", "/index.html"):
                return self._send(page, "text/html; charset=utf-8")
            try:
                view = views[int(params.get("run", 0))]
            except (ValueError, IndexError):
                return self._send(b"no such run", "text/plain", 404)
            if url.path == "/api/summary":
                return self._json({"runs": [v.summary for v in views]})
            if url.path == "/api/rows":
                offset = max(0, int(params.pop("offset", 0) or 0))
                return self._json(select(view.rows, params, offset, PAGE_SIZE))
            if url.path == "/api/passage":
                return self._json(view.passages.get(params.get("chunk_id", "")))
            self._send(b"not found", "text/plain", 404)

    return Handler


def static_page(views: list[RunView]) -> str:
    """Every row in the page (the browser adds the search text, `searchable` is not run here)."""
    return page_html({"runs": [{"summary": v.summary, "passages": v.passages, "rows": v.rows}
                               for v in views]})


@app.command("view")
def view_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder (pipeline, generator, curate or mix)."),
    other: Path = typer.Argument(None, help="A second run folder, shown side by side."),
    port: int = typer.Option(8765, help="Local port to serve on (0: any free port)."),
    html: Path = typer.Option(None, "--html", help="Write one self-contained HTML file (every "
                              "record and rejected item in it) instead of serving."),
    open_browser: bool = typer.Option(True, "--open/--no-open", help="Open the page in a browser."),
) -> None:
    """Browse a run: every record with its conversation, citations (click one
    for the passage and its source), metadata and scores; the rejected items
    with their stage and reason; filters by subdomain, task type, persona,
    difficulty, origin, stage, reason and a score range; text search; the
    quality figures and drops of two runs side by side.  Reads the run
    database read-only."""
    views = loaded([run_dir] + ([other] if other else []))
    if html is not None:
        write_atomic(html, [static_page(views).encode()])
        console.print(f"wrote {html} ({sum(len(v.rows) for v in views)} rows)", highlight=False)
        return
    for v in views:
        searchable(v.rows)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler(views))
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    console.print(f"sftmill view: {url}  ({', '.join(f'{v.name}: {len(v.rows)} rows' for v in views)}); "
                  "Ctrl-C stops it", highlight=False, soft_wrap=True)
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
