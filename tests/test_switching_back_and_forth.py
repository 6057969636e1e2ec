"""A team that switches back and forth: dual-write, `syncd cutover`, the application on
Postgres, `syncd rollback`, the application on SQLite again, `syncd cutover` again, ...
with the application writing all along (a write refused while a switch freezes its
database is retried, as an application would, on whichever side it is pointed at).

After every switch: `syncd verify` is clean; every write the application was told
succeeded is on both sides exactly once; ids continue past every id either side handed
out (AUTOINCREMENT, a plain INTEGER PRIMARY KEY, a keyless table's rowid); the
application's own Postgres trigger is enabled exactly while Postgres is its database;
`syncd status` and `syncd report` tell the direction. Two cycles and a last cutover:
each switch runs once with the daemon killed (kill -9) while it runs and once without,
the daemon is killed once more while the application writes Postgres, and each side
gets an ADD COLUMN while it is the live one."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import sqlite3
import threading
import time

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, table_states, wait_caught_up
from tests.support.way_back import backup_and_config, wait_back

SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, token TEXT NOT NULL);
CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT, touched TEXT);
CREATE TABLE notes (token TEXT, at TEXT);
"""

TOUCH = ["CREATE FUNCTION app.kv_touch() RETURNS trigger LANGUAGE plpgsql AS $$ "
         "BEGIN NEW.touched := 'pg'; RETURN NEW; END $$",
         "CREATE TRIGGER kv_touch BEFORE INSERT OR UPDATE ON app.kv FOR EACH ROW EXECUTE FUNCTION app.kv_touch()"]


def make_app(db) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO events (token) VALUES (?)", [(f"seed{i}",) for i in range(30)])
    conn.executemany("INSERT INTO kv (v, touched) VALUES (?, 'sqlite')", [(f"seed{i}",) for i in range(30)])
    conn.executemany("INSERT INTO notes VALUES (?, 'seed')", [(f"seed{i}",) for i in range(30)])
    conn.close()


class Refused(Exception):
    pass


class Aborted(Exception):
    """The application rolled its transaction back (after taking an id)."""


