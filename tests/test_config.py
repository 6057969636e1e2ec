"""Configuration: TOML + environment + credential files; bad input is one line naming
the key at fault, every further problem on a line of its own under it, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.config import ConfigError, load_settings
from tests.support.daemon import run_cli

GOOD = """
[postgres]
dsn = "postgresql://syncd@127.0.0.1:5432/synapse"
[[sources]]
name = "sales"
path = "sales.db"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "syncd.toml"
    p.write_text(text)
    return p


def test_loads_and_resolves_paths_relative_to_the_file(tmp_path):
    s = load_settings(write(tmp_path, GOOD))
    assert s.sources[0].path == tmp_path / "sales.db"
    assert s.sources[0].schema == "sales"
    assert s.metrics.listen == "127.0.0.1:9464"  # loopback by default


def test_every_lookup_of_a_large_fleet_can_be_timed(tmp_path):
    """The performance item fails while any lookup is left untimed, so the cap on lookups
    timed has no ceiling a large fleet could not get past."""
    s = load_settings(write(tmp_path, GOOD + "[cutover]\nspeed_max_lookups = 5000000\n"))
    assert s.cutover.speed_max_lookups == 5_000_000


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNCD_POSTGRES__DSN", "postgresql://other@db.internal:5433/x")
    monkeypatch.setenv("SYNCD_STREAM__BATCH_SIZE", "123")
    s = load_settings(write(tmp_path, GOOD))
    assert s.postgres.dsn == "postgresql://other@db.internal:5433/x"
    assert s.stream.batch_size == 123


def test_a_bad_environment_variable_is_named_not_blamed_on_the_file(tmp_path, monkeypatch):
    cfg = write(tmp_path, GOOD)
    monkeypatch.setenv("SYNCD_STREAM__BATCH_SIZE", "abc")
    with pytest.raises(ConfigError, match=r"^environment variable SYNCD_STREAM__BATCH_SIZE \(over config .*\): "
                                          r"Input should be a valid integer"):
        load_settings(cfg)
    monkeypatch.delenv("SYNCD_STREAM__BATCH_SIZE")
    monkeypatch.setenv("SYNCD_STREAM__BATCHSIZE", "10")
    with pytest.raises(ConfigError, match=r"^environment variable SYNCD_STREAM__BATCHSIZE .*: unknown key "
                                          r"\(did you mean SYNCD_STREAM__BATCH_SIZE\?\)$"):
        load_settings(cfg)


def test_password_from_a_credentials_directory(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "postgres__password").write_text("s3cret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = load_settings(write(tmp_path, GOOD))
    assert s.password() == "s3cret"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD + "\n[bogus]\nx = 1\n", "bogus: unknown key"),
        (GOOD.replace('path = "sales.db"', 'path = "sales.db"\npaht = "x"'), "sources[0].paht: unknown key (did you mean path?)"),
        (GOOD.replace("postgresql://syncd@", "mysql://syncd@"), "postgres.dsn: must be a postgresql:// URL"),
        (GOOD.replace(":5432/", ":notaport/"), "postgres.dsn: not a valid postgresql:// URL"),
        (GOOD + '\n[[sources]]\nname = "sales"\npath = "b.db"\n', "duplicate source name 'sales'"),
        # the name `syncd rehearse` runs the copy of source sales under: the rehearsal found it locked
        (GOOD + '\n[[sources]]\nname = "sales.rehearsal"\npath = "b.db"\n',
         "sources[1].name: 'sales.rehearsal' is the name `syncd rehearse` gives the copy of source 'sales'"),
        # where it replicates that copy, and drops it after: the rehearsal said to drop this source's replica
        (GOOD + '\n[[sources]]\nname = "sales2"\npath = "b.db"\nschema = "sales_rehearsal"\n',
         "sources[1].schema: 'sales_rehearsal' is where `syncd rehearse` replicates the copy of source 'sales'"),
        (GOOD + '\n[metrics]\nlisten = "nonsense"\n', "metrics.listen: must be HOST:PORT"),
        (GOOD.replace('name = "sales"', 'name = "sales"\ncolumns = { t = { c = "varchar" } }'),
         "unsupported Postgres type 'varchar'"),
        (GOOD.replace('name = "sales"', 'name = "sales"\nkeys = { t = ["v", "v"] }'),
         "sources[0].keys: t: names column 'v' twice"),  # else Postgres refuses the key, and the table pauses
        (GOOD + "\n[stream]\nbatch_size = true\n", "stream.batch_size: must be a number, not true or false"),
        (GOOD + "\n[verify]\ninterval_seconds = false\n", "verify.interval_seconds: must be a number"),
        # a NUL character: a traceback (realpath, quoting), or a DSN naming another database to Postgres
        (GOOD.replace('path = "sales.db"', 'path = "sales\\u0000.db"'), "sources[0].path: holds a NUL character"),
        (GOOD.replace('name = "sales"', 'name = "sales"\nschema = "s\\u0000"'), "sources[0].schema: holds a NUL"),
        (GOOD.replace("[postgres]", '[postgres]\nbookkeeping_schema = "s\\u0000"'),
         "postgres.bookkeeping_schema: holds a NUL character"),
        (GOOD.replace("/synapse", "/syn\\u0000apse"), "postgres.dsn: holds a NUL character"),
        (GOOD.replace("/synapse", "/syn%00apse"), "postgres.dsn: holds a NUL character"),
        # asyncpg refuses every connection with it: not "Postgres unreachable" for ever
        (GOOD.replace("/synapse", "/synapse?sslmode=required"), "postgres.dsn: its sslmode is not one of"),
        (GOOD.replace("/synapse", "/synapse?target_session_attrs=primary&sslmode=verify"),
         "postgres.dsn: its sslmode is not one of"),
        (GOOD.replace("/synapse", "/synapse?target_session_attrs=primary-only"),
         "postgres.dsn: its target_session_attrs is not one of any, primary, standby, prefer-standby, read-write, "
         "read-only"),
        (GOOD.replace("/synapse", "/synapse?gsslib=kerberos"), "postgres.dsn: its gsslib is not one of gssapi, sspi"),
        (GOOD.replace("/synapse", "/synapse?sslnegotiation=tls"),
         "postgres.dsn: its sslnegotiation is not one of postgres, direct"),
        (GOOD.replace("/synapse", "/synapse?ssl_max_protocol_version=1.3"),
         "postgres.dsn: its ssl_max_protocol_version is not a TLS version"),
        ("[postgres\n", "config"),
        ("[[sources]]\nname = 'a'\npath = 'a.db'\n", "postgres: required key is missing"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text))
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"])
def test_every_sslmode_clients_know_is_taken(tmp_path, mode):
    s = load_settings(write(tmp_path, GOOD.replace("/synapse", f"/synapse?sslmode={mode}")))
    assert s.postgres.dsn.endswith(f"sslmode={mode}")


