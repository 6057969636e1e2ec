"""Settings: the only module that knows the shape of the TOML file and the environment.

Precedence, highest first: environment (`SYNCD_POSTGRES__DSN`, ...), credential files
(`$CREDENTIALS_DIRECTORY/postgres__password`, as systemd's LoadCredential= provides),
then the TOML file.
"""

from __future__ import annotations

import contextvars
import difflib
import fnmatch
import os
import re
import typing
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

from syncd.identifiers import PG_MAX_IDENTIFIER_BYTES, sqlite_folded
from syncd.printable import escape_controls
from syncd.redact import redact_dsn, register_dsn, register_secret
from syncd.types import PgType, parse_override

DEFAULT_CONFIG = Path("syncd.toml")
T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem; the message's first line names the key at fault (and
    how many more problems there are), every other problem on a line of its own."""

    exit_code = 2


class _Strict(BaseModel):
    # TOML spells inf and nan: no timeout, interval or limit of syncd's means either.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value, info):
        """`batch_size = true` is a mistake, not 1 (pydantic takes a bool as a number)."""
        field = cls.model_fields.get(info.field_name)
        if isinstance(value, bool) and field is not None and field.annotation in (int, float):
            raise ValueError("must be a number, not true or false")
        return value


def _meant_userinfo(rest: str) -> str | None:
    """What the user meant as the user name and password of a URL (`rest`: after
    "scheme://"): everything up to the last '@', which a host never holds; an '@' in
    the query (`?application_name=a@b`) is left to the query."""
    at = rest.rfind("@")
    if at < 0:
        return None
    q = rest.find("?")
    if 0 <= q < at and "=" in rest[q:at]:
        at = rest.rfind("@", 0, q)  # the '@' is in the query's values; before it, the userinfo's, if any
        if at < 0:
            return None  # no userinfo at all: postgresql://host/app?user=admin@myserver
    return rest[:at]


SSL_MODES = ("disable", "allow", "prefer", "require", "verify_ca", "verify_full")  # asyncpg's, '-' read as '_'


def _port_numbers(value: str) -> bool:
    try:
        [int(p) for p in value.split(",")]
    except ValueError:
        return False
    return True


def _tls_version(value: str) -> bool:
    import ssl

    return not value.startswith("SSL") and value.replace(".", "_") in ssl.TLSVersion.__members__


# The libpq settings asyncpg reads from the environment where a DSN's query does not give
# them, and refuses every connection with when it does not know the value: (variable, the
# DSN's query key that wins over it, whether asyncpg takes a value, what it takes). Left
# to the connection, such a value read as Postgres being unreachable, retried for ever.
LIBPQ_ENVIRONMENT = (
    ("PGSSLMODE", "sslmode", lambda v: v.replace("-", "_") in SSL_MODES,
     "not one of disable, allow, prefer, require, verify-ca, verify-full"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs",
     lambda v: v in ("any", "primary", "standby", "prefer-standby", "read-write", "read-only"),
     "not one of any, primary, standby, prefer-standby, read-write, read-only"),
    ("PGSSLNEGOTIATION", "sslnegotiation", lambda v: v in ("postgres", "direct"), "not one of postgres, direct"),
    ("PGGSSLIB", "gsslib", lambda v: v in ("gssapi", "sspi"), "not one of gssapi, sspi"),
    ("PGPORT", "port", _port_numbers, "not a port number (or a comma-separated list of them)"),
    ("PGSSLMINPROTOCOLVERSION", "ssl_min_protocol_version", _tls_version,
     "not a TLS version (TLSv1, TLSv1.1, TLSv1.2, TLSv1.3)"),
    ("PGSSLMAXPROTOCOLVERSION", "ssl_max_protocol_version", _tls_version,
     "not a TLS version (TLSv1, TLSv1.1, TLSv1.2, TLSv1.3)"),
)
_TLS_ONLY = ("PGSSLMINPROTOCOLVERSION", "PGSSLMAXPROTOCOLVERSION")  # read only where TLS may be used (_tls_read)


def _tls_read(dsn: str, query: dict[str, list[str]]) -> bool:
    """Whether asyncpg reads the TLS protocol versions for `dsn` (its parsed `query`): only
    where the sslmode in effect (the DSN's last, else PGSSLMODE, else prefer where a host
    is reached over TCP, none where every host is a Unix socket's directory) is not
    disable. An sslmode asyncpg does not know is refused on its own."""
    if "sslmode" in query:
        mode = query["sslmode"][-1]
    elif os.environ.get("PGSSLMODE") is not None:
        mode = os.environ["PGSSLMODE"]
    else:
        netloc = urlsplit(dsn).netloc
        spec = netloc.partition("@")[2] if "@" in netloc else netloc
        if spec:
            hosts = [unquote(h) for h in spec.split(",")]
        elif (query.get("host") or [""])[-1]:
            hosts = query["host"][-1].split(",")
        elif os.environ.get("PGHOST"):
            hosts = os.environ["PGHOST"].split(",")
        else:
            hosts = ["localhost"]  # asyncpg's defaults include localhost
        if all(h.startswith("/") for h in hosts):
            return False
        mode = "prefer"
    return mode != "disable"


def libpq_environment_refused(dsns: list[str]) -> str | None:
    """The line naming a libpq environment variable whose value asyncpg refuses every
    connection to one of `dsns` with (the DSN's own query does not give the setting), or
    None. The value is not secret (none of these variables holds a password)."""
    for dsn in dsns:
        query = parse_qs(urlsplit(dsn).query)
        tls = _tls_read(dsn, query)
        for name, key, takes, said in LIBPQ_ENVIRONMENT:
            value = os.environ.get(name)
            if value is None or key in query or (name in _TLS_ONLY and not tls):
                continue
            if not value and (name == "PGPORT" or name in _TLS_ONLY):
                continue  # empty: asyncpg takes it as not set (an empty PGSSLMODE, say, it refuses)
            if not takes(value):
                return escape_controls(f"environment variable {name} ({value}): {said}; Postgres clients refuse "
                                       "every connection with it: correct it or unset it")
    return None


def check_dsn(dsn: str) -> str:
    """A postgresql:// URL every client reads the same way. The messages never quote
    the DSN: it may hold a password."""
    scheme = re.match(r"(?:postgresql|postgres)://", dsn)
    if not scheme:
        raise ValueError("must be a postgresql:// URL, e.g. postgresql://syncd@127.0.0.1:5432/synapse")
    rest = dsn[scheme.end():]
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    authority = rest[:min(ends, default=len(rest))]
    userinfo = _meant_userinfo(rest)
    colon = userinfo.find(":") if userinfo else -1
    if (authority.count("@") > 1 or ("@" not in authority and "@" in rest.split("?", 1)[0])
            or (userinfo and any(c in userinfo for c in "/?#"))
            or (colon >= 0 and "@" in userinfo[colon + 1:])):
        # asyncpg and libpq end the host part at the first '/', '?' or '#' and take the
        # userinfo up to an '@' before it: the password would be cut short, its rest taken
        # for a host name (and looked up in DNS).
        raise ValueError("the user name or password holds a character clients split a URL at: percent-encode it "
                         "('@' as %40, '/' as %2F, '?' as %3F, '#' as %23, ':' in a user name as %3A), "
                         "or leave the password out of the DSN and set [postgres] password or "
                         "SYNCD_POSTGRES__PASSWORD")
    query = rest.split("#", 1)[0].split("?", 1)[1] if "?" in rest.split("#", 1)[0] else ""
    if query:
        try:  # what asyncpg does with the query: a part it cannot read fails every connection
            params = parse_qs(query, strict_parsing=True)
        except ValueError:
            raise ValueError("its query (after '?') is not key=value pairs joined by '&'; a '?' in the user name or "
                             "password must be percent-encoded as %3F (or leave the password out and set "
                             "SYNCD_POSTGRES__PASSWORD)") from None
        # asyncpg takes the last sslmode given, and refuses every connection with one it does not know.
        if "sslmode" in params and params["sslmode"][-1].replace("-", "_") not in SSL_MODES:
            raise ValueError("its sslmode is not one of disable, allow, prefer, require, verify-ca, verify-full")
        # So does it with the other settings it checks (the libpq environment's, given in the DSN).
        for name, key, takes, said in LIBPQ_ENVIRONMENT:
            if key in ("sslmode", "port") or key not in params:
                continue  # sslmode: above; a port in the query is read only where the host names none
            if name in _TLS_ONLY and not _tls_read(dsn, params):
                continue  # read only where TLS may be used
            if not takes(params[key][-1]):
                raise ValueError(f"its {key} is {said}")
    if any(c in dsn for c in "\r\n\t"):
        raise ValueError("holds a line break or tab; percent-encode it (%0A, %0D, %09)")
    if "\x00" in dsn or "%00" in dsn:  # Postgres's startup message ends each name and value at a NUL
        raise ValueError("holds a NUL character (\\u0000 or %00), which no Postgres name or value can hold")
    try:
        parts = urlsplit(dsn)
        parts.port  # noqa: B018 - raises on a non-numeric port
    except ValueError:
        raise ValueError("not a valid postgresql:// URL (check the host and port)") from None
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError("names no host")
    return dsn


class PostgresSettings(_Strict):
    dsn: str
    password: SecretStr | None = None
    connect_timeout_seconds: float = Field(10.0, gt=0)
    # Sent to Postgres doubled, in milliseconds, as backstops its integer settings must hold.
    statement_timeout_seconds: float = Field(60.0, gt=0, le=1_000_000)
    bookkeeping_schema: str = "syncd"
    # Connections the daemon opens to each target database, whatever the number of
    # sources in it: one holds every source's lock, the others serve the sources' steps.
    max_connections: int = Field(8, ge=2, le=1000)
    # "transaction" when `dsn` goes through PgBouncer (or another pooler) in transaction
    # mode: syncd then prepares no named statements, and takes its session-level locks
    # on `lock_dsn`, a direct connection to the same database.
    pooler: Literal["none", "transaction"] = "none"
    lock_dsn: str | None = None

    @field_validator("lock_dsn")
    @classmethod
    def _lock_dsn(cls, v: str | None) -> str | None:
        return None if v is None else check_dsn(v)

    @model_validator(mode="after")
    def _pooler(self) -> "PostgresSettings":
        if self.pooler == "transaction" and self.lock_dsn is None:
            raise ValueError("pooler: \"transaction\" needs lock_dsn, a direct connection for syncd's locks")
        return self

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, v: str) -> str:
        return check_dsn(v)

    @field_validator("bookkeeping_schema")
    @classmethod
    def _bookkeeping_schema(cls, v: str) -> str:
        """A schema Postgres lets syncd create, as a source's schema must be."""
        if not v:
            raise ValueError("is empty")
        if "\x00" in v:
            raise ValueError("holds a NUL character, which Postgres names cannot")
        if len(v.encode()) > PG_MAX_IDENTIFIER_BYTES:
            raise ValueError(f"longer than {PG_MAX_IDENTIFIER_BYTES} bytes")
        if v.startswith("pg_") or v == "information_schema":
            raise ValueError(f"{v!r} is reserved by Postgres; choose another schema")
        return v


class MetricsSettings(_Strict):
    listen: str = "127.0.0.1:9464"
    # Credentials for every page of the endpoint (bearer token and/or basic auth). Like the
    # Postgres password: from SYNCD_METRICS__AUTH_TOKEN / SYNCD_METRICS__BASIC_AUTH_PASSWORD
    # or the credential files metrics__auth_token / metrics__basic_auth_password.
    auth_token: SecretStr | None = None
    basic_auth_user: str | None = None
    basic_auth_password: SecretStr | None = None
    max_connections: int = Field(16, ge=1, le=1024)
    read_timeout_seconds: float = Field(5.0, gt=0, le=300)
    # Series per table (applied changes, state, rows, consistency); false keeps only the
    # per-source ones, for fleets of thousands of tables (docs/operations.md, Fleets).
    per_table: bool = True

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v == "":
            return v  # disabled
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464 (or \"\" to disable)")
        return v

    @field_validator("auth_token", "basic_auth_password")
    @classmethod
    def _not_empty(cls, v: SecretStr | None) -> SecretStr | None:
        # Set from an unset shell variable, say: the page the operator meant closed would be open.
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("is empty: set the credential, or leave the key out")
        return v

    @model_validator(mode="after")
    def _basic_pair(self) -> "MetricsSettings":
        if (self.basic_auth_password is None) != (self.basic_auth_user is None):
            raise ValueError("basic_auth_user and basic_auth_password go together")
        return self

    def access(self):
        from syncd.endpoint_client import Access

        def secret(v: SecretStr | None) -> str | None:
            return v.get_secret_value() if v is not None else None

        return Access(secret(self.auth_token), self.basic_auth_user, secret(self.basic_auth_password))

    @property
    def address(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


class StreamSettings(_Strict):
    batch_size: int = Field(5000, ge=1, le=1_000_000)
    poll_interval_seconds: float = Field(1.0, gt=0)
    schema_check_interval_seconds: float = Field(60.0, gt=0)
    snapshot_chunk_rows: int = Field(50_000, ge=100)
    retry_max_backoff_seconds: float = Field(30.0, gt=0)
    held_table_retry_seconds: float = Field(10.0, gt=0)
    # The daemon's periodic checks of every source together never exceed this rate (a
    # thousand sources are then each checked every 10 s; file events wake them at once).
    max_polls_per_second: float = Field(100.0, gt=0)
    # How often the daemon looks for new files a source's path glob matches.
    discover_interval_seconds: float = Field(10.0, gt=0)


class SqliteSettings(_Strict):
    # How long syncd's own reads wait for an application writer before retrying.
    # Both at most what SQLite's PRAGMA busy_timeout holds (a larger one reads as 0: no wait).
    read_busy_timeout_ms: int = Field(2000, ge=0, le=2**31 - 1)
    # How long syncd's own write transactions (pruning, trigger install) may wait for a
    # lock. Kept short: while syncd waits holding RESERVED, application writers wait too.
    write_busy_timeout_ms: int = Field(100, ge=0, le=2**31 - 1)
    # Changelog positions one pruning transaction covers (kept entries included).
    prune_window: int = Field(20_000, ge=1)
    # Threads every source's SQLite work runs on, however many sources there are (more
    # are started while every one waits on a file its application keeps locked).
    threads: int = Field(4, ge=1, le=256)
    # A source with nothing to do for this long closes its SQLite connection until a
    # change shows in the file's size or time (a fleet of idle files then costs little).
    idle_close_seconds: float = Field(10.0, gt=0)
    # The most disk a source's changelog may take while Postgres is away. Over it, syncd
    # keeps one entry per key; still over, it suspends capture for that source (the
    # application's writes come first) and re-snapshots when Postgres is back.
    max_changelog_mb: float = Field(1024.0, gt=0)


class StatusSettings(_Strict):
    warn_lag_seconds: float = Field(30.0, ge=0)
    crit_lag_seconds: float = Field(300.0, ge=0)
    verify_max_age_seconds: float = Field(3600.0, gt=0)


class VerifySettings(_Strict):
    interval_seconds: float = Field(300.0, ge=0)  # 0 disables the daemon's periodic check
    concurrency: int = Field(2, ge=1, le=64)  # sources checked at once by the daemon
    chunk_rows: int = Field(10_000, ge=16)
    # The periodic check replays the differences it finds through the stream, as
    # `syncd verify --repair` does. On by default: SQLite is the source of truth, a
    # difference confirmed after in-flight changes is never right, and the replay
    # reads SQLite's current row, so it cannot write a stale value. Every repair stays
    # an error in the history the cutover report judges.
    repair: bool = True
    # Clean runs older than this are merged in the history, by table and hour (by day
    # before the report's window), still counted; runs that found anything never are.
    keep_every_run_days: float = Field(2.0, gt=0)


class CutoverSettings(_Strict):
    min_days: float = Field(14.0, ge=0)
    # Dual-write is judged only where it was watched: a table left longer than this
    # without a verification run in the window fails the item (errors there would not show).
    max_verify_gap_hours: float = Field(24.0, gt=0)
    backup_glob: str | None = None
    backup_max_age_days: float = Field(30.0, gt=0)
    # Schema parity (docs/cutover.md, "What syncd creates in Postgres"): how COLLATE NOCASE
    # columns ignore case in Postgres, which timestamp type date columns get and when.
    nocase: Literal["icu", "citext", "none"] = "icu"
    timestamps: Literal["auto", "timestamp", "timestamptz"] = "auto"
    typed_columns: Literal["cutover", "dual-write", "never"] = "cutover"
    # "PostgreSQL performance meets targets": lookups slower than this fail the item;
    # at most speed_max_lookups lookups are timed per report, all sources together
    # (sampled rows; every table's primary key first, then its indexes).
    max_query_ms: float = Field(50.0, gt=0)
    speed_max_lookups: int = Field(200, ge=1)  # no ceiling: the item fails while any lookup is untimed
    # How often the daemon counts foreign-key orphans (0: never; the report counts anyway;
    # at most every 0.5 s however small).
    orphan_check_interval_seconds: float = Field(300.0, ge=0)
    # After a cutover SQLite follows Postgres for this long, so `syncd rollback` stays
    # possible; then the way back stops (the file is kept as it is, never deleted).
    keep_sqlite_days: float = Field(30.0, gt=0)
    # "Rollback plan tested": the report wants a successful `syncd rehearse` of each
    # source no older than this.
    rehearsal_max_age_days: float = Field(30.0, gt=0)


class LogSettings(_Strict):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class SourceSettings(_Strict):
    name: str
    path: Path
    schema_: str | None = Field(None, alias="schema")
    tables: list[str] = ["*"]
    exclude: list[str] = []
    dsn: str | None = None
    # With [postgres] pooler = "transaction" and a `dsn` of its own: a direct connection
    # to that database for the source's session-level locks (as [postgres] lock_dsn).
    lock_dsn: str | None = None
    keys: dict[str, list[str]] = {}
    columns: dict[str, dict[str, str]] = {}

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, v):
        if isinstance(v, str) and not v.strip():
            raise ValueError("is empty")  # Path("") is ".", the config's own directory
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("holds a NUL character, which no file name can")
        if isinstance(v, str) and "**" in v:
            # glob.glob reads it as '*' (one folder level): files at any other depth were left out without a word.
            raise ValueError("'**' matches one folder level here, not any depth, and files at other depths would be "
                             "left out: name each level with '*' (\"/srv/tenants/*/*.db\"), a [[sources]] entry "
                             "per depth")
        return v

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("holds a NUL character, which Postgres names cannot")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        # {stem}, {name} and {parent} stand for each file a `path` glob finds (discovery.py).
        if not re.fullmatch(r"([A-Za-z0-9_.\-]|\{(stem|name|parent)\})+", v):
            raise ValueError("may only use letters, digits, '_', '.' and '-' (and {stem}, {name} or {parent} "
                             "with a path glob)")
        return v

    @model_validator(mode="after")
    def _template(self) -> "SourceSettings":
        templated = "{" in self.name or "{" in (self.schema_ or "")
        if templated and not is_glob(self.path):
            raise ValueError("name: {stem}, {name} and {parent} need a path glob such as \"/srv/tenants/*.db\"")
        if is_glob(self.path) and "{" not in self.name:
            raise ValueError("name: a path glob needs a name template naming each file, e.g. \"tenant_{stem}\"")
        return self

    @field_validator("dsn", "lock_dsn")
    @classmethod
    def _dsn(cls, v: str | None) -> str | None:
        return None if v is None else check_dsn(v)

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for table, cols in v.items():
            for col, type_name in cols.items():
                try:
                    parse_override(type_name)
                except ValueError as e:
                    raise ValueError(f"{table}.{col}: {e}") from None
        return v

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for table, cols in v.items():
            if not cols:
                raise ValueError(f"{table}: needs at least one column")
            seen: set[str] = set()
            for col in cols:  # one name in SQLite, however it is cased; Postgres refuses such a key
                if sqlite_folded(col) in seen:
                    raise ValueError(f"{table}: names column {col!r} twice")
                seen.add(sqlite_folded(col))
        return v

    @property
    def schema(self) -> str:
        return self.schema_ or self.name

    def _for_table(self, setting: dict[str, T], table: str) -> T | None:
        """`setting`'s entry for `table`, named as SQLite names tables (A-Z in any case): an
        entry for "Orders" is the table orders', not an entry for no table, left unused."""
        if table in setting:
            return setting[table]
        folded = sqlite_folded(table)
        return next((v for k, v in setting.items() if sqlite_folded(k) == folded), None)

    def unmatched_tables(self, held: typing.Iterable[str]) -> list[str]:
        """One line for each table [sources.keys] or [sources.columns] names that the file
        does not hold (`held`: every table, view and virtual table in it), as SQLite names
        tables (A-Z in any case). Not refused: the application may create the table later;
        but a misspelt name would leave the setting unused without a word."""
        folded = {sqlite_folded(n): n for n in held}
        lines = []
        for key, setting in (("keys", self.keys), ("columns", self.columns)):
            for table in setting:
                if sqlite_folded(table) in folded:
                    continue
                close = difflib.get_close_matches(sqlite_folded(table), sorted(folded), n=1, cutoff=0.6)
                hint = f" (did you mean {folded[close[0]]!r}?)" if close else ""
                lines.append(f"[sources.{key}] names table {table!r}, which {self.path} does not hold{hint}: "
                             "the setting is unused until a table of that name appears")
        return lines

    def keys_for(self, table: str) -> list[str] | None:
        return self._for_table(self.keys, table)

    def columns_for(self, table: str) -> dict[str, str]:
        return self._for_table(self.columns, table) or {}

    def column_override(self, table: str, column: str) -> PgType | None:
        """The type [sources.columns] sets for `column`, named as SQLite names columns
        (A-Z in any case, as tables: _for_table)."""
        name = self._for_table(self.columns_for(table), column)
        return parse_override(name) if name else None

    def wants_table(self, table: str) -> bool:
        """Whether `tables` and `exclude` take `table`, their patterns matched as SQLite
        names tables (A-Z in any case): `exclude = ["Secrets"]` leaves out secrets."""
        name = sqlite_folded(table)
        included = any(fnmatch.fnmatchcase(name, sqlite_folded(p)) for p in self.tables)
        return included and not any(fnmatch.fnmatchcase(name, sqlite_folded(p)) for p in self.exclude)


def is_glob(path: Path) -> bool:
    return any(c in str(path) for c in "*?[")


# Of the schemas `syncd rehearse` makes and drops: its replica's, its bookkeeping's (rehearsal.py).
REHEARSAL_SUFFIX = "_rehearsal"
# Of the name a rehearsal runs a source's copy under (its lock is taken under that name).
REHEARSAL_NAME_SUFFIX = ".rehearsal"


def rehearsal_name_problem(name: str, taken: typing.Container[str]) -> str | None:
    """Why source name `name` would be the name `syncd rehearse` runs another source's copy
    under (or that source's copy this one's), beside the sources `taken`, or None: the
    rehearsal, or the source, finds its lock held by the other."""
    if name.endswith(REHEARSAL_NAME_SUFFIX) and name.removesuffix(REHEARSAL_NAME_SUFFIX) in taken:
        return (f"{name!r} is the name `syncd rehearse` gives the copy of source "
                f"{name.removesuffix(REHEARSAL_NAME_SUFFIX)!r} it rehearses with")
    if name + REHEARSAL_NAME_SUFFIX in taken:
        return (f"the name `syncd rehearse` gives the copy of source {name!r} it rehearses with, "
                f"{name + REHEARSAL_NAME_SUFFIX!r}, is another source's")
    return None


_WORKED_OUT = ("config_path", "patterns", "configured", "discovery_problems")  # Settings' fields load_settings fills
_toml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("toml_path", default=None)


class Settings(BaseSettings):
    postgres: PostgresSettings
    metrics: MetricsSettings = MetricsSettings()
    stream: StreamSettings = StreamSettings()
    sqlite: SqliteSettings = SqliteSettings()
    status: StatusSettings = StatusSettings()
    verify: VerifySettings = VerifySettings()
    cutover: CutoverSettings = CutoverSettings()
    log: LogSettings = LogSettings()
    sources: list[SourceSettings] = []

    config_path: Path | None = Field(None, exclude=True)
    # [[sources]] entries whose path is a glob: the templates discovery expands (the
    # expanded sources are in `sources`), and what it could not pick up, per file.
    patterns: list[SourceSettings] = Field([], exclude=True)
    configured: list[SourceSettings] = Field([], exclude=True)  # the [[sources]] naming one file each
    discovery_problems: list[str] = Field([], exclude=True)

    model_config = SettingsConfigDict(
        env_prefix="SYNCD_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir:
            sources.append(
                NestedSecretsSettingsSource(
                    SecretsSettingsSource(settings_cls, secrets_dir=cred_dir),
                    secrets_dir_missing="ok",
                    secrets_prefix="",
                    secrets_nested_delimiter="__",
                )
            )
        toml = _toml_path.get()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @model_validator(mode="before")
    @classmethod
    def _nothing_syncd_works_out(cls, data: object) -> object:
        """The fields above that syncd fills in itself (load_settings, discovery) are not
        settings: one written in the TOML or the environment would be silently ignored."""
        for key in _WORKED_OUT if isinstance(data, dict) else ():
            if key in data:
                raise PydanticCustomError("worked_out", "{key}: unknown key", {"key": key})
        return data

    @model_validator(mode="after")
    def _unique_sources(self) -> "Settings":
        seen: set[str] = set()
        for i, s in enumerate(self.sources):
            if s.name in seen:
                raise ValueError(f"sources[{i}].name: duplicate source name {s.name!r}")
            rehearsal = rehearsal_name_problem(s.name, seen)
            if rehearsal is not None:
                raise ValueError(f"sources[{i}].name: {rehearsal}; name this source otherwise")
            seen.add(s.name)
            if len(s.schema.encode()) > PG_MAX_IDENTIFIER_BYTES:
                raise ValueError(f"sources[{i}].schema: longer than {PG_MAX_IDENTIFIER_BYTES} bytes")
            if s.schema == self.postgres.bookkeeping_schema:
                raise ValueError(
                    f"sources[{i}].schema: {s.schema!r} is syncd's own bookkeeping schema "
                    "([postgres] bookkeeping_schema); replicate this source into another schema "
                    '(schema = "...")')
            if s.schema == self.postgres.bookkeeping_schema + REHEARSAL_SUFFIX:
                raise ValueError(
                    f"sources[{i}].schema: {s.schema!r} is where `syncd rehearse` keeps its bookkeeping, dropped with "
                    "all it holds after each rehearsal; replicate this source into another schema (schema = \"...\")")
            if s.lock_dsn is not None and s.dsn is None:
                raise ValueError(f"sources[{i}].lock_dsn: only for a source with a dsn of its own "
                                 "([postgres] lock_dsn serves the others)")
            if self.postgres.pooler == "transaction" and s.dsn is not None and s.lock_dsn is None:
                raise ValueError(f'sources[{i}].lock_dsn: with [postgres] pooler = "transaction", a source with a '
                                 "dsn of its own needs lock_dsn, a direct connection to that database for syncd's "
                                 "locks")
            if s.schema.startswith("pg_") or s.schema == "information_schema":
                raise ValueError(f"sources[{i}].schema: {s.schema!r} is reserved by Postgres; choose another schema")
        for i, s in enumerate(self.sources):
            other = next((o for o in self.sources if o.schema + REHEARSAL_SUFFIX == s.schema
                          and self.dsn_for(o) == self.dsn_for(s)), None)
            if other is not None:
                raise ValueError(
                    f"sources[{i}].schema: {s.schema!r} is where `syncd rehearse` replicates the copy of source "
                    f"{other.name!r}, and drops it after; replicate this source into another schema (schema = \"...\")")
        return self

    def problems_of(self, sources: list) -> list:
        """The files not picked up that are another name (a hard link) of one of `sources`'
        files: theirs, where the rest are the fleet's."""
        paths = {str(s.path) for s in sources}
        return [p for p in self.discovery_problems if getattr(p, "same_as", None) in paths]

    def no_sources(self) -> str:
        """Why there is no source to work on, naming the globs that match no file."""
        if self.patterns:
            globs = ", ".join(str(p.path) for p in self.patterns)
            if self.discovery_problems:  # each named on a line of its own
                return (f"no source: the [[sources]] path glob {globs} matches no file syncd picks up "
                        f"({len(self.discovery_problems)} not picked up)")
            return f"no source: the [[sources]] path glob {globs} matches no file"
        return "no [[sources]] in the configuration"

    def source(self, name: str) -> SourceSettings:
        for s in self.sources:
            if s.name == name:
                return s
        raise ConfigError(f"no source named {name!r} in the configuration")

    def dsn_for(self, source: SourceSettings) -> str:
        return source.dsn or self.postgres.dsn

    def direct_dsn_for(self, source: SourceSettings) -> str:
        """Where session-level state (advisory locks) must live: past any pooler."""
        if source.dsn is None and self.postgres.lock_dsn is not None:
            return self.postgres.lock_dsn
        if source.dsn is not None and source.lock_dsn is not None:
            return source.lock_dsn
        return self.dsn_for(source)

    def password(self) -> str | None:
        return self.postgres.password.get_secret_value() if self.postgres.password else None


def register_secrets(settings: Settings) -> None:
    """Make every secret the settings hold known to redact.scrub, so no error text
    that quotes one is printed, logged or served."""
    register_secret(settings.password())
    for secret in (settings.metrics.auth_token, settings.metrics.basic_auth_password):
        register_secret(secret.get_secret_value() if secret is not None else None)
    register_secret(os.environ.get("PGPASSWORD"))
    for dsn in [settings.postgres.dsn, settings.postgres.lock_dsn] + [d for s in settings.sources for d in (s.dsn, s.lock_dsn) if d]:
        register_dsn(dsn)


def resolve_config_path(cli_path: str | None) -> Path:
    if cli_path is not None and not cli_path.strip():
        # `--config "$CONFIG"` with $CONFIG unset: a file was meant, not ./syncd.toml.
        raise ConfigError("--config: is empty; name the configuration file (or leave the option out)")
    if cli_path:
        return Path(cli_path)
    env = os.environ.get("SYNCD_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The settings model that holds the key at `loc` (("postgres", "dns") -> PostgresSettings)."""
    model: type[BaseModel] = Settings
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list: [[sources]]
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = field.annotation
        while typing.get_args(inner) and not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            inner = next((a for a in typing.get_args(inner) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return None
        model = inner
    return model


def _close_key(loc: tuple) -> str | None:
    """The known key an unknown one was likely meant as (`dns` -> `dsn`), if any."""
    model = _model_at(loc[:-1])
    if model is None or not isinstance(loc[-1], str):
        return None
    keys = [f.alias or name for name, f in model.model_fields.items() if not f.exclude]
    close = difflib.get_close_matches(loc[-1], keys, n=1, cutoff=0.6)
    return close[0] if close else None


def _problem(error: dict, path: Path) -> tuple[str, str]:
    """(where, what) for one validation error: the key at fault and what is wrong with it."""
    loc = (error["ctx"]["key"],) if error["type"] == "worked_out" else error["loc"]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"
    msg = error["msg"]
    env = "SYNCD_" + "__".join(str(p) for p in loc).upper()
    from_env = bool(loc) and any(k.upper() == env for k in os.environ)
    # SYNCD_POSTGRES='{"dsn": ...}': the key is in a section (or list) set whole from the environment.
    holding = None if from_env or not loc else _env_holding(loc)
    if error["type"] in ("extra_forbidden", "worked_out"):
        close = _close_key(loc)
        if close and from_env:
            close = "SYNCD_" + "__".join([*(str(p) for p in loc[:-1]), close]).upper()
        msg = "unknown key" + (f" (did you mean {close}?)" if close else "")
    elif error["type"] == "missing":
        msg = "required key is missing"
    msg = msg.removeprefix("Value error, ")
    # Never echo the offending input: it may be a DSN with a password in it.
    if from_env:
        return f"environment variable {env} (over config {path})", msg
    if holding is not None:
        return f"environment variable {holding} (over config {path})", f"{where}: {msg}"
    under = "SYNCD_" + "__".join(str(p) for p in loc).upper() + "__"
    item = next((k for k in sorted(os.environ) if loc and k.upper().startswith(under)), None)
    if item is not None and error["type"] in ("list_type", "dict_type", "model_type"):
        # SYNCD_SOURCES__0__PATH: the environment made `sources` a table of its own.
        return (f"environment variable {item} (over config {path})",
                f"{where} cannot be set item by item from the environment: set {under[:-2]} to the whole value as "
                "JSON, or change the config file")
    credential = _credential_file(loc)
    if credential is not None:
        return f"credential file {credential} (over config {path})", msg
    if not loc and re.match(r"[a-z_]+(\[\d+\])?(\.[a-z_]+)*: ", msg):
        return f"config {path}", msg  # a problem between keys, said naming the key at fault first
    if len(loc) == 1 and error["type"] == "list_type" and isinstance(error.get("input"), dict):
        msg = f"is one table ([{where}]); write each source as a [[{where}]] table (two brackets)"  # [sources]
    elif len(loc) == 1 and error["type"] == "model_type" and isinstance(error.get("input"), list):
        msg = f"is a list of tables ([[{where}]]); write the section as one [{where}] table (one bracket)"
    elif len(loc) == 1 and error["type"] == "model_type":  # `stream = 5`: the message named syncd's class
        msg = f"must be a table: a [{where}] line, its keys under it"
    return f"config {path}", f"{where}: {msg}"


def _env_holding(loc: tuple) -> str | None:
    """The variable that set a section (or list) whole as JSON and holds the key at `loc`
    (SYNCD_POSTGRES='{"dsn": ...}' for ("postgres", "dsn")), if any."""
    import json

    for i in range(len(loc) - 1, 0, -1):
        if any(isinstance(p, int) for p in loc[:i]):
            continue
        name = "SYNCD_" + "__".join(str(p) for p in loc[:i]).upper()
        value = next((v for k, v in os.environ.items() if k.upper() == name), None)
        if value is None:
            continue
        try:
            node = json.loads(value)
        except ValueError:
            return None
        for part in loc[i:]:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                return None
        return name
    return None


def _credential_file(loc: tuple) -> str | None:
    """The file in $CREDENTIALS_DIRECTORY the value at `loc` was read from, if any
    (postgres__dsn for ("postgres", "dsn")): over the config file's."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if not cred_dir or not loc or any(isinstance(p, int) for p in loc):
        return None
    candidate = os.path.join(cred_dir, "__".join(str(p) for p in loc))
    return candidate if os.path.isfile(candidate) else None


def _error_text(err: ValidationError, path: Path) -> str:
    """Every problem, the first on the first line as syncd's errors are, the others
    under it, indented. Unknown keys first: a misspelt key also makes the key it was
    meant as missing, and the typo is the problem to fix."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    problems = [_problem(e, path) for e in errors]
    (origin, first), rest = problems[0], problems[1:]
    lines = [f"{origin}: {first}" + (f" (and {len(rest)} more problem{'s' if len(rest) > 1 else ''}:)"
                                     if rest else "")]
    lines += [f"  {what}" if where == origin else f"  {where}: {what}" for where, what in rest]
    return "\n".join(escape_controls(line) for line in lines)  # a key holding a line break forges no line


def _real(path: Path) -> Path:
    """The file `path` names, symlinks followed as far as they lead: Path.resolve() raises
    on a link that leads back to itself (a link made wrong), which would end every look."""
    return Path(os.path.realpath(path))


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # not there (yet): its resolved path stands for it
    return st.st_dev, st.st_ino


def _file_of_two_sources(sources: list[SourceSettings]) -> str | None:
    """Two [[sources]] naming one SQLite file (spelled twice, or through a symlink or a
    hard link), said in one line; None when every file is one source's. Both would
    register the file, each take the other's capture id for a copy's and re-snapshot it,
    forever; and each would prune the changelog at its own pace. Globs are discovery's:
    it gives a file one source whichever patterns match it (discovery.expand)."""
    seen: dict[object, tuple[int, SourceSettings]] = {}
    for i, s in enumerate(sources):
        if is_glob(s.path):
            continue
        real = _real(s.path)
        for key in (real, _file_id(s.path)):
            if key is None:
                continue
            if key in seen:
                j, first = seen[key]
                link = real == _real(first.path)
                how = ("" if os.path.normpath(first.path) == os.path.normpath(s.path) else
                       f" ({s.path} is that file too: {'a symlink' if link else 'hard links'})")
                return (f"sources[{i}].path: source {s.name!r} names the file of source {first.name!r} "
                        f"(sources[{j}]), {first.path}{how}; one file is one source: remove one of them")
            seen[key] = (i, s)
    return None


def _misspelt_environment(path: Path) -> str | None:
    """An environment variable meant as a setting that syncd would not read, in one line,
    or None: SYNCD_POSTGRES_DSN (one underscore where two part section and key) or a
    misspelt section (SYNCD_STREM__BATCH_SIZE). Left unsaid, the file's value is used
    instead, say its database. syncd's own other variables (SYNCD_CONFIG,
    SYNCD_CUTOVER_HOLD_AT) are of neither shape. The value is never shown."""
    sections = {name for name, f in Settings.model_fields.items() if not f.exclude}
    for name in sorted(os.environ):
        rest = name.upper().removeprefix("SYNCD_")
        if rest == name.upper():
            continue
        meant = None
        if "__" in rest:
            section = rest.split("__", 1)[0].lower()
            if section not in sections:
                close = difflib.get_close_matches(section, sorted(sections), n=1, cutoff=0.6)
                meant = f"SYNCD_{close[0].upper()}__{rest.split('__', 1)[1]}" if close else None
                return (f"environment variable {name} (over config {path}): unknown section" +
                        (f" (did you mean {meant}?)" if meant else ""))
            continue
        for section in sections:
            model = _model_at((section,))
            key = rest.lower().removeprefix(section + "_")
            if model is not None and key != rest.lower() and key in model.model_fields:
                return (f"environment variable {name} (over config {path}): not a setting "
                        f"(did you mean SYNCD_{section.upper()}__{key.upper()}?)")
    return None


def _starts_with_bom(path: Path) -> str | None:
    """The encoding a byte order mark at the start of `path` names ("UTF-8", "UTF-16"), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(3)
    except OSError:
        return None
    if head == b"\xef\xbb\xbf":
        return "UTF-8"
    return "UTF-16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else None


def _not_json(message: str, path: Path) -> str:
    """pydantic-settings' "error parsing value for field "sources" from source
    "EnvSettingsSource"" said as syncd's errors are: naming the variable (or credential
    file) at fault, never its value (it may hold a password)."""
    m = re.search(r'field "([^"]+)" from source "([^"]+)"', message)
    if m is None:
        return f"config {path}: {redact_dsn(message)}"
    field, source = m.groups()
    if source.startswith("Env"):
        return (f"environment variable SYNCD_{field.upper()} (over config {path}): not valid JSON "
                "(a list or table set from the environment is written as JSON)")
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY", "")
    return f"credential file {os.path.join(cred_dir, field)} (over config {path}): not valid JSON"


def _bytes_of(path: Path, data: object) -> bool:
    """Whether `data` (what failed to decode) is the file's content."""
    try:
        return isinstance(data, bytes) and path.read_bytes() == data
    except OSError:
        return False


def _not_utf8_file(path: Path) -> bool:
    """Whether `path` is a regular file whose bytes are not UTF-8 text."""
    try:
        if not path.is_file():
            return False
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return True
    except OSError:
        return False
    return False


def load_settings(path: Path) -> Settings:
    """Load and validate the configuration, or raise ConfigError with one line."""
    try:
        there, regular = path.exists(), path.is_file()
    except OSError as e:  # a folder syncd may not enter: Path.exists raises "Permission denied"
        raise ConfigError(f"config file {path}: cannot read: {e.strerror}") from None
    if not there:
        raise ConfigError(f"config file {path} does not exist (use --config FILE or set SYNCD_CONFIG)")
    if not regular:
        raise ConfigError(f"config file {path} is not a regular file")
    misspelt = _misspelt_environment(path)
    if misspelt:
        raise ConfigError(escape_controls(misspelt))
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and os.path.exists(cred_dir) and not os.path.isdir(cred_dir):
        raise ConfigError(escape_controls(f"environment variable CREDENTIALS_DIRECTORY ({cred_dir}): not a directory "
                                          "(systemd's LoadCredential= sets it to one, holding a file per credential)"))
    token = _toml_path.set(path)
    try:
        settings = Settings()
    except ValidationError as e:
        raise ConfigError(_error_text(e, path)) from None
    except SettingsError as e:  # a list or table from the environment (or a credential file) that is not JSON
        raise ConfigError(escape_controls(_not_json(str(e), path))) from None
    except ValueError as e:  # TOML syntax errors surface as ValueError subclasses
        bom = _starts_with_bom(path)
        if bom == "UTF-8":  # invisible: "Invalid statement (at line 1, column 1)" of a line that reads right
            raise ConfigError(f"config {path}: starts with a byte order mark (U+FEFF), which TOML does not allow; save "
                              "it as UTF-8 without one") from None
        if bom == "UTF-16":
            raise ConfigError(f"config {path}: is UTF-16 text; TOML is UTF-8: save it as UTF-8 (without a byte "
                              "order mark)") from None
        if isinstance(e, UnicodeDecodeError) and cred_dir and not _bytes_of(path, e.object):
            # Not the config file's bytes: a credential file read with it (its content never shown).
            named = [f for f in sorted(Path(cred_dir).iterdir()) if not f.name.startswith(".") and _not_utf8_file(f)] \
                if os.path.isdir(cred_dir) else []
            named = [f for f in named if f.read_bytes() == e.object] or named  # the one read, where known
            where = f"credential file {named[0]}" if named else f"a credential file in {cred_dir}"
            raise ConfigError(escape_controls(f"{where} (over config {path}): is not UTF-8 text: save it as "
                                              "UTF-8")) from None
        if isinstance(e, UnicodeDecodeError):  # "can't decode byte 0xe9 in position 97": a count of bytes
            head = e.object[:e.start]  # UTF-8 up to the byte at fault
            line, column = head.count(b"\n") + 1, len(head[head.rfind(b"\n") + 1:].decode()) + 1
            raise ConfigError(f"config {path}: is not UTF-8 text (at line {line}, column {column}): a letter saved in "
                              "another encoding (Latin-1, say); TOML is UTF-8: save it as UTF-8") from None
        raise ConfigError(f"config {path}: {redact_dsn(str(e))}") from None
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read: {e.strerror}") from None
    finally:
        _toml_path.reset(token)
    register_secrets(settings)
    refused = libpq_environment_refused(
        [d for d in (settings.postgres.dsn, settings.postgres.lock_dsn) if d]
        + [d for s in settings.sources for d in (s.dsn, s.lock_dsn) if d])
    if refused:
        raise ConfigError(refused)
    base = path.resolve().parent
    sources = [
        s if s.path.is_absolute() else s.model_copy(update={"path": (base / s.path)}) for s in settings.sources
    ]
    shared = _file_of_two_sources(sources)
    if shared:
        raise ConfigError(f"config {path}: {shared}")
    settings = settings.model_copy(update={"config_path": path.resolve(),
                                           "configured": [s for s in sources if not is_glob(s.path)],
                                           "patterns": [s for s in sources if is_glob(s.path)]})
    from syncd.discovery import expand  # config -> discovery -> config: imported late

    return expand(settings)