class Writer(threading.Thread):
    """The application: short transactions against the side it is pointed at."""

    def __init__(self, db, dsn: str):
        super().__init__(daemon=True)
        self.db, self.dsn = db, dsn
        self.target = "sqlite"
        self.rnd = random.Random(7)
        self.run_flag = threading.Event()
        self.run_flag.set()
        self.idle = threading.Event()
        self.stopping = False
        # what the application was told succeeded
        self.events = {i + 1: f"seed{i}" for i in range(30)}  # id -> token (present)
        self.notes = collections.Counter(f"seed{i}" for i in range(30))
        self.kv = {i + 1: (f"seed{i}", "sqlite") for i in range(30)}
        self.errors: list[str] = []
        self.refusals = 0
        self.longest_refusal = 0.0
        self.commits = collections.Counter()
        self.handed_out = set(self.events)  # every events id either side ever returned
        self.gone: set[int] = set()  # events ids deleted (the application may put one back by its id)
        self.extra = False  # kv has the columns the team added in Postgres
        self.n = 0

    def plan(self) -> list[tuple]:
        ops = []
        for _ in range(self.rnd.randint(1, 3)):
            self.n += 1
            tok = f"t{self.n}"
            x = self.rnd.random()
            if x < 0.3:
                ops.append(("event", tok))
            elif x < 0.45:
                ops.append(("note", tok))
            elif x < 0.65:
                ops.append(("kv_new", tok))
            elif x < 0.85 and self.kv:
                ops.append(("kv_upd", self.rnd.choice(sorted(self.kv)), tok))
            elif x < 0.9 and self.events:
                ops.append(("event_del", self.rnd.choice(sorted(self.events))))
            elif x < 0.93 and self.notes:
                ops.append(("note_upd", self.rnd.choice(sorted(self.notes)), tok))
            elif x < 0.95 and self.notes:
                ops.append(("note_del", self.rnd.choice(sorted(self.notes))))
            elif x < 0.97 and self.gone:
                ops.append(("event_back", self.rnd.choice(sorted(self.gone)), tok))
            elif self.extra and self.kv:
                ops.append(("kv_extra", self.rnd.choice(sorted(self.kv)), self.rnd.random() < 0.5))
        if self.rnd.random() < 0.05:
            ops.append(("abort",))
        # no two ops on one id in a transaction (keeps the bookkeeping simple)
        seen, out = set(), []
        for op in ops:
            key = op[:2] if op[0] in ("kv_upd", "event_del", "note_upd", "note_del", "event_back", "kv_extra") else op
            if op[0] in ("note_upd", "note_del"):
                key = ("note", op[1])
            if key not in seen:
                seen.add(key)
                out.append(op)
        return out

    def on_sqlite(self, conn: sqlite3.Connection, ops: list[tuple]) -> list:
        results = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                if op[0] == "event":
                    results.append(conn.execute("INSERT INTO events (token) VALUES (?) RETURNING id",
                                                (op[1],)).fetchone()[0])
                elif op[0] == "note":
                    conn.execute("INSERT INTO notes (token, at) VALUES (?, 'sqlite')", (op[1],))
                    results.append(None)
                elif op[0] == "kv_new":
                    results.append(conn.execute("INSERT INTO kv (v, touched) VALUES (?, 'sqlite') RETURNING id",
                                                (op[1],)).fetchone()[0])
                elif op[0] == "kv_upd":
                    c = conn.execute("UPDATE kv SET v = ?, touched = 'sqlite' WHERE id = ?", (op[2], op[1]))
                    assert c.rowcount == 1, f"kv {op[1]} missing in SQLite"
                    results.append(None)
                elif op[0] == "event_del":
                    c = conn.execute("DELETE FROM events WHERE id = ?", (op[1],))
                    assert c.rowcount == 1, f"event {op[1]} missing in SQLite"
                    results.append(None)
                elif op[0] == "note_upd":
                    conn.execute("UPDATE notes SET token = ?, at = 'sqlite' WHERE token = ?", (op[2], op[1]))
                    results.append(None)
                elif op[0] == "note_del":
                    conn.execute("DELETE FROM notes WHERE token = ?", (op[1],))
                    results.append(None)
                elif op[0] == "event_back":
                    conn.execute("INSERT INTO events (id, token) VALUES (?, ?)", (op[1], op[2]))
                    results.append(None)
                elif op[0] == "kv_extra":
                    conn.execute("UPDATE kv SET flag = ?, at = ?, doc = ?, touched = 'sqlite' WHERE id = ?",
                                 (int(op[2]), "2026-12-05 10:00:00.25+00" if op[2] else None, '{"a": [1, 2]}', op[1]))
                    results.append(None)
                else:
                    conn.execute("INSERT INTO events (token) VALUES ('aborted')")
                    raise Aborted([])  # SQLite takes such an id back with the transaction
            conn.execute("COMMIT")
            return results
        except sqlite3.IntegrityError as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if "moved to PostgreSQL by syncd" in str(e):
                raise Refused(str(e))
            raise
        except Aborted:
            conn.execute("ROLLBACK")
            raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def on_pg(self, pg: asyncpg.Connection, ops: list[tuple]) -> list:
        results = []
        try:
            async with pg.transaction():
                for op in ops:
                    if op[0] == "event":
                        results.append(await pg.fetchval("INSERT INTO app.events (token) VALUES ($1) RETURNING id",
                                                         op[1]))
                    elif op[0] == "note":
                        await pg.execute("INSERT INTO app.notes (token, at) VALUES ($1, 'pg')", op[1])
                        results.append(None)
                    elif op[0] == "kv_new":
                        results.append(await pg.fetchval("INSERT INTO app.kv (v, touched) VALUES ($1, 'app') "
                                                         "RETURNING id", op[1]))
                    elif op[0] == "kv_upd":
                        s = await pg.execute("UPDATE app.kv SET v = $1, touched = 'app' WHERE id = $2", op[2], op[1])
                        assert s == "UPDATE 1", f"kv {op[1]} missing in Postgres"
                        results.append(None)
                    elif op[0] == "event_del":
                        s = await pg.execute("DELETE FROM app.events WHERE id = $1", op[1])
                        assert s == "DELETE 1", f"event {op[1]} missing in Postgres"
                        results.append(None)
                    elif op[0] == "note_upd":
                        await pg.execute("UPDATE app.notes SET token = $1, at = 'pg' WHERE token = $2", op[2], op[1])
                        results.append(None)
                    elif op[0] == "note_del":
                        await pg.execute("DELETE FROM app.notes WHERE token = $1", op[1])
                        results.append(None)
                    elif op[0] == "event_back":
                        await pg.execute("INSERT INTO app.events (id, token) VALUES ($1, $2)", op[1], op[2])
                        results.append(None)
                    elif op[0] == "kv_extra":
                        await pg.execute("UPDATE app.kv SET flag = $1, at = $2::text::timestamptz, doc = $3::jsonb, "
                                         "touched = 'app' WHERE id = $4", op[2],
                                         "2026-12-05 10:00:00.25+00" if op[2] else None, '{"a": [1, 2]}', op[1])
                        results.append(None)
                    else:
                        aborted = await pg.fetchval("INSERT INTO app.events (token) VALUES ('aborted') RETURNING id")
                        raise Aborted([aborted])
            return results
        except asyncpg.PostgresError as e:
            if "moved back to SQLite by syncd" in str(e):
                raise Refused(str(e))
            raise

    def acknowledge(self, side: str, ops: list[tuple], results: list) -> None:
        for op, res in zip(ops, results):
            if op[0] == "event":
                if res in self.handed_out:
                    self.errors.append(f"{side}: events id {res} handed out again")
                self.handed_out.add(res)
                self.events[res] = op[1]
            elif op[0] == "note":
                self.notes[op[1]] += 1
            elif op[0] == "note_upd":
                n = self.notes.pop(op[1], 0)
                if n:
                    self.notes[op[2]] += n
            elif op[0] == "note_del":
                self.notes.pop(op[1], None)
            elif op[0] == "event_back":
                self.gone.discard(op[1])
                self.events[op[1]] = op[2]
            elif op[0] == "kv_extra":
                self.kv[op[1]] = (self.kv[op[1]][0], "sqlite" if side == "sqlite" else "pg")
            elif op[0] == "kv_new":
                assert res not in self.kv, f"id {res} of kv handed out twice ({side})"
                self.kv[res] = (op[1], "sqlite" if side == "sqlite" else "pg")
            elif op[0] == "kv_upd":
                self.kv[op[1]] = (op[2], "sqlite" if side == "sqlite" else "pg")
            else:
                del self.events[op[1]]
                self.gone.add(op[1])
        self.commits[side] += 1

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=5, isolation_level=None)
        pg = await asyncpg.connect(self.dsn)
        try:
            while not self.stopping:
                if not self.run_flag.is_set():
                    self.idle.set()
                    await asyncio.sleep(0.02)
                    continue
                self.idle.clear()
                ops = self.plan()
                refused_since = None
                while not self.stopping:
                    side = self.target
                    try:
                        if side == "sqlite":
                            results = self.on_sqlite(conn, ops)
                        else:
                            results = await self.on_pg(pg, ops)
                    except Aborted as a:
                        for i in a.args[0]:
                            if i in self.handed_out:
                                self.errors.append(f"{side}: events id {i} handed out again (rolled back)")
                            self.handed_out.add(i)
                        ops = [op for op in ops if op[0] != "abort"]
                        continue
                    except Refused:
                        self.refusals += 1
                        refused_since = refused_since or time.monotonic()
                        await asyncio.sleep(0.05)
                        continue
                    except Exception as e:  # anything else the application would see as a failure
                        self.errors.append(f"{side}: {type(e).__name__}: {e} (ops {ops})")
                        await asyncio.sleep(0.05)
                        if len(self.errors) > 50:
                            return
                        ops = self.plan()  # the application gives up this one
                        continue
                    if refused_since is not None:
                        self.longest_refusal = max(self.longest_refusal, time.monotonic() - refused_since)
                    self.acknowledge(side, ops, results)
                    break
                await asyncio.sleep(0.02)
        finally:
            conn.close()
            await pg.close()
            self.idle.set()

    def pause(self) -> None:
        self.run_flag.clear()
        self.idle.clear()
        assert self.idle.wait(30), "the writer did not pause"

    def resume(self) -> None:
        self.run_flag.set()