@pytest.mark.parametrize("query", ["target_session_attrs=read-write", "gsslib=gssapi", "sslnegotiation=direct&"
                                   "sslmode=require", "ssl_min_protocol_version=TLSv1.3", "sslmode=disable&"
                                   "ssl_max_protocol_version=anything"])
def test_connection_settings_clients_take_in_the_dsn_are_taken(tmp_path, query):
    assert load_settings(write(tmp_path, GOOD.replace("/synapse", f"/synapse?{query}"))).postgres.dsn.endswith(query)


def _asyncpg_takes(dsn: str) -> bool:
    """Whether asyncpg's own parser takes `dsn` in this environment (no connection made)."""
    from asyncpg import connect_utils, exceptions

    try:
        connect_utils._parse_connect_dsn_and_args(
            dsn=dsn, host=None, port=None, user=None, password=None, passfile=None, database=None, ssl=None,
            service=None, servicefile=None, direct_tls=None, server_settings=None, target_session_attrs=None,
            krbsrvname=None, gsslib=None)
    except (exceptions.ClientConfigurationError, ValueError):
        return False
    return True


SOCKET = "postgresql://syncd@%2Frun%2Fpostgresql/synapse"


@pytest.mark.parametrize("dsn, env", [
    (f"{SOCKET}?ssl_max_protocol_version=1.3", {}),
    ("postgresql://syncd@/synapse?host=/run/postgresql&ssl_min_protocol_version=TLS1.3", {}),
    (SOCKET, {"PGSSLMAXPROTOCOLVERSION": "TLS1.3"}),
    ("postgresql://syncd@127.0.0.1:5432/synapse?ssl_max_protocol_version=1.3", {"PGSSLMODE": "disable"}),
    ("postgresql://syncd@127.0.0.1:5432/synapse", {"PGSSLMODE": "disable", "PGSSLMINPROTOCOLVERSION": "TLS1.3"}),
], ids=["socket-dsn", "socket-host-query", "socket-env", "pgsslmode-disable-dsn", "pgsslmode-disable-env"])
def test_a_tls_version_postgres_clients_never_read_is_not_refused(tmp_path, monkeypatch, dsn, env):
    """A TLS protocol version is read only for a connection that may use TLS: not over a
    Unix socket (every host a path, no sslmode asking for TLS), nor where the sslmode in
    effect (the DSN's, else PGSSLMODE) is disable. Such a setup connects, yet syncd
    refused to start with it."""
    for name in ("PGSSLMODE", "PGSSLMINPROTOCOLVERSION", "PGSSLMAXPROTOCOLVERSION", "PGHOST", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _asyncpg_takes(dsn)
    cfg = GOOD.replace("postgresql://syncd@127.0.0.1:5432/synapse", dsn)
    assert load_settings(write(tmp_path, cfg)).postgres.dsn == dsn


@pytest.mark.parametrize("dsn, env", [
    (f"{SOCKET}?sslmode=require&ssl_max_protocol_version=1.3", {}),
    (f"{SOCKET}?ssl_max_protocol_version=1.3", {"PGSSLMODE": "require"}),
    ("postgresql://syncd@%2Frun%2Fpostgresql,127.0.0.1/synapse?ssl_max_protocol_version=1.3", {}),
    ("postgresql://syncd@127.0.0.1:5432/synapse?sslmode=prefer&ssl_max_protocol_version=1.3",
     {"PGSSLMODE": "disable"}),
], ids=["socket-sslmode-require", "socket-pgsslmode-require", "socket-and-tcp", "dsn-sslmode-wins"])
def test_a_tls_version_read_for_a_tls_connection_is_still_refused(tmp_path, monkeypatch, dsn, env):
    for name in ("PGSSLMODE", "PGSSLMINPROTOCOLVERSION", "PGSSLMAXPROTOCOLVERSION", "PGHOST", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert not _asyncpg_takes(dsn)
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, GOOD.replace("postgresql://syncd@127.0.0.1:5432/synapse", dsn)))
    assert "ssl_max_protocol_version is not a TLS version" in str(e.value), str(e.value)


