"""The daemon's HTTP endpoint: /metrics for Prometheus, /status for `syncd status`, and
the routes the daemon adds (the status page at /).

Hardened around every route, so a route added later inherits it:
- GET and HEAD only, exact paths, no keep-alive, a 16 KiB request head;
- optional bearer token and/or basic auth ([metrics] auth_token, basic_auth_*), checked
  in constant time, never logged;
- bound to loopback, only Host headers naming loopback are served (a web page cannot
  reach it through DNS rebinding); beyond loopback the daemon logs a warning;
- a deadline for reading each request and a cap on connections served at once: above
  it a connection gets 503 straight from the accept thread and is closed, so idle or
  slow clients cannot pile up threads or file descriptors;
- it runs on its own threads and only reads the daemon's state: it never blocks it.

Routes are a dict of path -> handler; a handler takes the Request and returns a
Response. `Endpoint.route(path, handler)` adds one; `routes=` takes simpler ones,
path -> () -> (body, content type). Who may read it (Access) and asking it from a
command (`syncd status`, the report) are in syncd.endpoint_client.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from syncd.endpoint_client import Access, url_host
from syncd.redact import scrub, scrub_obj

log = logging.getLogger("syncd")

MAX_HEAD_BYTES = 16 * 1024


@dataclass(frozen=True)
class Request:
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class Response:
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_of(header: str) -> str:
    header = header.strip()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _canned(status: int, reason: str) -> bytes:
    body = f"{reason}\n".encode()
    return (f"HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, address, handler, max_connections: int):
        self.slots = threading.BoundedSemaphore(max_connections)
        if ":" in address[0]:  # an IPv6 address ([::1]:9464 in [metrics] listen)
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        # Runs on the accept thread: never wait here.
        if not self.slots.acquire(blocking=False):
            try:
                request.setblocking(False)
                request.send(_canned(503, "Service Unavailable"))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _DeadlineReader:
    """The request stream, failing once the request has taken longer than allowed in
    total (a per-read timeout alone lets a client send a byte every few seconds)."""

    def __init__(self, raw, sock: socket.socket, deadline: float):
        self.raw, self.sock, self.deadline = raw, sock, deadline
        self.read_bytes = 0

    def readline(self, limit: int = -1) -> bytes:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request took too long")
        self.sock.settimeout(left)
        line = self.raw.readline(limit)
        self.read_bytes += len(line)
        if self.read_bytes > MAX_HEAD_BYTES:
            raise TimeoutError("request head too large")
        return line

    def __getattr__(self, name):
        return getattr(self.raw, name)


class Endpoint:
    def __init__(self, host: str, port: int, status: Callable[[], dict],
                 routes: dict[str, Callable[[], tuple[bytes, str]]] | None = None, *, access: Access | None = None,
                 max_connections: int = 16, read_timeout_seconds: float = 5.0):
        self._status = status
        self.access = access or Access()
        self.host = host
        self.loopback_only = is_loopback(host)
        self.routes: dict[str, Handler] = {
            "/metrics": self._metrics,
            "/status": self._status_json,
            "/": lambda req: Response(b"syncd: see /metrics and /status\n"),
        }
        for path, page in (routes or {}).items():
            self.route(path, lambda req, page=page: Response(*page()))
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "syncd"
            sys_version = ""
            timeout = read_timeout_seconds  # each socket operation

            def setup(self) -> None:
                super().setup()
                self.rfile = _DeadlineReader(self.rfile, self.connection,  # type: ignore[assignment]
                                             time.monotonic() + read_timeout_seconds)

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (TimeoutError, socket.timeout, ConnectionError):
                    self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._serve(head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(head=True)

            def _serve(self, head: bool) -> None:
                path, _, query = self.path.partition("?")
                req = Request(path, query, {k.lower(): v for k, v in self.headers.items()})
                resp = endpoint.dispatch(req)
                self.send_response(resp.status)
                headers = {"Content-Type": resp.content_type, "Content-Length": str(len(resp.body)),
                           "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", **resp.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.connection.settimeout(read_timeout_seconds)  # the reads may have used it up
                    self.wfile.write(resp.body)

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                # http.server's own errors (bad request line, 501): short, no request echoed.
                self.close_connection = True
                try:
                    self.wfile.write(_canned(code, self.responses.get(code, ("Error",))[0]))
                except OSError:
                    pass

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                pass  # scrapes every few seconds would drown the log; headers may hold credentials

        self.server = _Server((host, port), Handler, max_connections)
        self.thread = threading.Thread(target=self.server.serve_forever, name="endpoint", daemon=True)

    @classmethod
    def from_settings(cls, metrics, status: Callable[[], dict],
                      routes: dict[str, Callable[[], tuple[bytes, str]]] | None = None) -> "Endpoint":
        """The endpoint `[metrics]` describes (syncd.config.MetricsSettings)."""
        host, port = metrics.address
        return cls(host, port, status, routes, access=metrics.access(), max_connections=metrics.max_connections,
                   read_timeout_seconds=metrics.read_timeout_seconds)

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def dispatch(self, req: Request) -> Response:
        """Every request passes here: Host check, credentials, then the route."""
        if self.loopback_only and not is_loopback(_host_of(req.headers.get("host", "localhost"))):
            return Response(b"Misdirected Request: this endpoint answers to loopback names only\n", status=421)
        if not self.access.allows(req.headers.get("authorization")):
            challenge = 'Basic realm="syncd"' if self.access.basic_password else 'Bearer realm="syncd"'
            return Response(b"Unauthorized\n", status=401, headers={"WWW-Authenticate": challenge})
        handler = self.routes.get(req.path)
        if handler is None:
            return Response(b"Not Found\n", status=404)
        try:
            return handler(req)
        except Exception as e:  # noqa: BLE001 - one bad page must not end the endpoint thread
            log.error(f"endpoint {req.path}: {e!r}", extra={"event": "endpoint"})
            return Response(b"Internal Server Error\n", status=500)

    def _metrics(self, req: Request) -> Response:
        # Imported here: `syncd status` and `syncd report` use this module's client
        # functions only, and need not load the metrics library.
        from prometheus_client import CONTENT_TYPE_LATEST

        from syncd import metrics

        return Response(metrics.exposition(), CONTENT_TYPE_LATEST)

    def _status_json(self, req: Request) -> Response:
        body = scrub(json.dumps(scrub_obj(self._status()), default=str))
        return Response(body.encode(), "application/json")

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def exposure_warning(self) -> str | None:
        """What to tell the operator when the endpoint is reachable beyond this host."""
        if self.loopback_only:
            return None
        who = ("anyone who can reach it and holds the configured token or password"
               if self.access.required else "ANYONE who can reach it, without credentials")
        return (f"the metrics and status endpoint listens on {url_host(self.host)}:{self.port}, beyond loopback: "
                f"{who} can read source and table names, states and error details. Bind it to 127.0.0.1, or set "
                "[metrics] auth_token / basic_auth_password and restrict the port in the firewall")

    def start(self) -> None:
        warning = self.exposure_warning()
        if warning:
            log.warning(warning, extra={"event": "endpoint_exposed"})
        self.thread.start()

    def stop(self) -> None:
        # serve_forever() looks for shutdown() between two waits of half a second: every
        # stop waited up to that long. A listening socket shut down is readable at once
        # (its accept() fails, which serve_forever ignores), so the loop sees the request.
        with contextlib.suppress(OSError):
            self.server.socket.shutdown(socket.SHUT_RDWR)
        if self.thread.ident is not None:  # shutdown() waits for a serve_forever() that ran or will
            self.server.shutdown()
        self.server.server_close()
