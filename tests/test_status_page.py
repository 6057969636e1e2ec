"""The daemon's status page at GET /: one self-contained HTML document with the verdict,
the cutover checklist (the same as `syncd report`'s) and every source's figures (the
same as `syncd status --json`'s), every name escaped, no password, no outside asset."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import time
import urllib.request
from html.parser import HTMLParser

import asyncpg
import pytest

from syncd.page.history import HistoryView, SourceSeries
from syncd.report.checklist import CheckItem
from syncd.report.facts import Lag, MigrationFacts, SourceFacts, TableFacts
from syncd.report.html import page
from syncd.report.overview import Overview
from syncd.status import OK, SourceStatus
from syncd.verify.history import VerifyRun
from tests.support.browser import Browser
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import wait_caught_up
from tests.support.verifying import verify_section

WEIRD = 'weird "name"; DROP TABLE x;--'
SCRIPT = "<script>"
PASSWORD = "s3cret-pw"


class Page(HTMLParser):
    """The page as a test reads it: data-* attributes (unescaped by the parser) and text."""

    def __init__(self, text: str):
        super().__init__()
        self.sources: dict[str, dict[str, str]] = {}  # source -> data-field -> data-value
        self.tables: dict[str, dict[str, str]] = {}  # "source/table" -> data-state
        self.items: dict[str, bool] = {}
        self.text: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self._source: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "article" and "data-source" in a:
            self._source = a["data-source"]
            self.sources[self._source] = {}
        if "data-field" in a and "data-value" in a and self._source:
            self.sources[self._source][a["data-field"]] = a["data-value"]
        if tag == "tr" and "data-table" in a and self._source:
            self.tables[f"{self._source}/{a['data-table']}"] = a["data-state"]
        if tag == "li" and "data-key" in a:
            self.items[a["data-key"]] = a["data-ok"] == "true"

    def handle_endtag(self, tag):
        if tag == "article":
            self._source = None

    def handle_data(self, data):
        self.text.append(data)

    def outside_references(self) -> list[str]:
        """Every src/href that leaves the page (in-page #anchors are fine)."""
        return [v for _, a in self.tags for k, v in a.items() if k in ("src", "href") and v and not v.startswith("#")]

    @property
    def all_text(self) -> str:
        return " ".join(self.text)


def get(url: str) -> tuple[str, dict[str, str]]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode(), {k.lower(): v for k, v in r.headers.items()}


def make_sources(tmp_path):
    """Two files: `abm` with a table named like an injection and a column named
    `<script>` (which will hold a value Postgres rejects), and `sales`."""
    abm, sales = tmp_path / "abm.db", tmp_path / "sales.db"
    c = sqlite3.connect(abm)
    c.execute("PRAGMA journal_mode=wal")
    c.executescript(f"""
        CREATE TABLE "{WEIRD.replace('"', '""')}" (k TEXT PRIMARY KEY, v);
        CREATE TABLE landing ("id" INTEGER PRIMARY KEY, "{SCRIPT}" INTEGER);
        CREATE VIEW v_landing AS SELECT * FROM landing;
        INSERT INTO "{WEIRD.replace('"', '""')}" VALUES ('a', 1), ('b', 2);
        INSERT INTO landing VALUES (1, 10), (2, 20);
    """)
    c.commit()
    s = sqlite3.connect(sales)
    s.executescript("CREATE TABLE deals (id INTEGER PRIMARY KEY, amount REAL);"
                    "INSERT INTO deals VALUES (1, 24125.0), (2, 50000.0), (3, 1.5);")
    s.commit()
    return abm, sales, c


@pytest.fixture
def daemon_with_page(tmp_path, make_config, pg_dsn):
    abm, sales, conn = make_sources(tmp_path)
    port = free_port()
    dsn = pg_dsn.replace("postgres@", f"postgres:{PASSWORD}@")  # trust auth: the password is only shown, never used
    cfg = make_config([{"name": "abm", "path": str(abm), "dsn": dsn}, {"name": "sales", "path": str(sales)}],
                      metrics_listen=f"127.0.0.1:{port}", extra=verify_section())
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        yield cfg, f"http://127.0.0.1:{port}", abm, sales, conn, d
        assert d.stop() == 0


def fresh_page(url: str, after: float) -> tuple[str, dict, Page]:
    """The page as measured after `after` (a request finding the cache older than a few
    seconds makes the daemon measure again)."""
    def attempt():
        text, headers = get(url + "/")
        at = re.search(r'data-measured-at="([^"]+)"', text)
        if at and dt.datetime.fromisoformat(at.group(1)).timestamp() >= int(after):
            return text, headers, Page(text)
        return None
    return wait_for(attempt, 60, "a page measured after the change", interval=1)


async def test_page_serves_html_with_every_name_escaped_and_no_password(daemon_with_page, pg_dsn):
    cfg, url, abm, sales, conn, d = daemon_with_page
    await wait_caught_up(abm, pg_dsn, "abm", daemon=d)
    await wait_caught_up(sales, pg_dsn, "sales", daemon=d)
    text, headers, p = fresh_page(url, time.time())
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
    assert text.startswith("<!DOCTYPE html>")
    # every source and table, exactly as named, and escaped in the markup
    assert set(p.sources) == {"abm", "sales"}
    assert set(p.tables) == {f"abm/{WEIRD}", "abm/landing", "sales/deals"}
    assert "weird &quot;name&quot;; DROP TABLE x;--" in text
    assert text.count("<script") == 1  # the page's own script, nothing a name smuggled in
    assert "v_landing" in p.all_text  # a view is named (created in Postgres at cutover)
    assert p.outside_references() == []  # self-contained: nothing is fetched from anywhere
    csp = next(a["content"] for t, a in p.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert csp.startswith("default-src 'none'; ") and "'unsafe-inline'" not in csp
    assert PASSWORD not in text
    # /status still serves the JSON `syncd status` reads
    doc = json.loads(get(url + "/status")[0])
    assert set(doc["sources"]) == {"abm", "sales"} and "pid" in doc


async def test_page_figures_equal_syncd_status_and_a_held_table_shows_its_reason(daemon_with_page, pg_dsn):
    cfg, url, abm, sales, conn, d = daemon_with_page
    await wait_caught_up(abm, pg_dsn, "abm", daemon=d)
    await wait_caught_up(sales, pg_dsn, "sales", daemon=d)
    conn.execute("INSERT INTO landing VALUES (3, 'lots of people')")  # SQLite keeps it; bigint cannot
    conn.commit()
    wait_for(lambda: "table held" in d.log(), 30, "the hold", d)
    run_cli(cfg, "verify")  # a verification on record for the page's history
    time.sleep(1.5)  # the daemon's live figures settle (it refreshes them every second)
    asked = time.time()
    text, _, p = fresh_page(url, asked)
    status = json.loads(run_cli(cfg, "status", "--json").stdout)

    # the page shows the sources `syncd status` does, no fewer and no more
    assert sorted(p.sources) == sorted(src["name"] for src in status["sources"]) == ["abm", "sales"], status
    for src in status["sources"]:
        shown = p.sources[src["name"]]
        assert shown["state"] == src["state"]
        assert shown["pending_changes"] == str(src["pending_changes"])
        assert shown["last_applied_at"] == (src["last_applied_at"] or "")
        assert shown["dual_write_since"] == (src["dual_write_since"] or "")
        assert shown["direction"] == "to_postgres"
        if src["name"] == "sales":
            assert float(shown["lag_seconds"]) == src["lag_seconds"] == 0
        else:  # a held table's change waits: its age grows between the two looks
            elapsed = time.time() - asked + 1
            assert abs(float(shown["lag_seconds"]) - src["lag_seconds"]) <= elapsed
        for t in src["tables"]:
            assert p.tables[f"{src['name']}/{t['name']}"] == t["state"]
    assert p.tables["abm/landing"] == "held"

    held = next(t for t in status["sources"][0]["tables"] if t["name"] == "landing")
    assert held["state"] == "held" and "<script>" in held["reason"] and "lots of people" in held["reason"]
    assert held["reason"] in p.all_text  # the reason, as `syncd status` gives it
    assert "&lt;script&gt;" in text
    assert p.items["halted"] is False and p.items["lag"] is True
    assert 'id="verdict" data-ready="false"' in text
    # the page's checklist is the report's
    report = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
    assert p.items == {i["key"]: i["ok"] for i in report["checklist"]}


async def test_unreachable_postgres_is_shown_redacted(tmp_path, make_config, pg_dsn):
    abm, sales, _ = make_sources(tmp_path)
    port = free_port()
    dead = f"postgresql://syncd:{PASSWORD}@127.0.0.1:{free_port()}/x"
    cfg = make_config([{"name": "sales", "path": str(sales)}, {"name": "abm", "path": str(abm), "dsn": dead}],
                      metrics_listen=f"127.0.0.1:{port}", extra=verify_section(),
                      sections={"postgres": {"connect_timeout_seconds": 2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(sales, pg_dsn, "sales", daemon=d)
        text, _, p = fresh_page(f"http://127.0.0.1:{port}", time.time())
        # not ready: one source's Postgres cannot be measured; the other's facts are still shown
        assert 'data-ready="false"' in text and "syncd:***@127.0.0.1" in text
        assert p.sources["abm"]["state"] == "postgres_unreachable" and p.sources["sales"]["state"] == "streaming"
        assert PASSWORD not in text
        assert d.stop() == 0


def overview(direction: str) -> Overview:
    now = dt.datetime.now(dt.timezone.utc)
    table = TableFacts("t", "streaming", None, 5, 5, True, "capture triggers installed")
    facts = MigrationFacts(now, None, [SourceFacts("app", "/x.db", "app", registered=True, lag=Lag(0, "x", 0),
                                                   tables=[table], direction=direction)], [], 14, 30, 3600, None, 30)
    st = SourceStatus(name="app", path="/x.db", state="streaming", lag_seconds=0.0, pending_changes=0)
    return Overview(now, facts, [CheckItem("lag", "Lag", True)], OK, [st], sources=["app"])


def test_a_cut_over_source_shows_its_direction():
    to_pg, to_sqlite = Page(page(overview("to_postgres"), None, live=True)), Page(page(overview("to_sqlite"), None,
                                                                                       live=True))
    assert to_pg.sources["app"]["direction"] == "to_postgres" and "SQLite → PostgreSQL" in to_pg.all_text
    assert to_sqlite.sources["app"]["direction"] == "to_sqlite"
    assert "PostgreSQL → SQLite (after cutover)" in to_sqlite.all_text


def test_a_cut_over_source_shows_its_direction_when_the_facts_could_not_be_measured():
    """The migration's facts not measured (a statement timeout, say), a cut-over source's
    direction is still the one `syncd status` found, at a glance and on its card; before,
    both said SQLite → PostgreSQL for a source SQLite now follows."""
    ov = overview("to_sqlite")
    ov.facts, ov.facts_error = None, "Postgres: canceling statement due to statement timeout"
    ov.statuses[0].direction = "to_sqlite"
    shown = Page(page(ov, None, live=True))
    assert shown.sources["app"]["direction"] == "to_sqlite", shown.sources
    assert "SQLite → PostgreSQL" not in shown.all_text, shown.all_text
    assert shown.all_text.count("PostgreSQL → SQLite (after cutover)") == 2, shown.all_text


def test_a_source_whose_way_back_ended_has_no_row_counts_marked_as_differing():
    """Once SQLite no longer follows Postgres (the way back ended), the file is kept as it
    was and Postgres moves on: their counts are not expected to agree. The table rows
    never marked them; the glance row and the source's rows figure do not either (they
    showed the counts as a mismatch, in red, as for a table replication failed)."""
    ov = overview("to_sqlite")
    src = ov.facts.sources[0]
    src.way_back_ended, src.tables[0].rows_postgres = "the window is over", 7
    text = page(ov, None, live=True)
    assert "5 / 7" in text and 'class="mismatch"' not in text and "num mismatch" not in text, text


def test_charts_draw_the_daemon_history():
    now = time.time()
    times = [now - 300 + i * 5 for i in range(61)]
    hist = HistoryView(3600, 5, times, {"app": SourceSeries([0.5] * 61, [float("nan")] + [12.0] * 60)})
    text = page(overview("to_postgres"), hist, live=True)
    lag = re.search(r'<figure data-chart="lag">.*?</figure>', text, re.S).group(0)
    rate = re.search(r'<figure data-chart="apply-rate">.*?</figure>', text, re.S).group(0)
    assert 'data-points="61"' in lag and "now 0.5 s" in lag
    assert 'data-points="60"' in rate and "now 12 changes/s" in rate
    assert "lag and apply-rate history" not in text
    assert "No lag or apply-rate history" in page(overview("to_postgres"), None, live=False)


# --- in a real browser ----------------------------------------------------------------------


def test_browser_harness_reports_javascript_errors(tmp_path):
    """The check the page test relies on: an exception, a console error and a script the
    Content-Security-Policy blocks are each reported."""
    bad = ("data:text/html,<meta http-equiv='Content-Security-Policy' content=\"script-src 'none'\">"
           "<p>x</p><script>1</script>")
    with Browser(tmp_path) as b:
        b.open("data:text/html,<p>x</p><script>console.error('boom'); notDefined();</script>")
        b.pump(0.5)
        found = b.errors()
        assert any("boom" in x for x in found) and any("notDefined" in x for x in found)
        b.events.clear()
        b.open(bad)
        b.pump(0.5)
        assert any("Content Security Policy" in x for x in b.errors()), b.errors()


async def test_page_in_a_real_browser(daemon_with_page, pg_dsn, tmp_path):
    cfg, url, abm, sales, conn, d = daemon_with_page
    await wait_caught_up(abm, pg_dsn, "abm", daemon=d)
    await wait_caught_up(sales, pg_dsn, "sales", daemon=d)
    conn.execute("INSERT INTO landing VALUES (3, 'lots of people')")
    conn.commit()
    wait_for(lambda: "table held" in d.log(), 30, "the hold", d)
    run_cli(cfg, "verify")
    with Browser(tmp_path, width=1280, height=1600) as b:
        b.open(url + "/")
        dom = b.evaluate("""(() => ({
            items: [...document.querySelectorAll('#checklist li[data-key]')].map(li => li.dataset.key),
            verdict: document.getElementById('verdict').textContent,
            sources: [...document.querySelectorAll('article[data-source]')].map(a => a.dataset.source),
            tables: [...document.querySelectorAll('tr[data-table]')].map(t => t.dataset.table),
            charts: document.querySelectorAll('figure[data-chart] svg.chart').length,
            strips: [...document.querySelectorAll('svg.strip')].map(s => Number(s.dataset.checks)),
            scripts: document.scripts.length,
            weird: [...document.querySelectorAll('code')].some(c => c.textContent === %s),
            held: document.querySelector('tr[data-table="landing"]').textContent,
        }))()""" % json.dumps(WEIRD))
        assert dom["items"] == ["migrated", "dual_write", "lag", "halted", "capture", "backup", "performance",
                                 "foreign_keys", "rollback_rehearsed"]
        assert dom["verdict"].startswith("NOT READY for cutover")
        assert dom["sources"] == ["abm", "sales"] and set(dom["tables"]) == {WEIRD, "landing", "deals"}
        assert dom["charts"] == 4 and len(dom["strips"]) == 3 and all(n >= 1 for n in dom["strips"])
        assert dom["scripts"] == 1 and dom["weird"]
        assert "held" in dom["held"] and "lots of people" in dom["held"]
        # it refreshes itself, in place, and the charts fill from the daemon's ring
        wait_for(lambda: int(b.evaluate("document.documentElement.dataset.refreshes")) >= 1, 40,
                 "the page's own refresh")
        points = b.evaluate("[...document.querySelectorAll('svg.chart')].map(s => Number(s.dataset.points))")
        assert len(points) == 4 and min(points) >= 1
        assert b.evaluate("document.querySelectorAll('svg.chart polyline, svg.chart circle').length") >= 4
        shot = b.screenshot(tmp_path / "status-page.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        assert b.errors() == []
    with Browser(tmp_path / "phone", width=390, height=844) as phone:  # readable on a phone
        phone.open(url + "/")
        fits = phone.evaluate("""(() => ({
            page: document.documentElement.scrollWidth, screen: window.innerWidth,
            verdict: document.getElementById('verdict').getBoundingClientRect().width,
            wider: [...document.querySelectorAll('body *')].filter(e => !e.closest('.scroll')
                       && e.getBoundingClientRect().right > window.innerWidth + 1)
                     .filter(e => ![...e.children].some(c => c.getBoundingClientRect().right > window.innerWidth + 1))
                     .slice(0, 5).map(e => e.tagName + '.' + e.className + ': ' + e.textContent.slice(0, 40)),
        }))()""")
        assert fits["page"] <= fits["screen"] and 0 < fits["verdict"] <= fits["screen"], fits
        phone.screenshot(tmp_path / "status-page-phone.png")
        assert phone.errors() == []


async def test_a_stuck_measurement_never_stalls_the_page_or_the_daemon(tmp_path, make_config, pg_dsn):
    """Measuring waits on Postgres (here: a table another session holds locked); the
    page answers within its wait with the earlier measurement, and replication goes on."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    for db in (a, b):
        c = sqlite3.connect(db)
        c.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'x');")
        c.commit()
        c.close()
    port = free_port()
    cfg = make_config([{"name": "a", "path": str(a)}, {"name": "b", "path": str(b)}],
                      metrics_listen=f"127.0.0.1:{port}", extra=verify_section())
    url = f"http://127.0.0.1:{port}"
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(a, pg_dsn, "a", daemon=d)
        await wait_caught_up(b, pg_dsn, "b", daemon=d)
        first = fresh_page(url, time.time())[0]
        stale_at = time.monotonic() + 5.3  # the page's cache (5 s) has aged past its measurement by then
        measured = re.search(r'data-measured-at="([^"]+)"', first).group(1)
        locker = await asyncpg.connect(pg_dsn)
        try:
            tx = locker.transaction()
            await tx.start()
            await locker.execute('LOCK TABLE "a"."t" IN ACCESS EXCLUSIVE MODE')  # count(*) on it now waits
            time.sleep(max(0.0, stale_at - time.monotonic()))  # the next request asks for a new measurement
            started = time.monotonic()
            text, _ = get(url + "/")
            assert time.monotonic() - started < 6  # waited its 3 s at most, plus rendering
            assert f'data-measured-at="{measured}"' in text  # the earlier measurement, with its age
            started = time.monotonic()
            get(url + "/status")
            assert time.monotonic() - started < 2
            c = sqlite3.connect(b)
            c.execute("INSERT INTO t VALUES (2, 'streams on')")
            c.commit()
            c.close()
            await wait_caught_up(b, pg_dsn, "b", daemon=d, timeout=30)
            await tx.rollback()
        finally:
            await locker.close()
        fresh_page(url, time.time())  # measured again once the lock is gone
        assert d.stop() == 0


async def test_a_file_not_picked_up_since_the_start_is_on_the_page(tmp_path, make_config, pg_dsn):
    """A file a glob matches and syncd does not pick up, appearing while the daemon runs
    (a name that makes no source name): the page's checklist fails its 'migrated' item on
    it, as `syncd report` does, and once the file is renamed to a name syncd takes the
    page no longer names it. The page judged the files of the daemon's start (or its last
    reload): it called a fleet with such a file migrated, and went on naming a file that
    had been carried for long."""
    tenants = tmp_path / "tenants"
    tenants.mkdir()

    def tenant(path) -> None:
        c = sqlite3.connect(path)
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
        c.execute("INSERT INTO items VALUES (1, 'a')")
        c.commit()
        c.close()

    tenant(tenants / "acme.db")
    port = free_port()
    cfg = make_config([{"name": "t_{stem}", "path": str(tenants / "*.db")}], metrics_listen=f"127.0.0.1:{port}",
                      sections={"stream": {"discover_interval_seconds": 0.5}, "verify": {"interval_seconds": 0}})
    url = f"http://127.0.0.1:{port}"
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(tenants / "acme.db", pg_dsn, "t_acme", daemon=d)
        bad = tenants / "bad name.db"
        tenant(bad)
        d.wait_log(f"{bad} (from {tenants / '*.db'}) is not picked up", 30)
        # A page measured a second later at least (fresh_page counts whole seconds): the
        # daemon logs what it found a moment before the page's judge takes it.
        _text, _headers, p = fresh_page(url, time.time() + 1)
        assert "bad name.db" in p.all_text, p.all_text[-3000:]
        assert "bad name.db" in run_cli(cfg, "report").stdout  # as the report says
        bad.rename(tenants / "globex.db")
        await wait_caught_up(tenants / "globex.db", pg_dsn, "t_globex", daemon=d)
        _text, _headers, p = fresh_page(url, time.time() + 1)
        assert "bad name.db" not in p.all_text, p.all_text[-3000:]
        assert d.stop() == 0


def last_verification(ov: Overview) -> str:
    """The source's "Last verification" figure as the live page shows it."""
    return re.search(r"<dt>Last verification</dt><dd>(.*?)</dd>", page(ov, None, live=True)).group(1)


def clean_run(then: dt.datetime) -> VerifyRun:
    """A run of table "t" that found its column "id" equal, finished at `then`."""
    return VerifyRun(1, "app", "t", then, then, 5, 5, 0, 0, 0, 0, 0, None, True, "streaming", {"columns": ["id"]})


def test_a_table_never_verified_keeps_the_sources_last_verification_from_reading_all_clear():
    """A source with one table found equal and one never verified: its "Last verification"
    figure names the one never verified, and not in the colour of a source found equal
    (it showed "equal (1 table(s)); 1 never verified" in green, and with the other
    table's columns changed since, dropped the one never verified altogether)."""
    figure = last_verification

    ov = overview("to_postgres")
    src = ov.facts.sources[0]
    now = ov.facts.generated_at
    checked = src.tables[0]
    checked.columns = ["id"]
    checked.runs = [VerifyRun(1, "app", "t", now, now, 5, 5, 0, 0, 0, 0, 0, None, True, "streaming",
                              {"columns": ["id"]})]
    src.tables.append(TableFacts("never", "streaming", None, 3, 3, True, "capture triggers installed",
                                 columns=["id"]))
    shown = figure(ov)
    assert "1 never verified" in shown and "sev-ok" not in shown and "sev-warning" in shown, shown
    checked.columns = ["id", "tag"]  # a column added since its run
    shown = figure(ov)
    assert "1 of 2 table(s) not verified since it changed" in shown and "1 never verified" in shown, shown
    assert "sev-warning" in shown, shown


def test_a_verification_older_than_verify_max_age_is_not_shown_as_all_clear():
    """A source whose tables were last found equal longer ago than [status]
    verify_max_age_seconds: its "Last verification" figure says they are not verified
    recently, as a warning, as the checklist and `syncd status` judge it (it read
    "equal (1 table(s))" in the colour of a source found equal, days after the last check)."""
    ov = overview("to_postgres")
    src = ov.facts.sources[0]
    table = src.tables[0]
    table.columns = ["id"]
    then = ov.facts.generated_at - dt.timedelta(days=3)
    table.runs = [clean_run(then)]
    shown = last_verification(ov)
    assert "1 of 1 table(s) last verified longer ago than 60 min ([status] verify_max_age_seconds)" in shown, shown
    assert "sev-warning" in shown and "sev-ok" not in shown and "equal" not in shown, shown
    then = ov.facts.generated_at - dt.timedelta(minutes=5)  # within the hour: equal, as before
    table.runs = [clean_run(then)]
    shown = last_verification(ov)
    assert "equal (1 table(s))" in shown and "sev-ok" in shown, shown


def test_a_verification_dated_in_the_future_is_not_shown_as_all_clear():
    """A table whose last run is dated ahead of the page (the clock of the host that ran it
    ahead) was verified at a time not known: as the checklist judges it, its "Last
    verification" figure says so as a warning, not "equal" in the colour of a source found
    equal."""
    ov = overview("to_postgres")
    table = ov.facts.sources[0].tables[0]
    table.columns = ["id"]
    then = ov.facts.generated_at + dt.timedelta(days=1)
    table.runs = [clean_run(then)]
    shown = last_verification(ov)
    assert "1 of 1 table(s) last verified at a time dated in the future" in shown, shown
    assert "sev-warning" in shown and "sev-ok" not in shown and "equal" not in shown, shown


def test_a_source_whose_way_back_ended_reads_no_longer_compared():
    """After the rollback window, the way back has ended and the file is kept as it was:
    the "Last verification" figure says the two are no longer compared, as the table rows
    and the checklist do, rather than turning a warning for good once its last run is older
    than [status] verify_max_age_seconds."""
    ov = overview("to_sqlite")
    src = ov.facts.sources[0]
    src.way_back_ended = True
    table = src.tables[0]
    table.columns = ["id"]
    then = ov.facts.generated_at - dt.timedelta(days=3)
    table.runs = [clean_run(then)]
    shown = last_verification(ov)
    assert "no longer compared" in shown, shown
    assert "sev-warning" not in shown and "longer ago" not in shown, shown


def test_a_table_held_while_a_retry_copies_it_is_in_the_held_list():
    """A held table whose retry copies it again (loading, the hold's reason kept) is held
    all the same, as the checklist and `syncd status` say: the source's "Held or paused"
    list names it with its reason and its row is marked halted (while the copy ran, the
    list left it out and the row read as a table being loaded)."""
    ov = overview("to_postgres")
    table = ov.facts.sources[0].tables[0]
    table.state, table.reason = "loading", "value out of range for type integer"
    text = page(ov, None, live=True)
    held = re.search(r'<div class="halted-list">.*?</div>', text, re.S)
    assert held is not None and 'data-halted="t"' in held.group(0), text
    assert "value out of range for type integer" in held.group(0), held.group(0)
    assert '<tr data-table="t" data-state="loading" class="halted">' in text, text


def test_a_table_held_while_a_retry_copies_it_is_counted_held_at_a_glance():
    """The glance row's Tables column counts a held table whose retry copies it again
    (loading, the hold's reason kept) as held, in a warning's colour, as the source's
    held list and `syncd status` do; it read "1 loading", uncoloured, as for a table
    being loaded for the first time."""
    ov = overview("to_postgres")
    table = ov.facts.sources[0].tables[0]
    table.state, table.reason = "loading", "value out of range for type integer"
    row = re.search(r'<tr data-source="app">.*?</tr>', page(ov, None, live=True), re.S).group(0)
    assert '<td class="sev-warning">1 held</td>' in row, row


def test_a_source_whose_file_cannot_be_read_shows_no_verification_as_all_clear():
    """The SQLite file gone or unreadable, its tables cannot be compared now: the source's
    "Last verification" figure says so, as a warning, beside its red badge and error (it
    still read "equal (1 table(s))" in the colour of a source found equal)."""
    ov = overview("to_postgres")
    src = ov.facts.sources[0]
    src.error = "cannot read SQLite file /x.db: unable to open database file"
    table = src.tables[0]
    table.columns = ["id"]
    then = ov.facts.generated_at - dt.timedelta(minutes=5)
    table.runs = [clean_run(then)]
    shown = last_verification(ov)
    assert "the SQLite file cannot be read now" in shown, shown
    assert "sev-warning" in shown and "sev-ok" not in shown, shown


def test_the_performance_and_foreign_key_items_say_how_old_their_measurement_is():
    """The live page times lookups and counts orphan rows at most every 10 minutes
    (summary.CACHE_SECONDS) and shows that measurement meanwhile: those two items say
    when it was taken, next to them (the page said every figure was measured when it was
    served). A measurement taken with the page's other figures says nothing more."""
    from syncd.parity.summary import ParityFacts

    ov = overview("to_postgres")
    ov.items = [CheckItem("lag", "Lag", True), CheckItem("performance", "Performance", True),
                CheckItem("foreign_keys", "Foreign keys", True)]
    parity = ParityFacts()
    parity.measured_at = ov.measured_at - dt.timedelta(minutes=8)
    ov.facts.sources[0].parity = parity
    text = page(ov, None, live=True)
    items = {k: re.search(rf'<li [^>]*data-key="{k}".*?</li>', text, re.S).group(0)
             for k in ("lag", "performance", "foreign_keys")}
    for key in ("performance", "foreign_keys"):
        assert "8 min ago" in items[key] and "at most every 10 min" in items[key], items[key]
    assert "ago" not in items["lag"], items["lag"]
    parity.measured_at = ov.measured_at
    text = page(ov, None, live=True)
    assert "at most every" not in text, text