@pytest.mark.parametrize("text, key", [
    (GOOD + '\n[[sources]]\nname = "sales"\npath = "b.db"\n', "sources[1].name"),
    (GOOD.replace('name = "sales"', 'name = "sales"\nschema = "syncd"'), "sources[0].schema"),
])
def test_a_problem_between_keys_is_named_by_its_key_not_as_the_top_level(tmp_path, text, key):
    """The line names the key at fault first, as every other problem's does: it read
    "config syncd.toml: (top level): sources[1].name: duplicate source name 'sales'"."""
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text))
    assert str(e.value).startswith(f"config {tmp_path / 'syncd.toml'}: {key}: "), str(e.value)
    assert "(top level)" not in str(e.value)


def test_cli_exit_code_2_and_no_password_echoed(tmp_path):
    cfg = write(tmp_path, GOOD.replace("syncd@", "syncd:hunter2@") + "\n[bogus]\n")
    r = run_cli(cfg, "init")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "bogus: unknown key" in r.stderr
    assert "hunter2" not in r.stderr + r.stdout


def test_missing_config_file(tmp_path):
    r = run_cli(tmp_path / "nope.toml", "init")
    assert r.returncode == 2
    assert "nope.toml does not exist" in r.stderr


def test_config_from_environment_variable(tmp_path):
    cfg = write(tmp_path, GOOD)
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "syncd", "schema"], capture_output=True, text=True, cwd=tmp_path.parent,
                       env={"SYNCD_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"})
    # found the file named by SYNCD_CONFIG; the database it names does not exist yet
    assert f"source sales: ERROR SQLite file {tmp_path / 'sales.db'} does not exist" in r.stdout
    assert r.returncode == 1


@pytest.mark.parametrize("text, lines", [
    (GOOD.replace("dsn =", "dns ="), [": postgres.dns: unknown key (did you mean dsn?) (and 1 more problem:)",
                                      "  postgres.dsn: required key is missing"]),
    (GOOD.replace("[postgres]", "[postgress]"), [": postgress: unknown key (did you mean postgres?) (and 1 more problem:)",
                                                 "  postgres: required key is missing"]),
    (GOOD.replace('path = "sales.db"', 'paht = "sales.db"\nshema = "s"'),
     [": sources[0].paht: unknown key (did you mean path?) (and 2 more problems:)",
      "  sources[0].shema: unknown key (did you mean schema?)",
      "  sources[0].path: required key is missing"]),
])
def test_every_problem_is_listed_and_a_misspelt_key_is_named_first(tmp_path, text, lines):
    cfg = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    assert str(e.value).splitlines() == [f"config {cfg}" + lines[0], *lines[1:]]
    r = run_cli(cfg, "init")
    assert r.returncode == 2 and r.stderr.splitlines() == [f"syncd: config {cfg}" + lines[0], *lines[1:]], r.stderr


def test_an_unknown_key_like_no_known_one_suggests_nothing(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, GOOD + "\n[stream]\nqqqqq = 1\n"))
    assert str(e.value).endswith(": stream.qqqqq: unknown key")


@pytest.mark.parametrize("path", ['""', '"  "'])
def test_an_empty_source_path_is_refused_not_taken_for_the_config_directory(tmp_path, path):
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, GOOD.replace('"sales.db"', path)))
    assert str(e.value).endswith(": sources[0].path: is empty")


@pytest.mark.parametrize("key", ["patterns", "configured", "discovery_problems", "config_path"])
def test_what_syncd_works_out_itself_is_refused_as_a_setting(tmp_path, monkeypatch, key):
    """The globs' templates, the sources naming one file each, what discovery could not
    pick up and the config file's own path are syncd's to work out: written in the TOML
    or the environment they were silently ignored."""
    value = '["x"]' if key == "discovery_problems" else '"elsewhere.toml"' if key == "config_path" else "[]"
    cfg = write(tmp_path, f"{key} = {value}\n" + GOOD)
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    assert str(e.value) == f"config {cfg}: {key}: unknown key"
    monkeypatch.setenv(f"SYNCD_{key.upper()}", value)
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, GOOD))
    assert str(e.value) == f"environment variable SYNCD_{key.upper()} (over config {cfg}): unknown key"


