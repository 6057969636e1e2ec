"""Keep passwords out of everything syncd prints: logs, status, errors, pages, reports.

Two layers, because either alone leaks:

- By construction: a DSN is parsed (URL or libpq keyword form) and rebuilt with its
  password replaced by ***, wherever syncd shows one.
- By value: every secret syncd was configured with (the Postgres password, passwords
  inside DSNs, the endpoint's token and password) is registered here, and `scrub`
  removes each of them, raw and in its URL-encoded, JSON and escaped spellings, from
  any text before it is logged, served or printed: an error message that quotes a
  password in some other way still shows ***.

Secrets shorter than MIN_SCRUB_LENGTH characters are not scrubbed by value (every
"a" in every message would go); they still never appear in a DSN syncd shows.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus, unquote

from syncd.printable import escape_controls

MASK = "***"
MIN_SCRUB_LENGTH = 4

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# The keys whose value is a secret: the server's password, and the client key's
# passphrase (libpq and asyncpg read both, from a URL's query and in keyword form).
PASSWORD_KEYS = ("password", "sslpassword")
# libpq keyword form: password = value, value bare or '..' with \' and \\ escapes.
_KV_PASSWORD = re.compile(r"(?P<head>(?<![\w-])(?:ssl)?password\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'?|[^\s&'][^\s&]*)",
                          re.IGNORECASE | re.DOTALL)
# A URL query parameter, its key perhaps percent-encoded (asyncpg decodes it: pass%77ord).
_QUERY_PARAM = re.compile(r"(?P<head>[?&;](?P<key>[^=&;#\s?]+)=)(?P<value>[^&;#\s]*)")


def _redact_urls(text: str) -> str:
    out = []
    pos = 0
    starts = [m for m in _SCHEME.finditer(text)]
    for i, m in enumerate(starts):
        auth_start = m.end()
        region_end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        region = text[auth_start:region_end]
        at = region.rfind("@")  # everything up to the last '@' is userinfo: never less than a client reads
        if at < 0:
            continue
        userinfo = region[:at]
        colon = userinfo.find(":")
        if colon < 0:
            continue
        out.append(text[pos:auth_start + colon + 1])
        out.append(MASK)
        pos = auth_start + at
    out.append(text[pos:])
    return "".join(out)


def redact_dsn(text: str) -> str:
    """`text` (a DSN, or a message quoting DSNs) with every password it spells out
    replaced by ***: URL userinfo, `password=` query parameters and libpq keywords."""
    text = _redact_urls(text)
    text = _QUERY_PARAM.sub(lambda m: m.group("head") + MASK if _is_password_key(m.group("key")) and m.group("value")
                            else m.group(0), text)
    return _KV_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


def _is_password_key(key: str) -> bool:
    return unquote(key).strip().lower() in PASSWORD_KEYS


# --- passwords a DSN carries ---------------------------------------------------------


def _kv_value(raw: str) -> str:
    if raw.startswith("'"):
        body = raw[1:-1] if raw.endswith("'") and len(raw) > 1 else raw[1:]
        return re.sub(r"\\(.)", r"\1", body, flags=re.DOTALL)
    return raw


def dsn_passwords(dsn: str) -> set[str]:
    """Every password `dsn` holds, as written and decoded."""
    found: set[str] = set()
    m = _SCHEME.match(dsn)
    if m:
        rest = dsn[m.end():]
        at = rest.rfind("@")
        userinfo = rest[:at] if at >= 0 else ""
        if ":" in userinfo:
            raw = userinfo.split(":", 1)[1]
            found |= {raw, unquote(raw)}
        query = rest.split("?", 1)[1] if "?" in rest else ""
        for part in re.split(r"[&;]", query):
            key, _, value = part.partition("=")
            if _is_password_key(key) and value:
                found |= {value, unquote(value), unquote(value.replace("+", " "))}
    for kv in _KV_PASSWORD.finditer(dsn if not m else ""):
        found.add(_kv_value(kv.group("pw")))
    return {p for p in found if p}


# --- scrubbing registered secrets ------------------------------------------------------

_lock = threading.Lock()
_forms: tuple[str, ...] = ()  # every spelling of every secret, longest first


def _spellings(secret: str) -> set[str]:
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), " ".join(secret.split()),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret)[1:-1],
             escape_controls(secret), secret.encode("unicode_escape").decode("ascii"),
             # Postgres cuts a name at 63 bytes when it quotes one back (a password given as a
             # database or user name by mistake).
             secret.encode("utf-8")[:63].decode("utf-8", "ignore")}
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), f) for f in list(forms)}
    return {f for f in forms if len(f) >= MIN_SCRUB_LENGTH}


def register_secret(secret: str | None) -> None:
    """From now on, `scrub` removes `secret` (in all its spellings) from any text."""
    global _forms
    if not secret or len(secret) < MIN_SCRUB_LENGTH:
        return
    with _lock:
        _forms = tuple(sorted(set(_forms) | _spellings(secret), key=len, reverse=True))


def register_dsn(dsn: str | None) -> None:
    for pw in dsn_passwords(dsn or ""):
        register_secret(pw)


def forget_secrets() -> None:
    global _forms
    with _lock:
        _forms = ()


def scrub(text: str) -> str:
    """`text` without any registered secret and with every DSN password redacted."""
    for form in _forms:
        if form in text:
            text = text.replace(form, MASK)
    return redact_dsn(text)


def scrub_obj(obj: Any) -> Any:
    """`scrub` applied to every string (keys too) in a JSON-like structure."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {scrub_obj(k): scrub_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub_obj(v) for v in obj]
    return obj
