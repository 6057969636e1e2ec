"""One straightforward Python load on syncd's stack: read a SQLite table with the
standard sqlite3 module in chunks (one thread reading the next chunk while the last
one is sent) and COPY each chunk into Postgres with asyncpg, one transaction per chunk.
No audit, no conversion, no bookkeeping, no capture: nothing of what syncd adds. The
table's first column is its INTEGER PRIMARY KEY (both of initial_load.py's are).

    python bench/plain_loader.py FILE TABLE DSN "CREATE TABLE ..." [--after "CREATE INDEX ..."]...
        [--connections N]

Prints the seconds from the first read to the last commit of the statements given with
--after (indexes built once every row is in), process start excluded (initial_load.py
adds syncd's own), the CPU seconds this process used meanwhile (all its threads): near
the wall time, the one Python process is what bounds the load; and the CPU seconds the
Postgres backends serving it used ("nan" when the server's processes cannot be read
here, a server on another machine); and the share of the whole machine's CPU (every
core, every process: Postgres's parallel index builds and WAL writer too) that was busy
meanwhile: near 100%, no split of the load could make it much faster on this machine.

With --connections N, chunks are dealt to N Postgres connections in turn: N COPYs run
at once, each chunk's transaction commits only after the one before it (as a resumable
load must). Postgres then works on several cores; if the load is no faster, Postgres
was not what held it back.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import busy_share, machine_cpu  # noqa: E402

CHUNK_ROWS = 50_000  # syncd's [stream] snapshot_chunk_rows default


def backend_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the Postgres backends with these pids have used; nan
    when a pid is not a Postgres process here (a server on another machine, or in a
    container whose pids are not this machine's)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                name, rest = f.read().split(" (", 1)[1].rsplit(")", 1)
        except (OSError, ValueError):
            return float("nan")
        if not name.startswith("postgres"):
            return float("nan")
        fields = rest.split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


async def load(path: str, table: str, dsn: str, ddl: str, after: list[str],
               connections: int = 1) -> tuple[float, float, float, float]:
    src = sqlite3.connect(path, check_same_thread=False)
    columns = [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]
    key = columns[0]
    first = f'SELECT {", ".join(columns)} FROM "{table}" ORDER BY {key} LIMIT {CHUNK_ROWS}'
    select = f'SELECT {", ".join(columns)} FROM "{table}" WHERE {key} > ? ORDER BY {key} LIMIT {CHUNK_ROWS}'
    pgs = [await asyncpg.connect(dsn) for _ in range(connections)]
    pg = pgs[0]
    await pg.execute(ddl)
    backends = [await conn.fetchval("SELECT pg_backend_pid()") for conn in pgs]
    loop = asyncio.get_running_loop()
    started, cpu, pg_cpu, machine = time.perf_counter(), time.process_time(), backend_cpu(backends), machine_cpu()

    async def copy(conn: asyncpg.Connection, rows: list[tuple], before: asyncio.Future | None) -> None:
        async with conn.transaction():
            await conn.copy_records_to_table(table, records=rows, columns=columns)
            if before is not None:
                await before  # commits in chunk order

    with ThreadPoolExecutor(1) as reader:
        src.execute("BEGIN")

        def read(after: int | None) -> list[tuple]:
            return (src.execute(first) if after is None else src.execute(select, (after,))).fetchall()

        ahead = loop.run_in_executor(reader, read, None)
        inflight: list[asyncio.Future | None] = [None] * connections
        last: asyncio.Future | None = None
        chunk = 0
        while True:
            rows = await ahead
            if not rows:
                break
            ahead = loop.run_in_executor(reader, read, rows[-1][0])
            slot = chunk % connections
            if inflight[slot] is not None:
                await inflight[slot]
            inflight[slot] = last = asyncio.ensure_future(copy(pgs[slot], rows, last))
            chunk += 1
        for f in inflight:
            if f is not None:
                await f
        src.execute("COMMIT")
    for sql in after:
        await pg.execute(sql)
    elapsed, cpu, pg_cpu = time.perf_counter() - started, time.process_time() - cpu, backend_cpu(backends) - pg_cpu
    busy = busy_share(machine, machine_cpu())
    for conn in pgs:
        await conn.close()
    return elapsed, cpu, pg_cpu, busy


def main() -> None:
    path, table, dsn, ddl = sys.argv[1:5]
    rest = sys.argv[5:]
    after = [rest[i + 1] for i in range(0, len(rest) - 1, 2) if rest[i] == "--after"]
    connections = next((int(rest[i + 1]) for i in range(0, len(rest) - 1, 2) if rest[i] == "--connections"), 1)
    elapsed, cpu, pg_cpu, busy = asyncio.run(load(path, table, dsn, ddl, after, connections))
    print(f"{elapsed:.4f} {cpu:.4f} {pg_cpu:.4f} {busy:.4f}")


if __name__ == "__main__":
    main()
