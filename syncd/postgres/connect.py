"""Connecting to Postgres, and telling transient failures from data problems."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from syncd.config import PostgresSettings
from syncd.postgres.bookkeeping import application_name
from syncd.redact import scrub

# SQLSTATEs worth retrying: the same statement can succeed later without anyone
# changing data (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_TRANSIENT_CLASSES = ("08", "53", "57", "58")  # connection, resources, operator intervention, system
_TRANSIENT_CODES = {"40001", "40P01", "55P03", "55006", "25P03", "25P04"}  # serialization, deadlock, lock/idle timeouts
# Class 22 (data exception) and 23 (integrity constraint): this row cannot go in as is;
# nor can one past a limit of Postgres's (54: a key longer than an index entry may be).
_DATA_CLASSES = ("22", "23", "54")
# The table or column is not what syncd expects: its shape drifted.
_SHAPE_CODES = {"42P01", "42703", "42804", "42P10"}


class PostgresUnavailable(Exception):
    """Postgres could not be reached or dropped the connection; retried."""


class CannotConnect(PostgresUnavailable):
    """A connection not opened (refused, unreachable, the role refused at login), not a
    statement failing or timing out on an open one."""


class LoginRefused(CannotConnect):
    """Postgres answered and refused syncd's role at login (no role of that name, a wrong
    password, no pg_hba.conf line for it); retried as an outage is. `reason`: Postgres's words."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# invalid_authorization_specification, invalid_password; too_many_connections (a CONNECTION
# LIMIT of the role or database, max_connections) and invalid_catalog_name (no such
# database): Postgres answered each, and refused the login.
LOGIN_REFUSED = ("28000", "28P01", "53300", "3D000")


def sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None)


INSUFFICIENT_PRIVILEGE = "42501"


def privilege_refused(exc: BaseException, dsn: str | None = None) -> str | None:
    """Postgres's refusal of a privilege syncd's role was not granted, as one line naming
    the role (where `dsn` is known) and where the grants are listed; else None. An
    operator's to fix, not a bug."""
    if sqlstate(exc) != INSUFFICIENT_PRIVILEGE:
        return None
    if "row-level security" in str(exc):  # syncd's sessions read with row_security off (connect_kwargs)
        return (f"Postgres refused {_role(dsn)}: {describe(exc)}; syncd never reads through a policy that would "
                "hide rows from it: give the role BYPASSRLS, or keep the policy from applying to it (not FORCEd "
                "on the table's owner)")
    return (f"Postgres refused {_role(dsn)}: {describe(exc)}; grant it what docs/operations.md lists "
            'under "The Postgres role"')


def postgres_lost(exc: BaseException) -> str | None:
    """A statement Postgres did not answer in time, or a connection lost under one, as
    one line; else None. An outage or a slow server, not a bug."""
    if isinstance(exc, TimeoutError) and not str(exc):  # asyncpg's command timeout says nothing
        return ("Postgres: timed out: a statement got no answer within [postgres] statement_timeout_seconds (a "
                "lock another session holds, a busy server, or the server gone); try again")
    if isinstance(exc, (asyncpg.PostgresConnectionError, ConnectionError)) or lost_track(exc) or closed_under(exc):
        return f"Postgres: the connection was lost ({describe(exc)}); try again"
    return None


def closed_under(exc: BaseException) -> bool:
    """asyncpg's InterfaceError for a connection closed under its caller (one of a pool's
    is taken back into the pool as it is lost, and says so); the same class also says a
    caller's own fault (two operations at once on one connection)."""
    return isinstance(exc, asyncpg.InterfaceError) and (
        "connection is closed" in str(exc) or "connection has been released back to the pool" in str(exc))


READ_ONLY_TRANSACTION = "25006"
READ_ONLY_DATABASE = "Postgres takes no writes in this database (a standby, or default_transaction_read_only)"


