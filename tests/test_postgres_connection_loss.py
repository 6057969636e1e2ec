"""A connection to Postgres lost in the middle of a COPY fails the COPY at once, so the
step is retried on a new connection; it does not wait out its statement timeout (and
its ROLLBACK another) while the stream stands still and nothing is logged."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import asyncpg
import pytest

from syncd.postgres.connect import prepare
from tests.support.proxy import FaultProxy

TIMEOUT = 60.0


async def test_a_copy_waiting_for_the_socket_fails_when_the_connection_is_lost(pg_dsn):
    parts = urlsplit(pg_dsn)
    proxy = FaultProxy(parts.hostname, parts.port or 5432)
    conn = await asyncpg.connect(pg_dsn.replace(f":{parts.port}/", f":{proxy.port}/"), command_timeout=TIMEOUT)
    try:
        await prepare(conn)  # as every syncd connection is
        await conn.execute("CREATE TEMP TABLE stage (id bigint, body text)")
        rows = [(i, "x" * 200) for i in range(600_000)]
        copy = asyncio.create_task(conn.copy_records_to_table("stage", records=rows, schema_name="pg_temp"))
        while proxy.bytes_up < 1_000_000:  # the COPY streams
            await asyncio.sleep(0.001)
        proxy.stall()  # Postgres stops taking data: the COPY fills the socket and waits for it
        deadline = time.monotonic() + 20
        while conn._protocol.writing_allowed.is_set():  # noqa: SLF001 - what the COPY waits on
            assert time.monotonic() < deadline, "the COPY never filled the socket"
            await asyncio.sleep(0.05)
        started = time.monotonic()
        proxy.reset()  # the connection is lost while the COPY waits
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, ConnectionError, OSError)):
            await asyncio.wait_for(copy, TIMEOUT)
        assert time.monotonic() - started < 10, "the COPY waited for its timeout, not for the connection"
    finally:
        conn.terminate()
        proxy.close()
