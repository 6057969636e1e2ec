"""The documentation stays true: every syncd command it shows parses with syncd's own
command line, every relative link resolves, every alert's runbook anchor exists."""

from __future__ import annotations

import re
import shlex

import pytest

from syncd.cli import build_parser
from tests.support.daemon import ROOT

DOCS = [ROOT / "README.md", ROOT / "docs" / "operations.md", ROOT / "docs" / "cutover.md", ROOT / "docs" / "security.md",
        ROOT / "bench" / "README.md", ROOT / "bench" / "HISTORY.md"]


def shell_lines(path):
    for block in re.findall(r"```sh\n(.*?)```", path.read_text(), re.S):
        for line in block.splitlines():
            yield line.split("  #")[0].strip()


def syncd_commands():
    for path in DOCS:
        for line in shell_lines(path):
            if "syncd --config" not in line:
                continue
            words = shlex.split(line.replace(">", " > ").replace("|", " | ").replace(";", " ; "), comments=True)
            for i, w in enumerate(words):
                # every documented invocation reads `syncd --config FILE VERB ...`
                if w.endswith("syncd") and words[i + 1 : i + 2] == ["--config"]:
                    args = [a for a in words[i + 1:] if a != "&"]
                    for stop in (">", "|", ";"):
                        if stop in args:
                            args = args[: args.index(stop)]
                    yield path.name, args


COMMANDS = sorted({(name, tuple(args)) for name, args in syncd_commands()})


def test_docs_show_the_main_commands():
    verbs = {next(a for a in args if not a.startswith("-") and not a.endswith((".toml", ".yml"))) for _, args in COMMANDS}
    assert {"run", "status", "verify", "schema", "init", "report", "resync", "uninstall"} <= verbs


@pytest.mark.parametrize("doc, args", COMMANDS)
def test_documented_command_parses(doc, args):
    parsed = build_parser().parse_args(list(args))  # SystemExit on an unknown verb or flag
    assert callable(parsed.func)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(path):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def anchors(path) -> set[str]:
    out = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(), re.M):
        out.add(re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-"))
    return out


def test_alert_runbooks_point_at_existing_sections():
    ops = anchors(ROOT / "docs" / "operations.md")
    used = re.findall(r"docs/operations\.md#([a-z0-9-]+)", (ROOT / "deploy/prometheus/alerts.yml").read_text())
    assert used and set(used) <= ops, set(used) - ops
    for path in DOCS:
        for anchor in re.findall(r"\(operations\.md#([a-z0-9-]+)\)|\(#([a-z0-9-]+)\)", path.read_text()):
            name = anchor[0] or anchor[1]
            target = ops if anchor[0] or path.name == "operations.md" else anchors(path)
            assert name in target, f"{path.name}: no section #{name}"


def test_config_example_lists_every_setting_with_its_default():
    """config.example.toml says "Every key is listed with its default" (the README: "every
    setting"): each setting of each section is there, set to its default, or, for a
    secret or a setting that has no default value to show, named in a comment."""
    import tomllib

    from syncd.config import Settings

    text = (ROOT / "config.example.toml").read_text()
    example = tomllib.loads(text)
    sections = re.split(r"^\[", text, flags=re.M)
    for section, field in Settings.model_fields.items():
        if section == "sources" or not hasattr(field.annotation, "model_fields"):
            continue  # the sources are the worked example's; the rest syncd works out itself
        shown = example.get(section, {})
        body = next((s for s in sections if s.startswith(f"{section}]")), "")
        for key, setting in field.annotation.model_fields.items():
            if key in shown:
                if key not in ("dsn", "backup_glob"):  # the worked example's own targets and backups
                    assert shown[key] == setting.default, \
                        f"[{section}] {key} = {shown[key]!r}: its default is {setting.default!r}"
            else:
                assert re.search(rf"^# *{key}\b", body, re.M), f"[{section}] {key} is not in config.example.toml"


def test_the_credentials_section_lists_the_password_places_in_the_order_syncd_takes_them():
    """operations.md's "Credentials" list is syncd's order, first place first
    (tests/test_config.py's test_the_password_is_taken_in_the_documented_order runs it)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    listed = re.search(r"## Credentials\n.*?\n\n(1\. .*?)\n\n", text, re.S).group(1)
    places = ["SYNCD_POSTGRES__PASSWORD", "$CREDENTIALS_DIRECTORY/postgres__password", "[postgres] password",
              "the DSN's own password", "PGPASSWORD", "~/.pgpass"]
    at = [listed.find(p) for p in places]
    assert -1 not in at and at == sorted(at), dict(zip(places, at))