async def takes_no_writes(conn: asyncpg.Connection) -> bool:
    """Whether `conn`'s transactions are read-only (a standby, default_transaction_read_only):
    asked before a switch that would send the application there, or freeze it."""
    return await conn.fetchval("SELECT current_setting('transaction_read_only') = 'on'")


def read_only_refused(exc: BaseException) -> str | None:
    """Postgres's refusal of a write in a database that takes none (SQLSTATE 25006), as
    one line; else None. The server's to change, not a bug."""
    if sqlstate(exc) != READ_ONLY_TRANSACTION:
        return None
    return (f"Postgres takes no writes in this database ({describe(exc)}): a standby, or "
            "default_transaction_read_only; run this again once it takes writes")


QUERY_CANCELED = "57014"


def statement_cancelled(exc: BaseException, dsn: str | None, timeout_seconds: float) -> str | None:
    """Postgres's cancel of one of syncd's statements (SQLSTATE 57014) as one line saying
    what cancelled it, or None. Postgres answered: it is not unreachable."""
    if sqlstate(exc) != QUERY_CANCELED:
        return None
    if "statement timeout" not in str(exc):
        return (f"Postgres cancelled a statement ({describe(exc)}): pg_cancel_backend or a server shutting down; "
                "tried again")
    return (f"Postgres cancelled a statement at its statement_timeout ({describe(exc)}): a statement_timeout set "
            f"on {_role(dsn)} or its database (in force behind a pooler, which syncd sends none through) ended it "
            f"before [postgres] statement_timeout_seconds ({timeout_seconds:g} s); raise it for syncd "
            "(ALTER ROLE ... SET statement_timeout) or find what makes the statement slow (a lock held, a busy "
            "server); tried again")


def short_of_resource(exc: BaseException) -> str | None:
    """Postgres's refusal of a write for want of a resource (SQLSTATE class 53: its disk
    full, its memory) as one line saying so, or None. Still an outage to syncd (retried,
    syncd_postgres_up 0, so SyncdPostgresDown fires), but what to mend is the server's
    disk, not the network: it is not called unreachable."""
    if isinstance(exc, CannotConnect) or not (sqlstate(exc) or "").startswith("53"):
        return None
    return (f"Postgres answers but is short of a resource (its disk, its memory, a limit of its configuration): "
            f"{describe(exc)}")


LOCK_NOT_AVAILABLE = "55P03"


def lock_given_up(exc: BaseException, dsn: str | None) -> str | None:
    """Postgres's end of a lock wait of one of syncd's statements (SQLSTATE 55P03) as one
    line saying what ended it, or None. Postgres answered: it is not unreachable."""
    if sqlstate(exc) != LOCK_NOT_AVAILABLE:
        return None
    if "lock timeout" not in str(exc):
        return f"Postgres could not give syncd a lock another session holds ({describe(exc)}); tried again"
    return (f"Postgres gave up a lock wait at its lock_timeout ({describe(exc)}): a lock_timeout set on {_role(dsn)} "
            "or its database ended it while another session held the table; tried again until the lock is free")


def login_refused(exc: BaseException, dsn: str) -> str | None:
    """Postgres's refusal of syncd's role at login (LoginRefused) as one line naming the
    role, never its password; else None. Postgres answered: it is not unreachable."""
    if not isinstance(exc, LoginRefused):
        return None
    return f"Postgres refused {_role(dsn)} at login to {scrub(dsn)}: {exc.reason}"


# Said after Postgres's refusal of a password where syncd was given none: the service
# gets it from systemd (the unit's LoadCredential=), a command run by hand does not.
NO_PASSWORD_GIVEN = ("syncd was given no Postgres password: the service gets it from systemd (LoadCredential=, as "
                     "$CREDENTIALS_DIRECTORY/postgres__password), which a command run by hand does not; run it as "
                     "the service's user with its credential and umask (the systemd-run command in "
                     "docs/operations.md, \"Commands by hand\"), or give it as SYNCD_POSTGRES__PASSWORD or in "
                     "~/.pgpass")


