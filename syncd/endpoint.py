"""The daemon's HTTP endpoint: /metrics for Prometheus, /status for `syncd status`, and
the routes the daemon adds (the status page at /)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from syncd import metrics


class Endpoint:
    def __init__(self, host: str, port: int, status: Callable[[], dict],
                 routes: dict[str, Callable[[], tuple[bytes, str]]] | None = None):
        self._status = status
        self._routes = dict(routes or {})  # path -> () -> (body, content type)
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype = metrics.exposition(), CONTENT_TYPE_LATEST
                elif path == "/status":
                    body = json.dumps(endpoint._status(), default=str).encode()
                    ctype = "application/json"
                elif path in endpoint._routes:
                    body, ctype = endpoint._routes[path]()
                elif path == "/":
                    body, ctype = b"syncd: see /metrics and /status\n", "text/plain"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                pass  # scrapes every few seconds would drown the log

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="endpoint", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