@pytest.mark.parametrize("setting, value, said", [
    ("postgres.statement_timeout_seconds", "inf", "finite number"),
    ("postgres.statement_timeout_seconds", "1e12", "less than or equal to"),
    ("postgres.connect_timeout_seconds", "inf", "finite number"),
    ("stream.poll_interval_seconds", "inf", "finite number"),
    ("sqlite.read_busy_timeout_ms", "3000000000", "less than or equal to"),
])
def test_a_number_syncd_cannot_use_is_refused_naming_the_key(tmp_path, setting, value, said):
    """TOML spells inf and nan, and takes any size: a timeout Postgres or SQLite cannot
    hold is refused at load, naming the key, not met later as 'cannot connect' (or, for
    SQLite's busy timeout, silently taken as no wait at all)."""
    section, key = setting.split(".")
    text = (GOOD.replace("[postgres]\n", f"[postgres]\n{key} = {value}\n") if section == "postgres"
            else f"[{section}]\n{key} = {value}\n" + GOOD)
    r = run_cli(write(tmp_path, text), "init")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"syncd: config {tmp_path / 'syncd.toml'}: {setting}: ") and said in r.stderr, r.stderr


@pytest.mark.parametrize("name, meant", [
    ("SYNCD_POSTGRES_DSN", "SYNCD_POSTGRES__DSN"),  # one underscore where two part section and key
    ("SYNCD_STREM__BATCH_SIZE", "SYNCD_STREAM__BATCH_SIZE"),  # a misspelt section
])
def test_a_misspelt_environment_variable_is_named_not_ignored(tmp_path, name, meant):
    """An override the operator set that syncd would not read (the file's database used
    instead of the one meant) is one line naming the variable and what it was meant as,
    exit 2; its value, which may hold a password, is never shown."""
    cfg = write(tmp_path, GOOD)
    r = run_cli(cfg, "init", env={name: "postgresql://syncd:hunter2@127.0.0.1:5432/other"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert f"environment variable {name}" in r.stderr and f"did you mean {meant}?" in r.stderr, r.stderr
    assert "hunter2" not in r.stdout + r.stderr
    # syncd's own variables of that shape are not mistaken for misspelt settings
    assert run_cli(cfg, "schema", env={"SYNCD_CUTOVER_HOLD_AT": "x", "SYNCD_BENCH_DSN": "x"}).returncode != 2


@pytest.mark.parametrize("value, said", [
    ('""', "is empty"),
    ('"pg_catalog"', "reserved by Postgres"),
    ('"information_schema"', "reserved by Postgres"),
    ('"' + "s" * 64 + '"', "longer than 63 bytes"),
])
def test_a_bookkeeping_schema_postgres_cannot_give_syncd_is_refused(tmp_path, value, said):
    """As a source's schema is: refused at load naming the key, not met at `syncd init`
    as a traceback of Postgres's syntax error, or as a privilege to grant."""
    cfg = write(tmp_path, GOOD.replace("[postgres]\n", f"[postgres]\nbookkeeping_schema = {value}\n"))
    r = run_cli(cfg, "init")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert "postgres.bookkeeping_schema: " in r.stderr and said in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["SYNCD_METRICS__AUTH_TOKEN", "SYNCD_METRICS__BASIC_AUTH_PASSWORD"])
def test_an_empty_endpoint_credential_is_refused(tmp_path, name):
    """`Environment=SYNCD_METRICS__AUTH_TOKEN=$TOKEN` with $TOKEN unset: the operator meant
    the status page closed, and an empty credential left it open to anyone (a warning in
    the log at best). Refused at load naming the variable, exit 2."""
    env = {name: ""}
    if "BASIC" in name:
        env["SYNCD_METRICS__BASIC_AUTH_USER"] = "prometheus"
    r = run_cli(write(tmp_path, GOOD), "init", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert f"environment variable {name}" in r.stderr and "is empty" in r.stderr, r.stderr


@pytest.mark.parametrize("name, value", [
    ("SYNCD_SOURCES", "sales.db"),  # a list is JSON in the environment
    ("SYNCD_POSTGRES", '{"dsn": "postgresql://syncd:hunter2@127.0.0.1:5432/other"'),  # a table, its brace left out
])
def test_an_environment_variable_that_is_not_the_json_its_setting_needs_is_named(tmp_path, name, value):
    """A list or a table set from the environment is JSON: one that is not is one line
    naming the variable (not the config file, nor pydantic's "EnvSettingsSource"), exit 2,
    its value (which may hold a password) never shown."""
    cfg = write(tmp_path, GOOD)
    r = run_cli(cfg, "init", env={name: value})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"syncd: environment variable {name} (over config {cfg}): "), r.stderr
    assert "JSON" in r.stderr and "SettingsSource" not in r.stderr, r.stderr
    assert "hunter2" not in r.stdout + r.stderr


@pytest.mark.parametrize("name, value, said", [
    ("postgres__dsn", "mysql://syncd:hunter2@127.0.0.1:5432/other", "must be a postgresql:// URL"),
    ("stream__batch_size", "many", "valid integer"),
])
def test_a_bad_credential_file_is_named_not_blamed_on_the_config_file(tmp_path, name, value, said):
    """A setting from systemd's credentials (LoadCredential=, say the DSN with its password)
    that syncd cannot use: the line names that credential file, whose value is over the
    config file's; the file's own, good value was blamed. Exit 2, the value never shown."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / name).write_text(value)
    cfg = write(tmp_path, GOOD)
    r = run_cli(cfg, "init", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"syncd: credential file {creds / name} (over config {cfg}): "), r.stderr
    assert said in r.stderr and "hunter2" not in r.stdout + r.stderr, r.stderr


def test_a_credentials_directory_that_is_a_file_is_named(tmp_path):
    """CREDENTIALS_DIRECTORY naming a file, not a directory: one line naming the variable
    and the file, exit 2; pydantic's "secrets_dir must reference a directory" was blamed
    on the config file."""
    creds = tmp_path / "password.txt"
    creds.write_text("hunter2")
    cfg = write(tmp_path, GOOD)
    r = run_cli(cfg, "init", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"syncd: environment variable CREDENTIALS_DIRECTORY ({creds}): not a directory"), \
        r.stderr
    assert "secrets_dir" not in r.stderr and "hunter2" not in r.stdout + r.stderr, r.stderr


@pytest.mark.parametrize("value, said", [
    ('{"dsn": "mysql://syncd:hunter2@127.0.0.1:5432/other"}', "postgres.dsn: must be a postgresql:// URL"),
    ('{"dsn": "postgresql://syncd:hunter2@127.0.0.1:5432/other", "bogus": 1}', "postgres.bogus: unknown key"),
])
def test_a_bad_key_of_a_section_set_whole_from_the_environment_is_named_there(tmp_path, value, said):
    """SYNCD_POSTGRES='{"dsn": ...}' sets the section from the environment: a key in it
    that syncd cannot use is said under that variable, not blamed on the config file (whose
    own keys were fine)."""
    cfg = write(tmp_path, GOOD)
    r = run_cli(cfg, "init", env={"SYNCD_POSTGRES": value})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"syncd: environment variable SYNCD_POSTGRES (over config {cfg}): {said}"), r.stderr
    assert "hunter2" not in r.stdout + r.stderr


def test_an_empty_config_option_is_refused_not_taken_for_the_default_file(tmp_path):
    """`syncd --config "$CONFIG" run` with $CONFIG unset: the operator named a file, and
    syncd silently used ./syncd.toml (or $SYNCD_CONFIG) instead, say another database's.
    One line naming --config, exit 2."""
    import subprocess
    import sys

    write(tmp_path, GOOD)  # ./syncd.toml, which must not be used in its place
    r = subprocess.run([sys.executable, "-m", "syncd", "--config", "", "schema"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert "--config" in r.stderr and "empty" in r.stderr and "sales" not in r.stdout, r.stdout + r.stderr


def test_a_source_set_item_by_item_from_the_environment_is_named(tmp_path):
    """SYNCD_SOURCES__0__PATH=... (a source's path meant to be overridden): one line
    naming that variable, exit 2; the config file's [[sources]], a valid list, was blamed
    ("sources: Input should be a valid list")."""
    cfg = write(tmp_path, GOOD)
    r = run_cli(cfg, "schema", env={"SYNCD_SOURCES__0__PATH": "other.db"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"syncd: environment variable SYNCD_SOURCES__0__PATH (over config {cfg}): "), r.stderr


@pytest.mark.parametrize("text, said", [
    (GOOD.replace("[[sources]]", "[sources]"),
     "sources: is one table ([sources]); write each source as a [[sources]] table (two brackets)"),
    (GOOD.replace("[postgres]", "[[postgres]]"),
     "postgres: is a list of tables ([[postgres]]); write the section as one [postgres] table (one bracket)"),
    (GOOD + "\n[[stream]]\nbatch_size = 10\n",
     "stream: is a list of tables ([[stream]]); write the section as one [stream] table (one bracket)"),
    ('stream = 10\n' + GOOD, "stream: must be a table: a [stream] line, its keys under it"),
])
def test_a_section_written_with_the_wrong_brackets_says_how_to_write_it(tmp_path, text, said):
    """[sources] for [[sources]], [[postgres]] for [postgres]: one bracket too few or too
    many said "Input should be a valid list", or "... a valid dictionary or instance of
    PostgresSettings", a name of syncd's code. One line saying how to write it, exit 2."""
    cfg = write(tmp_path, text)
    r = run_cli(cfg, "init")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr == f"syncd: config {cfg}: {said}\n", r.stderr


def test_a_config_file_saved_with_a_byte_order_mark_is_said_so(tmp_path):
    """A file saved by an editor that puts a UTF-8 byte order mark first (invisible):
    one line saying so and how to save it; it said "Invalid statement (at line 1, column
    1)" of a first line that reads right."""
    cfg = tmp_path / "syncd.toml"
    cfg.write_bytes(b"\xef\xbb\xbf" + GOOD.lstrip().encode())
    r = run_cli(cfg, "init")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"syncd: config {cfg}: ") and "byte order mark" in r.stderr, r.stderr


def test_a_config_file_saved_as_utf16_is_said_so(tmp_path):
    """A file saved as UTF-16 (PowerShell's `>` does, say): one line saying so and how to
    save it; it said "'utf-8' codec can't decode byte 0xff in position 0"."""
    cfg = tmp_path / "syncd.toml"
    cfg.write_bytes(GOOD.encode("utf-16"))
    r = run_cli(cfg, "init")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"syncd: config {cfg}: ") and "UTF-16" in r.stderr and "codec" not in r.stderr, \
        r.stderr