def _pgpass_given(query: dict[str, list[str]]) -> bool:
    """A password file asyncpg reads (the DSN's passfile, PGPASSFILE, else ~/.pgpass): a
    plain file syncd's user may read, closed to group and others."""
    path = (query.get("passfile") or [None])[-1] or os.environ.get("PGPASSFILE")
    try:
        file = Path(path) if path else Path.home() / ".pgpass"
        return file.is_file() and os.access(file, os.R_OK) and not file.stat().st_mode & 0o077
    except (OSError, RuntimeError, KeyError):
        return False


def _no_password_given(dsn: str, password_given: bool) -> bool:
    """No password from syncd's settings, the DSN, PGPASSWORD or a password file, in a
    command run by hand: the service (under systemd: INVOCATION_ID, CREDENTIALS_DIRECTORY)
    is not one."""
    if password_given or os.environ.get("PGPASSWORD"):
        return False
    if os.environ.get("INVOCATION_ID") or os.environ.get("CREDENTIALS_DIRECTORY"):
        return False
    try:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        return not parts.password and "password" not in query and not _pgpass_given(query)
    except ValueError:
        return False


def cannot_connect(dsn: str, exc: BaseException, password_given: bool = True) -> PostgresUnavailable:
    """What a failed login to `dsn` is raised as, single or pooled: LoginRefused where
    Postgres refused the role, else PostgresUnavailable; no password in either. A wrong
    password where syncd was given none (`password_given`) says how to give it."""
    if sqlstate(exc) in LOGIN_REFUSED:
        reason = describe(exc)
        if sqlstate(exc) == "28P01" and _no_password_given(dsn, password_given):
            reason = f"{reason}; {NO_PASSWORD_GIVEN}"
            if os.environ.get("POSTGRES_PASSWORD"):  # the postgres image's variable, which many setups keep it in
                reason += ('; POSTGRES_PASSWORD is set, which syncd does not read: '
                           'export SYNCD_POSTGRES__PASSWORD="$POSTGRES_PASSWORD"')
        return LoginRefused(f"cannot connect to {scrub(dsn)}: {reason}", reason)
    return CannotConnect(f"cannot connect to {scrub(dsn)}: {describe(exc)}")


def _role(dsn: str | None) -> str:
    """syncd's role as libpq names it from `dsn` ("syncd's role" where `dsn` is unknown)."""
    who = "syncd's role"
    if dsn is not None:
        try:
            parts = urlsplit(dsn)
            # ?user=R (decoded already), as asyncpg reads it: where the URL names no user before the host
            role = unquote(parts.username) if parts.username else parse_qs(parts.query).get("user", [None])[-1]
        except ValueError:
            role = None
        who += " " + (role or os.environ.get("PGUSER") or getpass.getuser())  # as libpq has it
    return who


_CLIENT_DATA_ERROR = asyncpg.exceptions._base.DataError  # asyncpg refused to encode a value
ASYNCPG_FAULT = asyncpg.exceptions._base.InternalClientError  # asyncpg's own fault, whatever the server did


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _CLIENT_DATA_ERROR):
        return False
    if isinstance(exc, (PostgresUnavailable, OSError, asyncio.TimeoutError, TimeoutError, ConnectionError,
                        socket.gaierror)):
        return True
    if isinstance(exc, (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError,
                        asyncpg.exceptions.ConnectionFailureError)):
        # InterfaceError covers "connection is closed" and protocol-state errors after a drop.
        return True
    if lost_track(exc):
        return True
    code = sqlstate(exc)
    if code is None:
        return False
    return code in _TRANSIENT_CODES or code.startswith(_TRANSIENT_CLASSES)