def sqlite_side(db) -> tuple[dict, collections.Counter, dict]:
    conn = sqlite3.connect(db)
    try:
        events = conn.execute("SELECT id, token FROM events").fetchall()
        notes = collections.Counter(t for (t,) in conn.execute("SELECT token FROM notes"))
        kv = {i: (v, t) for i, v, t in conn.execute("SELECT id, v, touched FROM kv")}
    finally:
        conn.close()
    assert len(events) == len(dict(events))
    return dict(events), notes, kv


async def pg_side(dsn: str) -> tuple[dict, collections.Counter, dict]:
    events = await pg_rows(dsn, "SELECT id, token FROM app.events")
    notes = collections.Counter(t for (t,) in await pg_rows(dsn, "SELECT token FROM app.notes"))
    kv = {i: (v, t) for i, v, t in await pg_rows(dsn, "SELECT id, v, touched FROM app.kv")}
    return dict(events), notes, kv


def diff(name: str, have: dict, want: dict) -> list[str]:
    out = []
    for k in sorted(set(have) | set(want), key=str):
        if have.get(k) != want.get(k):
            out.append(f"{name}[{k!r}]: has {have.get(k)!r}, acknowledged {want.get(k)!r}")
    return out[:10]


async def trigger_state(dsn: str) -> str | None:
    rows = await pg_rows(dsn, "SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = 'app.kv'::regclass "
                              "AND tgname = 'kv_touch'")
    return rows[0][0] if rows else None


