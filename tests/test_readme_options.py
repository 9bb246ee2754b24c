"""The README's option table agrees with the command line's parser and with Config: every
flag, environment variable and config-file setting is in it, and nothing else."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from leveret.broker.cli import ENV_VARS, make_parser
from leveret.broker.config import Config
from leveret.broker.configfile import EXTRAS, PLAIN_TABLES

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- options-table: begin", "<!-- options-table: end -->"
#: config-file keys that are tables of their own rather than one Config field
SPECIAL_KEYS = {"[users.NAME]": "hashed_users", "vhosts": "vhosts", "[vhosts.NAME]": "vhost_limits",
                "[[permissions]]": "permissions", "[[topic_permissions]]": "topic_permissions"}
#: Config fields with no key of their own: the default users come from --user (the file's
#: users are by hash, variable or file)
NO_KEY = {"users"}


def table_rows() -> list[list[str]]:
    text = README.read_text()
    assert BEGIN in text and END in text, "the README lost its option-table markers"
    body = text[text.index(BEGIN):text.index(END)].splitlines()[1:]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in body if line.startswith("|")]
    assert rows[0] == ["option", "config file", "default", "what"]
    return rows[2:]


def parser_flags() -> set[str]:
    flags = {s for a in make_parser()._actions for s in a.option_strings if s.startswith("--")}
    return flags - {"--help"}


def field_of(key: str) -> str:
    """A config-file key as written in the table (``[amqp] port``, ``flow_cpu``) -> the
    Config field (or command-line setting) it sets, by the loader's rule."""
    if key in SPECIAL_KEYS:
        return SPECIAL_KEYS[key]
    m = re.fullmatch(r"\[(\w+)\] (\w+)", key)
    if m:
        table, name = m.groups()
        return name if table in PLAIN_TABLES else f"{table}_{name}"
    assert re.fullmatch(r"\w+", key), key
    return key


def test_every_flag_is_in_the_table_and_every_flag_there_exists() -> None:
    in_table = {f for row in table_rows() for f in re.findall(r"--[a-z][a-z0-9-]*", row[0])}
    assert parser_flags() - in_table == set(), "flags missing from the README's option table"
    assert in_table - parser_flags() == set(), "flags in the README's option table that the parser does not have"


def test_every_environment_variable_is_in_the_table() -> None:
    in_table = {v for row in table_rows() for v in re.findall(r"\$([A-Z_]+)", row[0])}
    assert in_table == set(ENV_VARS)
    # (and the parser's help names them too)
    help_text = make_parser().format_help()
    assert all(f"${v}" in help_text for v in ENV_VARS)


def test_every_config_setting_is_in_the_table_and_every_key_there_exists() -> None:
    keys = [k for row in table_rows() for k in re.findall(r"`([^`]+)`", row[1]) if k != '""']
    fields = {field_of(k) for k in keys}
    known = {f.name for f in dataclasses.fields(Config)} | set(EXTRAS)
    assert fields - known == set(), "config-file keys in the README that set nothing"
    assert known - NO_KEY - fields == set(), "config-file settings missing from the README's option table"