def lost_track(exc: BaseException) -> bool:
    """asyncpg lost track of the connection's protocol state, as it does when the server
    goes away mid-operation (MagicStack/asyncpg#784): that connection is unusable and a
    new one is the remedy. Only this message: InternalClientError also covers faults a
    new connection does not cure (a type with no binary encoder for COPY, say)."""
    return isinstance(exc, ASYNCPG_FAULT) and str(exc).startswith("cannot switch to state")


def plan_outdated(exc: BaseException) -> bool:
    """Postgres refused a statement prepared before a table it names changed ("cached plan
    must not change result type": SQLSTATE 0A000, as a feature Postgres refuses for good).
    asyncpg has dropped the connection's prepared statements: tried again, it goes through."""
    return isinstance(exc, asyncpg.exceptions.InvalidCachedStatementError)


def is_data_error(exc: BaseException) -> bool:
    if isinstance(exc, (_CLIENT_DATA_ERROR, UnicodeEncodeError)):
        return True  # refused before it left: a value asyncpg cannot encode (e.g. invalid UTF-8)
    code = sqlstate(exc)
    return code is not None and code.startswith(_DATA_CLASSES)


def is_shape_error(exc: BaseException) -> bool:
    return sqlstate(exc) in _SHAPE_CODES


def describe(exc: BaseException) -> str:
    """One line for logs and status, with no password in it."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        text = "timed out"
    elif isinstance(exc, UnicodeEncodeError):
        text = "text is not valid UTF-8"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    detail = getattr(exc, "detail", None)
    if detail and detail.startswith("Index row references tuple"):
        # Where the refused row sat in the table: another place at each try, and nothing to
        # act on; a hold naming it would read as a new one every time.
        text, detail = text.replace(f"\nDETAIL:  {detail}", ""), None
    if detail and detail not in text:  # a COPY's error text carries its DETAIL already
        text = f"{text} ({detail})"
    code = sqlstate(exc)
    if code:
        text = f"{text} [SQLSTATE {code}]"
    # Scrub before folding whitespace: a password holding a line break must still match.
    return " ".join(scrub(text).split())


def connect_kwargs(password: str | None, settings: PostgresSettings, **server_settings: str) -> dict[str, Any]:
    """What every syncd connection is opened with (single ones and pooled ones alike)."""
    kwargs: dict[str, Any] = {}
    if password is not None:
        kwargs["password"] = password
    statement_ms = int(settings.statement_timeout_seconds * 1000)
    defaults = {
        "application_name": application_name(),
        # The server notices a vanished syncd (and frees its advisory lock) in ~30 s,
        # not hours later, and never keeps a transaction of a hung syncd open.
        "tcp_keepalives_idle": "15",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
        "idle_in_transaction_session_timeout": str(max(statement_ms * 2, 10_000)),
        # Row-level security a team turns on for a table (FORCEd on its owner, or the
        # table owned by another role) would hide rows from syncd's reads without a
        # word: the way back would delete them from SQLite, a check would find them
        # missing. Off, a query a policy would filter fails instead, naming the table.
        "row_security": "off",
    }
    if settings.pooler == "transaction":
        kwargs["statement_cache_size"] = 0  # a named statement would not survive the pooler's switching
    else:
        # A statement_timeout the role or database has for other clients (shorter than a
        # consistency check of a large table takes) does not bound syncd's statements:
        # [postgres] statement_timeout_seconds does, client-side; the server's is a backstop
        # behind it. Sent at connect, so the pool's RESET ALL keeps it. (Behind a
        # transaction pooler a session setting would go to whichever client came next.)
        defaults["statement_timeout"] = str(max(statement_ms * 2, 10_000))
    return {"timeout": settings.connect_timeout_seconds, "command_timeout": settings.statement_timeout_seconds,
            "server_settings": {**defaults, **server_settings}, **kwargs}


async def open_raw(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg.connect, with connect_kwargs; the pool's connect too. A pooler that refuses
    the statement_timeout backstop or row_security as a startup parameter (PgBouncer in
    session mode, which passes only those it is told to ignore, and the list syncd needed
    before did not name them) is asked again without it: the role's own setting applies
    there."""
    settings = dict(kwargs.get("server_settings") or {})
    while True:
        try:
            return await asyncpg.connect(dsn, **{**kwargs, "server_settings": settings})
        except asyncpg.ProtocolViolationError as e:
            refused = next((k for k in OPTIONAL_AT_CONNECT if k in settings
                            and f"startup parameter: {k}" in str(e)), None)
            if refused is None:
                raise
            del settings[refused]
            if refused == "row_security" and not _said_row_security:
                _say_row_security()


