"""Keep passwords out of everything syncd prints: logs, status, errors, metrics."""

import re

# userinfo password in a URL: scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)")
# password=... in a query string or a libpq keyword/value string
_KV_PASSWORD = re.compile(r"(?P<head>(?:^|[?&\s])password=)(?P<pw>'(?:[^'\\]|\\.)*'|[^&\s]*)", re.IGNORECASE)


def redact_dsn(text: str) -> str:
    """Replace every password in `text` (a DSN, or a message containing one) with ***."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    return _KV_PASSWORD.sub(lambda m: m.group("head") + "***", text)