async def switch_with_daemon_killed(cfg, verb: str, step: str, d: DaemonProcess, log, tmp_path):
    """`syncd <verb>` held at `step`; the daemon killed with kill -9 and started again
    meanwhile; then the switch goes on."""
    import os
    import subprocess

    from tests.support.daemon import syncd_cmd

    resume = tmp_path / f"resume-{verb}"
    proc = subprocess.Popen(syncd_cmd(cfg, verb), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(cfg.parent), env={**os.environ, f"SYNCD_{verb.upper()}_HOLD_AT": step,
                                                      f"SYNCD_{verb.upper()}_RESUME_ON": str(resume)})
    line = await asyncio.to_thread(proc.stdout.readline)
    assert line.strip() == f"holding at {step}", line
    d.kill9()
    d = DaemonProcess(cfg, log)
    await asyncio.sleep(4)  # the new daemon looks around while the switch holds
    resume.touch()
    out, _ = await asyncio.to_thread(proc.communicate, timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, line + out, ""), d


def directions(cfg) -> tuple[str, str]:
    st = run_cli(cfg, "status", "--json")
    rep = run_cli(cfg, "report", "--format", "json")
    return json.loads(st.stdout)["sources"][0]["direction"], json.loads(rep.stdout)["sources"][0]["direction"]


async def check(cfg, db, dsn, w: Writer, live: str, d: DaemonProcess, trigger_made: bool) -> list[str]:
    """Everything the application was told, on both sides; verify clean; direction told."""
    problems = []
    w.pause()
    try:
        if live == "sqlite":
            await wait_caught_up(db, dsn, "app", daemon=d)
        else:
            await wait_back(cfg, db, dsn, daemon=d)
        v = run_cli(cfg, "verify")
        if v.returncode != 0:
            problems.append(f"verify: exit {v.returncode}: {v.stdout[-1500:]} {v.stderr[-500:]}")
        want = (dict(w.events), collections.Counter(w.notes), dict(w.kv))
        for side, have in (("sqlite", sqlite_side(db)), ("postgres", await pg_side(dsn))):
            problems += [f"{side} {p}" for p in diff("events", have[0], want[0])]
            problems += [f"{side} {p}" for p in diff("notes", dict(have[1]), dict(want[1]))]
            problems += [f"{side} {p}" for p in diff("kv", have[2], want[2])]
        if trigger_made:
            t = await trigger_state(dsn)
            expect = "O" if live == "postgres" else "D"
            if t != expect:
                problems.append(f"the application's trigger kv_touch is {t!r} with the application on {live}")
        s, r = directions(cfg)
        expect = "to_sqlite" if live == "postgres" else "to_postgres"
        if (s, r) != (expect, expect):
            problems.append(f"status says {s}, report says {r}, the application is on {live}")
        if w.errors:
            problems.append(f"the application saw errors: {w.errors[:5]}")
    finally:
        w.resume()
    return problems


