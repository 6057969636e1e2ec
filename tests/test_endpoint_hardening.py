"""The daemon's HTTP endpoint cannot be turned against the daemon or read by strangers.

Every route sits behind the same checks: optional bearer token / basic auth, loopback
Host names when bound to loopback, GET and HEAD only, a deadline for reading a request
and a cap on connections served at once. Bound beyond loopback, the daemon says so
loudly in its log. Idle or half-sent requests never exhaust the daemon's threads or
file descriptors: it keeps replicating while they hang.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import pytest

from syncd.config import MetricsSettings
from syncd.endpoint import Endpoint
from syncd.endpoint_client import Access, fetch_status
from tests.conftest import write_config
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.ports import free_port
from tests.support.sync import wait_caught_up


def get(port: int, path: str = "/status", headers: dict | None = None, host: str = "127.0.0.1",
        method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://{host}:{port}{path}", headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def endpoint():
    started = []

    def make(**kwargs) -> Endpoint:
        ep = Endpoint("127.0.0.1", 0, lambda: {"sources": {"app": {"health": "streaming"}}}, **kwargs)
        ep.start()
        started.append(ep)
        return ep

    yield make
    for ep in started:
        ep.stop()


def test_without_credentials_configured_every_route_answers(endpoint):
    ep = endpoint()
    assert get(ep.port)[0] == 200
    assert get(ep.port, "/metrics")[0] == 200
    assert get(ep.port, "/nothing")[0] == 404
    assert get(ep.port, "/status", method="POST")[0] == 501
    assert get(ep.port, "/status", method="HEAD") == (200, b"")


def test_a_token_or_basic_auth_guards_every_route(endpoint):
    ep = endpoint(access=Access(token="t0k3n-Secret", basic_user="prom", basic_password="b4sic pw"))
    basic = "Basic " + base64.b64encode(b"prom:b4sic pw").decode()
    wrong = "Basic " + base64.b64encode(b"prom:guess").decode()
    for path in ("/status", "/metrics", "/", "/nothing"):
        code, _ = get(ep.port, path)
        assert code == 401, path
        assert get(ep.port, path, {"Authorization": "Bearer nope"})[0] == 401
        assert get(ep.port, path, {"Authorization": wrong})[0] == 401
    assert get(ep.port, "/status", {"Authorization": "Bearer t0k3n-Secret"})[0] == 200
    assert get(ep.port, "/metrics", {"Authorization": basic})[0] == 200


def test_syncd_status_reads_the_endpoint_with_the_configured_credentials(endpoint):
    ep = endpoint(access=Access(token="t0k3n-Secret"))
    with_token = MetricsSettings(listen=f"127.0.0.1:{ep.port}", auth_token="t0k3n-Secret")
    without = MetricsSettings(listen=f"127.0.0.1:{ep.port}")
    assert fetch_status(with_token) == {"sources": {"app": {"health": "streaming"}}}
    assert fetch_status(without) is None


def test_on_loopback_only_loopback_host_names_are_served(endpoint):
    """A web page cannot read it by rebinding its own name to 127.0.0.1."""
    ep = endpoint()
    assert get(ep.port, headers={"Host": "attacker.example"})[0] == 421
    assert get(ep.port, headers={"Host": f"localhost:{ep.port}"})[0] == 200


def test_the_ipv6_loopback_is_served_as_loopback():
    """listen = "[::1]:9464" is the IPv6 loopback, which the configuration takes and
    `syncd status` asks: the daemon did not start ("cannot listen on [::1]:9464: Address
    family for hostname not supported")."""
    settings = MetricsSettings(listen=f"[::1]:{free_port()}")
    ep = Endpoint.from_settings(settings, lambda: {"sources": {"app": {"health": "streaming"}}})
    ep.start()
    try:
        assert ep.exposure_warning() is None
        assert fetch_status(settings) == {"sources": {"app": {"health": "streaming"}}}
        assert get(ep.port, host="[::1]", headers={"Host": "attacker.example"})[0] == 421
    finally:
        ep.stop()


@pytest.mark.parametrize("listen, url_host", [(":{port}", "127.0.0.1"), ("[::1]:{port}", "[::1]")])
async def test_a_listen_address_without_a_host_or_ipv6_is_listened_on(tmp_path, pg_dsn, listen, url_host):
    """listen = "[::1]:PORT", a loopback address the configuration takes: the daemon
    serves its endpoint there, as syncd status reads it (it ended at start with 'cannot
    listen on [::1]:PORT: Address family for hostname not supported'). listen = ":PORT"
    listens on loopback, and the log gives the page's address there (it gave
    http://:PORT/, an address no browser opens)."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO items VALUES (1, 'a')")
    conn.commit()
    conn.close()
    port = free_port()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}],
                       metrics_listen=listen.format(port=port))
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert f"status page on http://{url_host}:{port}/ " in d.log(), d.log()
        assert "beyond loopback" not in d.log()
        assert get(port, host=url_host)[0] == 200
        assert get(port, host=url_host, headers={"Host": "evil.example"})[0] != 200
        status = run_cli(cfg, "status")
        assert "daemon not running" not in status.stdout and "streaming" in status.stdout, status.stdout
        assert d.stop() == 0


def test_half_sent_requests_are_dropped_and_capped(endpoint):
    threads = threading.active_count()  # what this test process runs already (earlier tests' too)
    ep = endpoint(max_connections=4, read_timeout_seconds=1.5)
    idle = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", ep.port))
        s.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        idle.append(s)
    time.sleep(0.5)
    assert threading.active_count() < threads + 10  # no thread per idle connection (40 sent)
    # Past the cap, a connection is answered 503 at once; the others are closed at the deadline.
    started = time.monotonic()
    answers = []
    for s in idle:
        s.settimeout(10)
        try:
            answers.append(s.recv(100))
        except ConnectionResetError:
            answers.append(b"reset")
        s.close()
    assert time.monotonic() - started < 6
    assert sum(a.startswith(b"HTTP/1.0 503") or a == b"reset" for a in answers) >= 40 - 4
    assert get(ep.port)[0] == 200


async def test_the_daemon_warns_beyond_loopback_and_survives_idle_connections(tmp_path, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO items VALUES (1, 'a')")
    conn.commit()
    port = free_port()
    token = "Tk-9f8e7d6c5b4a"
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}],
                       metrics_listen=f"0.0.0.0:{port}")
    with DaemonProcess(cfg, tmp_path / "syncd.log", env={"SYNCD_METRICS__AUTH_TOKEN": token}) as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert "beyond loopback" in d.log() and "WARNING" in d.log()
        assert get(port)[0] == 401
        assert get(port, headers={"Authorization": f"Bearer {token}"})[0] == 200
        # A shell without the daemon's token: status and report say the endpoint refused
        # it, not that no daemon runs.
        refused = run_cli(cfg, "status")
        assert "WARNING" in refused.stdout and "answered HTTP 401" in refused.stdout, refused.stdout
        assert "refused the credentials" in refused.stdout and "daemon not running" not in refused.stdout
        lag = json.loads(run_cli(cfg, "report", "--format", "json").stdout)["sources"][0]["lag"]
        assert "answered HTTP 401" in json.dumps(lag), lag
        assert "HTTP 401" not in run_cli(cfg, "status", env={"SYNCD_METRICS__AUTH_TOKEN": token}).stdout
        # The descriptor limit that idle connections used to exhaust.
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (128, 128))
        idle = []
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /status HTTP/1.1\r\n")
            idle.append(s)
        # Meanwhile the application adds a table: loading it needs new descriptors.
        conn.execute("CREATE TABLE later (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO later VALUES (?, ?)", [(i, str(i)) for i in range(100)])
        conn.execute("UPDATE items SET v = 'b'")
        conn.commit()
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
        assert len(os.listdir(f"/proc/{d.pid}/fd")) < 100
        for s in idle:
            s.close()
        wait_for(lambda: get(port, headers={"Authorization": f"Bearer {token}"})[0] == 200, 30, "endpoint", d)
        assert d.stop() == 0
        log = d.log()
    assert token not in log
    assert await compare_table(str(db), pg_dsn, "app", "later") == []
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
    conn.close()


class _Listener:
    """A real HTTP listener on 127.0.0.1 that records every connection and every request's
    headers, and answers each request with `status` and `headers`."""

    def __init__(self, status: int = 200, headers: dict | None = None, body: bytes = b"{}"):
        import http.server

        listener = self
        self.connections = 0
        self.requests: list[dict] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                listener.requests.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            def verify_request(self, request, client_address):
                listener.connections += 1
                return True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_syncd_status_follows_no_redirect_and_sends_the_credentials_nowhere_else(monkeypatch, code):
    """Whatever answers on the configured address and redirects (a stale process, another
    service on the port) is not the daemon's endpoint: syncd status says so and goes no
    further. Before, urllib followed the redirect and sent the endpoint's token to
    wherever it pointed."""
    from syncd.endpoint_client import unanswered

    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)
    body = json.dumps({"sources": {}}).encode()
    with _Listener(body=body) as elsewhere, \
            _Listener(code, {"Location": f"http://127.0.0.1:{elsewhere.port}/status"}) as redirecting:
        metrics = MetricsSettings(listen=f"127.0.0.1:{redirecting.port}", auth_token="t0k3n-Secret")
        assert fetch_status(metrics) is None
        assert len(redirecting.requests) == 1 and redirecting.requests[0]["authorization"] == "Bearer t0k3n-Secret"
        assert elsewhere.requests == [], elsewhere.requests
        assert not any("authorization" in r for r in elsewhere.requests)
        assert unanswered(metrics) == (f"the endpoint at 127.0.0.1:{redirecting.port} answered with a redirect "
                                       f"(HTTP {code}), not the daemon's endpoint"), unanswered(metrics)


def test_syncd_status_reads_the_endpoint_directly_whatever_http_proxy_says(endpoint, monkeypatch):
    """The endpoint is on this host (or one the configuration names): syncd status asks it
    directly. Before, urllib sent the request, token and all, to the proxy http_proxy
    names in the environment."""
    ep = endpoint(access=Access(token="t0k3n-Secret"))
    metrics = MetricsSettings(listen=f"127.0.0.1:{ep.port}", auth_token="t0k3n-Secret")
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen's own reads the environment when first built
    with _Listener() as proxy:
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        for name in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        assert fetch_status(metrics) == {"sources": {"app": {"health": "streaming"}}}
        assert proxy.connections == 0 and proxy.requests == [], proxy.requests
