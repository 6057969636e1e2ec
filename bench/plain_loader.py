"""One straightforward Python load on syncd's stack: read a SQLite table with the
standard sqlite3 module in chunks (one thread reading the next chunk while the last
one is sent) and COPY each chunk into Postgres with asyncpg, one transaction per chunk.
No audit, no conversion, no bookkeeping, no capture: nothing of what syncd adds. The
table's first column is its INTEGER PRIMARY KEY (both of initial_load.py's are).

    python bench/plain_loader.py FILE TABLE DSN "CREATE TABLE ..." [--after "CREATE INDEX ..."]...

Prints the seconds from the first read to the last commit of the statements given with
--after (indexes built once every row is in), process start excluded: initial_load.py
adds syncd's own.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import asyncpg

CHUNK_ROWS = 50_000  # syncd's [stream] snapshot_chunk_rows default


async def load(path: str, table: str, dsn: str, ddl: str, after: list[str]) -> float:
    src = sqlite3.connect(path, check_same_thread=False)
    columns = [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]
    key = columns[0]
    first = f'SELECT {", ".join(columns)} FROM "{table}" ORDER BY {key} LIMIT {CHUNK_ROWS}'
    select = f'SELECT {", ".join(columns)} FROM "{table}" WHERE {key} > ? ORDER BY {key} LIMIT {CHUNK_ROWS}'
    pg = await asyncpg.connect(dsn)
    await pg.execute(ddl)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    with ThreadPoolExecutor(1) as reader:
        src.execute("BEGIN")

        def read(after: int | None) -> list[tuple]:
            return (src.execute(first) if after is None else src.execute(select, (after,))).fetchall()

        ahead = loop.run_in_executor(reader, read, None)
        while True:
            rows = await ahead
            if not rows:
                break
            ahead = loop.run_in_executor(reader, read, rows[-1][0])
            async with pg.transaction():
                await pg.copy_records_to_table(table, records=rows, columns=columns)
        src.execute("COMMIT")
    for sql in after:
        await pg.execute(sql)
    elapsed = time.perf_counter() - started
    await pg.close()
    return elapsed


def main() -> None:
    path, table, dsn, ddl = sys.argv[1:5]
    rest = sys.argv[5:]
    after = [rest[i + 1] for i in range(0, len(rest) - 1, 2) if rest[i] == "--after"]
    print(f"{asyncio.run(load(path, table, dsn, ddl, after)):.4f}")


if __name__ == "__main__":
    main()