_said_row_security = False


def _say_row_security() -> None:
    """Once a process: a pooler refused row_security = off, so a row-level security
    policy applying to syncd's role would hide rows from it without a word."""
    global _said_row_security
    _said_row_security = True
    logging.getLogger("syncd").warning(
        "the Postgres pooler refused row_security = off: a row-level security policy that applies to syncd's role "
        "would hide rows from syncd without an error; give the role BYPASSRLS, or keep policies from applying to it "
        "(docs/operations.md, PgBouncer)", extra={"event": "row_security_refused"})


# Startup parameters asked again without where a pooler refuses them (PgBouncer, unless
# listed in its ignore_startup_parameters): the role's own settings apply there.
OPTIONAL_AT_CONNECT = ("statement_timeout", "row_security")


# The targets that let a login time out (dsn -> the words it failed with), kept while a
# command asks for it (remember_unanswered): its later connections there fail at once in
# the same words, instead of each waiting [postgres] connect_timeout_seconds again (a
# fleet's status waited for the glob's lookups, then for each target). None: not kept (the
# daemon, and a switch settling what it froze, try again every time).
_unanswered: dict[str, str] | None = None


def remember_unanswered(on: bool) -> None:
    """From now on (`on`), a target that let a login time out is not waited for again in
    this process; off, every connection tries (and what was kept is forgotten)."""
    global _unanswered
    _unanswered = {} if on else None


def remembering_unanswered() -> bool:
    """Whether this command keeps what got no answer (remember_unanswered)."""
    return _unanswered is not None


def unanswered_before(dsn: str) -> None:
    """Raise CannotConnect, in the words it failed with, where `dsn` let a login time out
    earlier in this command (remember_unanswered)."""
    if _unanswered is not None and dsn in _unanswered:
        raise CannotConnect(_unanswered[dsn])


def login_failed(dsn: str, exc: BaseException, password_given: bool = True) -> PostgresUnavailable:
    """cannot_connect(dsn, exc), kept where the login timed out (remember_unanswered)."""
    failed = cannot_connect(dsn, exc, password_given)
    if _unanswered is not None and isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        _unanswered[dsn] = str(failed)
    return failed