async def test_cycles_of_cutover_and_rollback_with_the_application_writing_through_each_switch(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    log = tmp_path / "syncd.log"
    d = DaemonProcess(cfg, log)
    w = Writer(db, pg_dsn)
    trigger_made = False
    try:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        w.start()
        await asyncio.sleep(1)
        for cycle in (1, 2):
            # --- cutover, the application writing SQLite meanwhile
            if cycle == 1:  # a column added in SQLite shortly before the switch
                c = sqlite3.connect(db, timeout=5)
                c.execute("ALTER TABLE events ADD COLUMN src TEXT DEFAULT 'x'")
                c.commit()
                c.close()
                await asyncio.sleep(1)
            w.pause()
            await wait_caught_up(db, pg_dsn, "app", daemon=d)
            v = run_cli(cfg, "verify")
            assert v.returncode == 0, f"cycle {cycle}: {v.stdout}{v.stderr}"
            w.resume()
            await asyncio.sleep(0.5)
            if cycle == 1:  # the daemon killed while the cutover runs (SQLite frozen, verified)
                r, d = await switch_with_daemon_killed(cfg, "cutover", "verified", d, log, tmp_path)
                print(f"cutover with the daemon killed: exit {r.returncode}\n{r.stdout}")
            else:
                r = run_cli(cfg, "cutover", timeout=300)
            assert r.returncode == 0, f"cycle {cycle} cutover: {r.stdout}{r.stderr}"
            if not trigger_made:  # the team writes its SQLite trigger again for Postgres, day one,
                for sql in TOUCH:  # before the application writes there
                    await pg_rows(pg_dsn, sql)
            w.target = "postgres"
            if not trigger_made:
                trigger_made = True
                await pg_rows(pg_dsn, "ALTER TABLE app.kv ADD COLUMN flag boolean NOT NULL DEFAULT false, "
                                      "ADD COLUMN at timestamptz, ADD COLUMN doc jsonb")
                w.extra = True
            await asyncio.sleep(2)
            problems = await check(cfg, db, pg_dsn, w, "postgres", d, trigger_made)
            assert not problems, f"cycle {cycle}, after the cutover:\n" + "\n".join(problems)

            if cycle == 1:  # the daemon killed while the application writes Postgres
                await asyncio.sleep(0.5)
                d.kill9()
                d = DaemonProcess(cfg, log)
                await asyncio.sleep(1)
                await pg_rows(pg_dsn, "ALTER TABLE app.kv ADD COLUMN note text")  # a schema change, live side
                await asyncio.sleep(2)
                problems = await check(cfg, db, pg_dsn, w, "postgres", d, trigger_made)
                assert not problems, f"cycle {cycle}, after kill -9 and ADD COLUMN:\n" + "\n".join(problems)

            # --- rollback, the application writing Postgres meanwhile
            await asyncio.sleep(1)
            if cycle == 2:  # a column added in Postgres just before the switch back
                await pg_rows(pg_dsn, "ALTER TABLE app.events ADD COLUMN weight integer DEFAULT 7")

                async def weight_followed() -> bool:  # SQLite gains it and the table is copied again
                    c = sqlite3.connect(db, timeout=5)
                    try:
                        cols = {r[1] for r in c.execute("PRAGMA table_info(events)")}
                    finally:
                        c.close()
                    return "weight" in cols and (await table_states(pg_dsn, "app"))["events"][0] == "streaming"

                await eventually(weight_followed, 60, "the way back following ADD COLUMN weight", daemon=d)
            if cycle == 2:  # the daemon killed while the rollback runs (Postgres frozen, drained)
                r, d = await switch_with_daemon_killed(cfg, "rollback", "drained", d, log, tmp_path)
                print(f"rollback with the daemon killed: exit {r.returncode}\n{r.stdout}")
                assert r.returncode == 0, f"cycle {cycle} rollback: {r.stdout}{r.stderr}"
            else:
                r = run_cli(cfg, "rollback", timeout=300)
                assert r.returncode == 0, f"cycle {cycle} rollback: {r.stdout}{r.stderr}"
            w.target = "sqlite"
            await asyncio.sleep(2)
            if cycle == 2:
                c = sqlite3.connect(db, timeout=5)
                c.execute("ALTER TABLE notes ADD COLUMN extra TEXT")
                c.commit()
                c.close()
                await asyncio.sleep(2)
            problems = await check(cfg, db, pg_dsn, w, "sqlite", d, trigger_made)
            assert not problems, f"cycle {cycle}, after the rollback:\n" + "\n".join(problems)
            assert w.longest_refusal < 30, w.longest_refusal
        # and over to Postgres once more, with the column added in SQLite
        w.pause()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, f"before the last cutover: {v.stdout}{v.stderr}"
        w.resume()
        await asyncio.sleep(0.5)
        r = run_cli(cfg, "cutover", timeout=300)
        assert r.returncode == 0, f"last cutover: {r.stdout}{r.stderr}"
        w.target = "postgres"
        await asyncio.sleep(2)
        await pg_rows(pg_dsn, "UPDATE app.notes SET extra = 'pg' WHERE token = (SELECT min(token) FROM app.notes)")
        problems = await check(cfg, db, pg_dsn, w, "postgres", d, trigger_made)
        assert not problems, "after the last cutover:\n" + "\n".join(problems)
        assert w.commits["sqlite"] > 50 and w.commits["postgres"] > 50, w.commits
        assert w.refusals > 0  # the switches did refuse writes for a moment
    finally:
        w.stopping = True
        w.run_flag.set()
        if w.is_alive():
            w.join(30)
        if d.alive():
            d.stop()