def test_a_config_file_saved_in_a_legacy_encoding_names_the_line(tmp_path):
    """A file saved as Latin-1 (an older editor's default) with an accented letter in a
    comment or a path (/srv/Société/*.db): it said "'utf-8' codec can't decode byte 0xe9
    in position 97: invalid continuation byte", a byte count into the file. One line
    naming the line and column and how to save it."""
    cfg = tmp_path / "syncd.toml"
    cfg.write_bytes(GOOD.replace("[[sources]]", "# tenants of Soci\xe9t\xe9 G\xe9n\xe9rale\n[[sources]]").encode("latin-1"))
    r = run_cli(cfg, "init")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"syncd: config {cfg}: is not UTF-8 text (at line 4, column 18)"), r.stderr
    assert "codec" not in r.stderr and "save it as UTF-8" in r.stderr, r.stderr


def test_a_credential_file_not_utf8_is_named_not_blamed_on_the_config_file(tmp_path):
    """A valid syncd.toml, and systemd's credential postgres__password holding a letter
    saved as Latin-1: it said "config .../syncd.toml: is not UTF-8 text (at line 1, column
    12)", sending the user to a file with nothing wrong. The line says the credential
    file is not UTF-8, never its content."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "postgres__password").write_bytes("hunter2-soci\xe9t\xe9".encode("latin-1"))
    cfg = write(tmp_path, GOOD)
    r = run_cli(cfg, "init", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"syncd: credential file {creds / 'postgres__password'} (over config {cfg}): is not "
                               "UTF-8 text"), r.stderr
    assert "hunter2" not in r.stdout + r.stderr and "codec" not in r.stderr, r.stderr
    # The config file saved as Latin-1 too: the credential file, read first, is the one that
    # failed, named as such (not the config file, at the password's byte positions).
    cfg.write_bytes(("# soci\xe9t\xe9\n" + GOOD).encode("latin-1"))
    r = run_cli(cfg, "init", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"syncd: credential file {creds / 'postgres__password'} (over config"), r.stderr
    assert "hunter2" not in r.stdout + r.stderr, r.stderr


@pytest.fixture(scope="module")
def password_server(tmp_path_factory):
    """A private server that wants a password over TCP (scram-sha-256): 'right'."""
    import asyncio
    import shutil

    import asyncpg

    from tests.support.pgcluster import Cluster, with_database

    c = Cluster.create()
    c.start()
    try:
        async def setup():
            conn = await asyncpg.connect(c.dsn)
            await conn.execute("ALTER ROLE postgres PASSWORD 'right'")
            await conn.execute("CREATE DATABASE target")
            await conn.close()
        asyncio.run(setup())
        hba = c.datadir / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        if c.owner:
            shutil.chown(hba, c.owner)
        c.stop()
        c.start()
        yield with_database(c.dsn, "target")
    finally:
        c.destroy()


@pytest.mark.parametrize("where, works", [
    ({"toml": "right", "PGPASSWORD": "wrong", "pgpass": "wrong"}, True),   # the TOML's over libpq's
    ({"toml": "wrong", "SYNCD_POSTGRES__PASSWORD": "right"}, True),      # the environment's over the TOML's
    ({"toml": "right", "dsn": "wrong"}, True),                           # the TOML's over the DSN's own
    ({"dsn": "right", "PGPASSWORD": "wrong"}, True),                     # the DSN's over libpq's
    ({"PGPASSWORD": "right", "pgpass": "wrong"}, True),                  # PGPASSWORD over ~/.pgpass
    ({"pgpass": "right"}, True),
    ({"toml": "wrong", "PGPASSWORD": "right", "pgpass": "right"}, False),
], ids=lambda v: "-".join(v) if isinstance(v, dict) else str(v))
def test_the_password_is_taken_in_the_documented_order(password_server, tmp_path, monkeypatch, where, works):
    """docs/operations.md, "Credentials": where syncd takes the Postgres password from,
    in order; a place higher in the list wins over every one below it."""
    import sqlite3

    sqlite3.connect(tmp_path / "app.db").execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    dsn = password_server
    if "dsn" in where:
        dsn = dsn.replace("postgresql://postgres@", f"postgresql://postgres:{where['dsn']}@")
    cfg = f'[postgres]\ndsn = "{dsn}"\n' + (f'password = "{where["toml"]}"\n' if "toml" in where else "")
    cfg += '[metrics]\nlisten = ""\n[[sources]]\nname = "app"\npath = "app.db"\n'
    home = tmp_path / "home"
    home.mkdir()
    if "pgpass" in where:
        (home / ".pgpass").write_text(f"*:*:*:postgres:{where['pgpass']}\n")
        (home / ".pgpass").chmod(0o600)
    for name in ("PGPASSWORD", "PGPASSFILE", "SYNCD_POSTGRES__PASSWORD", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    env = {"HOME": str(home), **{k: v for k, v in where.items() if k.isupper()}}
    r = run_cli(write(tmp_path, cfg), "init", env=env)
    assert (r.returncode == 0) == works, r.stdout + r.stderr


@pytest.mark.parametrize("name, value, said", [
    ("PGSSLMODE", "", "not one of disable, allow, prefer, require, verify-ca, verify-full"),
    ("PGSSLMODE", "required", "not one of disable, allow, prefer, require, verify-ca, verify-full"),
    ("PGTARGETSESSIONATTRS", "primary-only", "not one of any, primary, standby, prefer-standby, read-write, "
                                             "read-only"),
    ("PGSSLNEGOTIATION", "tls", "not one of postgres, direct"),
    ("PGGSSLIB", "kerberos", "not one of gssapi, sspi"),
    ("PGPORT", "5432a", "not a port number (or a comma-separated list of them)"),
    ("PGSSLMAXPROTOCOLVERSION", "TLS1.3", "not a TLS version (TLSv1, TLSv1.1, TLSv1.2, TLSv1.3)"),
])
def test_a_libpq_environment_setting_postgres_clients_refuse_is_named_not_taken_for_an_outage(
        tmp_path, pg_dsn, app_db, name, value, said):
    """An invalid PGSSLMODE (or another libpq setting from the environment that syncd's
    Postgres client refuses every connection with) kept the daemon retrying for ever,
    saying Postgres could not be reached: it is one line naming the variable, exit 2,
    which the unit does not restart on."""
    import os
    import subprocess

    from tests.support.daemon import syncd_cmd

    cfg = write(tmp_path, f'[postgres]\ndsn = "{pg_dsn}"\n[metrics]\nlisten = ""\n'
                          f'[[sources]]\nname = "app"\npath = "{app_db}"\n')
    proc = subprocess.Popen(syncd_cmd(cfg, "run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, name: value}, cwd=str(tmp_path))
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"syncd run kept running with {name}={value}: {err[-600:]}")
    assert proc.returncode == 2, err
    assert err == f"syncd: environment variable {name} ({value}): {said}; Postgres clients refuse every " \
                  f"connection with it: correct it or unset it\n", err


def test_a_libpq_environment_setting_the_dsn_overrides_is_not_refused(tmp_path, monkeypatch):
    """asyncpg reads PGSSLMODE (and the others) only where the DSN does not say: a DSN's own
    sslmode wins, and a value clients take is taken."""
    monkeypatch.setenv("PGSSLMODE", "required")
    load_settings(write(tmp_path, GOOD.replace("/synapse", "/synapse?sslmode=disable")))
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv("PGPORT", "5433")
    monkeypatch.setenv("PGSSLMINPROTOCOLVERSION", "TLSv1.3")
    load_settings(write(tmp_path, GOOD))


def test_a_command_run_by_hand_without_the_services_password_says_how_to_give_it(password_server, tmp_path,
                                                                                  monkeypatch):
    """The service gets its Postgres password from systemd (LoadCredential=, as
    $CREDENTIALS_DIRECTORY/postgres__password); `syncd status` or `syncd verify` run by
    hand gets none, and said only that the password was wrong. The line says how to run
    it with the service's credential, or give the password; a wrong password given is
    said as before."""
    import sqlite3

    sqlite3.connect(tmp_path / "app.db").execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    for name in ("PGPASSWORD", "PGPASSFILE", "SYNCD_POSTGRES__PASSWORD", "CREDENTIALS_DIRECTORY", "INVOCATION_ID"):
        monkeypatch.delenv(name, raising=False)
    cfg = write(tmp_path, f'[postgres]\ndsn = "{password_server}"\n[metrics]\nlisten = ""\n'
                          '[[sources]]\nname = "app"\npath = "app.db"\n')
    how = ("syncd was given no Postgres password: the service gets it from systemd (LoadCredential=, as "
           "$CREDENTIALS_DIRECTORY/postgres__password), which a command run by hand does not; run it as the "
           "service's user with its credential and umask (the systemd-run command in docs/operations.md, "
           "\"Commands by hand\"), or give it as SYNCD_POSTGRES__PASSWORD or in ~/.pgpass")
    home = {"HOME": str(tmp_path)}
    for verb in ("status", "verify"):
        r = run_cli(cfg, verb, env=home)
        assert r.returncode == 2 and how in r.stdout, r.stdout + r.stderr
        wrong = run_cli(cfg, verb, env={**home, "SYNCD_POSTGRES__PASSWORD": "wrong"})
        assert wrong.returncode == 2 and "password authentication failed" in wrong.stdout, wrong.stdout
        assert "given no Postgres password" not in wrong.stdout + wrong.stderr


def test_a_password_left_in_postgres_password_is_named_with_the_variable_syncd_reads(password_server, tmp_path,
                                                                                      monkeypatch):
    """A setup that keeps the Postgres password in POSTGRES_PASSWORD (as the postgres
    container image and the Synapse plan do): syncd does not read that variable, and a
    command run with it alone said only that no password was given, pointing at systemd.
    The line names POSTGRES_PASSWORD and how to hand it to syncd, never its value; given
    so, the command goes through."""
    import sqlite3

    sqlite3.connect(tmp_path / "app.db").execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    for name in ("PGPASSWORD", "PGPASSFILE", "SYNCD_POSTGRES__PASSWORD", "CREDENTIALS_DIRECTORY", "INVOCATION_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("POSTGRES_PASSWORD", "right")
    cfg = write(tmp_path, f'[postgres]\ndsn = "{password_server}"\n[metrics]\nlisten = ""\n'
                          '[[sources]]\nname = "app"\npath = "app.db"\n')
    r = run_cli(cfg, "status")
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "password authentication failed" in out, out
    assert 'POSTGRES_PASSWORD is set, which syncd does not read: export SYNCD_POSTGRES__PASSWORD="$POSTGRES_PASSWORD"' \
        in out and "right" not in out, out
    r = run_cli(cfg, "init", env={"SYNCD_POSTGRES__PASSWORD": "right"})
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_wrong_pgpass_entry_is_not_said_to_be_no_password(password_server, tmp_path, monkeypatch):
    """A password given in ~/.pgpass (or the file PGPASSFILE names) that Postgres refuses is
    a wrong password, said as one; before, the line said syncd was given none."""
    import sqlite3

    sqlite3.connect(tmp_path / "app.db").execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    for name in ("PGPASSWORD", "PGPASSFILE", "SYNCD_POSTGRES__PASSWORD", "CREDENTIALS_DIRECTORY", "INVOCATION_ID"):
        monkeypatch.delenv(name, raising=False)
    cfg = write(tmp_path, f'[postgres]\ndsn = "{password_server}"\n[metrics]\nlisten = ""\n'
                          '[[sources]]\nname = "app"\npath = "app.db"\n')
    home = tmp_path / "home"
    home.mkdir()
    (home / ".pgpass").write_text("*:*:*:postgres:wrong\n")
    (home / ".pgpass").chmod(0o600)
    elsewhere = tmp_path / "passfile"
    elsewhere.write_text("*:*:*:postgres:wrong\n")
    elsewhere.chmod(0o600)
    for env in ({"HOME": str(home)}, {"HOME": str(tmp_path), "PGPASSFILE": str(elsewhere)}):
        r = run_cli(cfg, "status", env=env)
        assert r.returncode == 2 and "password authentication failed" in r.stdout, r.stdout + r.stderr
        assert "given no Postgres password" not in r.stdout + r.stderr, r.stdout


def test_the_service_without_a_password_does_not_say_how_to_run_a_command_by_hand(password_server, tmp_path,
                                                                                   monkeypatch):
    """Under systemd (INVOCATION_ID, CREDENTIALS_DIRECTORY set, the credential missing) the
    daemon is no command run by hand: it says Postgres refused the password, not how to
    run a command by hand."""
    import sqlite3

    sqlite3.connect(tmp_path / "app.db").execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    for name in ("PGPASSWORD", "PGPASSFILE", "SYNCD_POSTGRES__PASSWORD", "CREDENTIALS_DIRECTORY", "INVOCATION_ID"):
        monkeypatch.delenv(name, raising=False)
    cfg = write(tmp_path, f'[postgres]\ndsn = "{password_server}"\n[metrics]\nlisten = ""\n'
                          '[[sources]]\nname = "app"\npath = "app.db"\n')
    creds = tmp_path / "credentials"
    creds.mkdir()
    for env in ({"INVOCATION_ID": "0123456789abcdef0123456789abcdef"}, {"CREDENTIALS_DIRECTORY": str(creds)}):
        r = run_cli(cfg, "status", env={"HOME": str(tmp_path), **env})
        assert r.returncode == 2 and "password authentication failed" in r.stdout, r.stdout + r.stderr
        assert "given no Postgres password" not in r.stdout + r.stderr, r.stdout