async def connect(dsn: str, password: str | None, settings: PostgresSettings, **server_settings: str) -> asyncpg.Connection:
    """Open a connection with bounded connect and statement times."""
    unanswered_before(dsn)
    try:
        conn = await open_raw(dsn, **connect_kwargs(password, settings, **server_settings))
    except Exception as e:  # refused, timed out, auth failed, no such database: all "unavailable"
        raise login_failed(dsn, e, password is not None) from None
    try:
        await prepare(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


async def prepare(conn: asyncpg.Connection) -> None:
    """What every syncd connection gets, pooled or single, before its first use."""
    await exact_instants(conn)
    wake_copy_on_loss(conn)
    notice_dead_peer(conn)


# A server gone without a word (a network partition, a host that died) while syncd waits
# for its answer is noticed by the kernel after this long (10 s idle, then 3 probes 5 s
# apart), instead of when the statement times out (and its ROLLBACK after it).
PEER_IDLE_SECONDS, PEER_PROBE_SECONDS, PEER_PROBES = 10, 5, 3


def notice_dead_peer(conn: asyncpg.Connection) -> None:
    """TCP keepalive on the connection's socket: a step waiting on a server that vanished
    fails in about 25 s and is retried on a new connection, while a slow statement of a
    server that is there is never cut short (its kernel answers the probes; no bound is
    set on unacknowledged data, which a server blocked mid-statement would trip)."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket: the server's host is this one
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, PEER_IDLE_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, PEER_PROBE_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, PEER_PROBES)


def wake_copy_on_loss(conn: asyncpg.Connection) -> None:
    """A COPY that waits for the socket to take more data (asyncpg's flow control) is not
    woken when the connection is lost meanwhile: it waited for its whole command timeout,
    then its ROLLBACK another, while the stream stood still and nothing was logged (a
    dropped connection mid-COPY). Wake it when the connection ends: it then fails at once
    with the connection's own error, and the step is retried on a new connection."""
    protocol = conn._protocol  # noqa: SLF001 - asyncpg offers no other handle on it
    allowed = getattr(protocol, "writing_allowed", None)
    if allowed is not None:
        conn.add_termination_listener(lambda _conn: allowed.set())


# --- dates and timestamps as they are -------------------------------------------------
#
# asyncpg encodes Python's last day and instant (date.max, datetime.max) as Postgres's
# infinity, and its first as -infinity: a "valid until 9999-12-31" in SQLite would become
# infinity in Postgres. syncd's connections encode them as the dates they are, through
# asyncpg's binary tuple format (days or microseconds since 2000-01-01); decoding keeps
# asyncpg's behaviour (infinities arrive as the extremes; the way back reads them as
# text instead, reverse/reader.select_list, and verify compares them in SQL).

_DAY0 = dt.date(2000, 1, 1).toordinal()
_TS0 = dt.datetime(2000, 1, 1)
_MICRO = dt.timedelta(microseconds=1)
_INT32_MAX, _INT32_MIN = 2**31 - 1, -(2**31)
_INT64_MAX, _INT64_MIN = 2**63 - 1, -(2**63)


def _date_out(d: dt.date) -> tuple[int]:
    return (d.toordinal() - _DAY0,)


def _date_in(t: tuple[int]) -> dt.date:
    n = t[0]
    if n == _INT32_MAX:
        return dt.date.max
    if n == _INT32_MIN:
        return dt.date.min
    return dt.date.fromordinal(n + _DAY0)


def _ts_out(d: dt.datetime) -> tuple[int]:
    if type(d) is dt.date:
        d = dt.datetime.combine(d, dt.time())  # midnight, as asyncpg takes a date
    return ((d - _TS0) // _MICRO,)


def _ts_in(t: tuple[int]) -> dt.datetime:
    n = t[0]
    if n == _INT64_MAX:
        return dt.datetime.max
    if n == _INT64_MIN:
        return dt.datetime.min
    return _TS0 + dt.timedelta(microseconds=n)


def _tstz_out(d: dt.datetime) -> tuple[int]:
    if type(d) is dt.date:
        d = dt.datetime.combine(d, dt.time())
    # A naive instant is local time, as asyncpg reads it; one that is outside the years 1
    # to 9999 in UTC raises OverflowError here (asyncpg refused it too), so nothing goes
    # in that could not be read back.
    return _ts_out(d.astimezone(dt.timezone.utc).replace(tzinfo=None))


def _tstz_in(t: tuple[int]) -> dt.datetime:
    return _ts_in(t).replace(tzinfo=dt.timezone.utc)


async def exact_instants(conn: asyncpg.Connection) -> None:
    """Encode dates and timestamps exactly on `conn` (every syncd connection gets it)."""
    for name, out, back in (("date", _date_out, _date_in), ("timestamp", _ts_out, _ts_in),
                            ("timestamptz", _tstz_out, _tstz_in)):
        await conn.set_type_codec(name, schema="pg_catalog", encoder=out, decoder=back, format="tuple")


async def close_quietly(conn: asyncpg.Connection | None, timeout: float = 2.0) -> None:
    if conn is None or conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), timeout)
    except Exception:
        conn.terminate()
