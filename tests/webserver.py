"""A small web on 127.0.0.1 for fetch and search tests: good pages, and
pages that time out, are too large, redirect in a loop, are not HTML, or are
disallowed by robots.txt; plus a fake SearxNG JSON API that returns them."""

from __future__ import annotations

import http.server
import json
import threading
import time
from urllib.parse import urlsplit

ARTICLE = ("<html><head><title>{title}</title></head><body><nav>menu</nav><article><h1>{title}</h1>"
           "<p>{body}</p><p>{body}</p></article><footer>footer</footer></body></html>")
GOOD = {
    "/quark-colour": ("Quark colour charge",
                      "Every quark carries one of three colour charges, and gluons carry a colour "
                      "and an anticolour, which is why gluons interact with each other."),
    "/gluon-jets": ("Gluon jets at PETRA",
                    "Three-jet events seen at the PETRA collider in 1979 were the first direct "
                    "evidence of the gluon, radiated by a quark or antiquark."),
}
BAD = ["/slow", "/big", "/loop-a", "/image.png", "/private/notes"]


class TinyWeb:
    def __init__(self, slow_s: float = 5.0, big_bytes: int = 200_000):
        self.slow_s, self.big_bytes = slow_s, big_bytes
        self.hits: list[str] = []
        web = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", ctype="text/html; charset=utf-8", headers=()):
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    try:
                        self.wfile.write(body)
                    except (BrokenPipeError, ConnectionResetError):
                        pass

            def do_GET(self):
                path = urlsplit(self.path).path
                web.hits.append(path)
                if path == "/robots.txt":
                    return self._send(200, b"User-agent: *\nDisallow: /private/\n", "text/plain")
                if path == "/search":
                    urls = [web.url(p) for p in list(GOOD) + BAD]
                    results = [{"url": u, "title": u.rsplit("/", 1)[-1], "content": ""} for u in urls]
                    return self._send(200, json.dumps({"results": results}).encode(), "application/json")
                if path in GOOD:
                    title, body = GOOD[path]
                    return self._send(200, ARTICLE.format(title=title, body=body).encode())
                if path == "/slow":
                    time.sleep(web.slow_s)
                    return self._send(200, ARTICLE.format(title="slow", body="late").encode())
                if path == "/big":
                    return self._send(200, b"<html><body><p>" + b"x" * web.big_bytes + b"</p></body></html>")
                if path == "/loop-a":
                    return self._send(302, headers=[("location", "/loop-b")])
                if path == "/loop-b":
                    return self._send(302, headers=[("location", "/loop-a")])
                if path.startswith("/chain/"):
                    n = int(path.rsplit("/", 1)[1])
                    if n < 5:
                        return self._send(302, headers=[("location", f"/chain/{n + 1}")])
                    return self._send(200, ARTICLE.format(title="end", body="end of chain").encode())
                if path == "/image.png":
                    return self._send(200, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "image/png")
                if path.startswith("/private/"):
                    return self._send(200, ARTICLE.format(title="private", body="secret").encode())
                return self._send(404, b"not found")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
