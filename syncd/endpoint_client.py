"""The client side of the daemon's HTTP endpoint (syncd.endpoint): who may read it
(Access, which the daemon checks and `syncd status` and the report send), and asking a
running daemon for a JSON document. Kept apart from the server so that a command
asking the daemon does not import an HTTP server, nor urllib when no endpoint is
configured."""

from __future__ import annotations

import base64
import hmac
import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Access:
    """Who may read the endpoint: nobody needs credentials when neither is set."""

    token: str | None = None
    basic_user: str | None = None
    basic_password: str | None = None

    @property
    def required(self) -> bool:
        return bool(self.token or self.basic_password)

    def allows(self, authorization: str | None) -> bool:
        if not self.required:
            return True
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and self.token:
            return hmac.compare_digest(credentials.encode(), self.token.encode())
        if scheme.lower() == "basic" and self.basic_password:
            try:
                user, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            ok_user = hmac.compare_digest(user.encode(), (self.basic_user or "").encode())
            ok_password = hmac.compare_digest(password.encode(), self.basic_password.encode())
            return ok_user and ok_password
        return False

    def header(self) -> dict[str, str]:
        """The Authorization header a client of this endpoint sends (`syncd status`)."""
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.basic_password:
            raw = f"{self.basic_user or ''}:{self.basic_password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}


_unanswered: dict[tuple, str] = {}  # address -> why the last fetch from it got nothing


def url_host(host: str) -> str:
    """`host` as a URL (or a host:port) writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def fetch_json(metrics, path: str, timeout: float = 1.5):
    """A JSON document from the running daemon's endpoint (asked with the configured
    credentials), or None when none answers (`unanswered` then says why)."""
    addr = metrics.address
    if addr is None:
        return None
    import urllib.error  # only with a daemon to ask: a fifth of what `syncd status` imports otherwise
    import urllib.request

    host = addr[0] if addr[0] not in ("0.0.0.0", "::", "") else "127.0.0.1"
    where = f"{url_host(host)}:{addr[1]}"
    req = urllib.request.Request(f"http://{where}{path}", headers=metrics.access().header())
    _unanswered.pop(addr, None)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None  # the daemon never redirects: the 3xx is raised, the credentials go nowhere else

    # Straight to the configured address: no proxy from http_proxy (it would get the
    # credentials), no redirect followed (urllib sends the Authorization header along).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
    try:
        with opener.open(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # something answers, and says no
        if 300 <= e.code < 400:
            _unanswered[addr] = (f"the endpoint at {where} answered with a redirect (HTTP {e.code}), not the "
                                 "daemon's endpoint")
        else:
            refused = " (it refused the credentials in this configuration's [metrics])" if e.code in (401, 403) else ""
            _unanswered[addr] = f"the endpoint at {where} answered HTTP {e.code}{refused}"
    except ValueError:
        _unanswered[addr] = f"the endpoint at {where} answered with something other than syncd's JSON"
    except OSError as e:
        if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
            # Something took the connection and said nothing: a daemon stopped (SIGSTOP) or
            # wedged, not one that is gone (that refuses the connection).
            _unanswered[addr] = f"the endpoint at {where} did not answer within {timeout:g} s"
        else:
            _unanswered[addr] = "no daemon endpoint answered"
    return None


def unanswered(metrics) -> str:
    """Why the last fetch from the configured endpoint returned nothing, in a few words."""
    if metrics.address is None:
        return "no daemon endpoint is configured"
    return _unanswered.get(metrics.address, "no daemon endpoint answered")


def fetch_status(metrics, timeout: float = 1.5) -> dict | None:
    """The running daemon's /status, or None."""
    status = fetch_json(metrics, "/status", timeout)
    return status if isinstance(status, dict) else None


def own_sources(sources: dict, configured) -> dict:
    """The entries of a daemon's /status "sources" that are `configured`'s sources: the
    same name and the same SQLite file. The daemon answering on the configured address
    may run another configuration (two on one host, the default port): its source of
    the same name is not ours, and its figures are not our source's."""
    paths = {s.name: os.path.realpath(s.path) for s in configured}
    return {name: entry for name, entry in sources.items()
            if name in paths and isinstance(entry, dict)
            and (entry.get("path") is None or os.path.realpath(entry["path"]) == paths[name])}
