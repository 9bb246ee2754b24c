"""Every fenced code block of README.md and docs/*.md is run or checked, so none can rot.

* ``python``: run.  A block with ``def test_`` runs as a test file of a user's project
  (pytester; the Leveret plugin loaded through its entry point, as tests/plugin/ does);
  any other block runs as a script.
* ``toml``: parsed and loaded through the broker's config loader (``load_config_file``).
* ``json``: parsed.
* ``sh`` and ``console`` (``$ `` lines are commands, the other lines their output):
  every command of ``leveret``, ``python -m leveret``, ``leveret-ctl``, ``python -m
  leveret.ctl``, ``leveret-perf`` and ``python bench/*.py`` is checked against its parser
  (each flag exists; for leveret-ctl: the real option parser, the command exists and takes
  that many arguments).  Then the block is run against a test broker (leveret-ctl and
  ``python -m leveret.ctl`` pointed at its HTTP API by wrappers on PATH, ``localhost:15672``
  and ``:5672`` rewritten to its ports): it must exit 0, and a console block must print
  what it shows.
* A block that cannot run has ``<!-- not-run: reason -->`` on the line before it (blank
  lines between allowed); its commands are still checked.  ``<!-- example: path -->``
  marks a copy of a test file (run by the suite; tests/plugin/test_plugin_docs.py checks
  the copy).  A block of any other language needs one of the two markers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pika
import pytest

from leveret.broker import Config
from leveret.broker.configfile import ConfigError, load_config_file
from leveret.broker.definitions import APPLIED, check_definitions
from leveret.ctl import cli as ctl_cli
from leveret.testing import BrokerThread

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent

FENCE = re.compile(r"^(\s*)(`{3,})([\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!-- (example|not-run): (.+?) -->\s*$")
CAPTION = re.compile(r"^\s*`[^`]+`:\s*$")  # docs/testing.md: "`tests/plugin/x.py`:" between
SHELL = ("sh", "console")
RUN = ("python", "toml", "json", *SHELL)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: tuple[str, str] | None  # ("not-run", reason) / ("example", path)

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO).as_posix()}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    lines = path.read_text().split("\n")
    blocks = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        assert end < len(lines), f"{path.name}:{i + 1}: code block never closed"
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line.lstrip()
                         for line in lines[i + 1:end]) + "\n"
        marker = None
        j = i - 1
        while j >= 0 and (not lines[j].strip() or CAPTION.match(lines[j])):
            j -= 1
        if j >= 0 and (mm := MARKER.match(lines[j])):
            marker = (mm.group(1), mm.group(2))
        blocks.append(Block(path, i + 1, lang, code, marker))
        i = end + 1
    return blocks


@cache
def all_blocks() -> tuple[Block, ...]:
    return tuple(b for path in DOCS for b in parse_blocks(path))


def blocks_of(*langs: str, runnable: bool = False) -> list:
    """The blocks of these languages to run (unmarked), or to check (not-run ones too)."""
    chosen = [b for b in all_blocks() if b.lang in langs
              and (b.marker is None or (not runnable and b.marker[0] == "not-run"))]
    return [pytest.param(b, id=b.id) for b in chosen]


# ---------------------------------------------------------------------- coverage


def test_the_parser_finds_the_blocks() -> None:
    blocks = all_blocks()
    assert len(blocks) >= 20, [b.id for b in blocks]
    assert {"python", "sh", "console"} <= {b.lang for b in blocks}
    readme = [b for b in blocks if b.path.name == "README.md"]
    assert any("def test_publish" in b.code for b in readme)


def test_every_block_is_run_checked_or_marked() -> None:
    bad = []
    for b in all_blocks():
        if b.marker is None:
            if b.lang not in RUN:
                bad.append(f"{b.id}: a ```{b.lang or '(no language)'} block: give it a language "
                           f"this test runs ({', '.join(RUN)}) or <!-- not-run: reason -->")
        elif b.marker[0] == "example":
            target = REPO / b.marker[1]
            if not (b.marker[1].startswith("tests/") and target.is_file()):
                bad.append(f"{b.id}: example of {b.marker[1]}, which is not a test file")
        elif len(b.marker[1].strip()) < 10:
            bad.append(f"{b.id}: not-run needs a reason")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------- python, toml, json

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""


@pytest.mark.parametrize("block", blocks_of("python", runnable=True))
def test_python_block_runs(block: Block, pytester: pytest.Pytester, tmp_path: Path) -> None:
    if re.search(r"^(async )?def test_", block.code, re.M):
        pytester.makeini(INI)
        pytester.makepyfile(test_doc_block=block.code)
        result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
        outcomes = result.parseoutcomes()
        assert outcomes.get("passed", 0) >= 1 and set(outcomes) <= {"passed", "warnings", "warning"}, (
            f"{block.id}:\n" + "\n".join(result.outlines[-30:]))
        return
    code = block.code
    if "@127.0.0.1:5672/" in code:
        # a block that talks to a broker on the default port: a Leveret of its own instead
        with BrokerThread(Config(port=0)) as b:
            code = code.replace("@127.0.0.1:5672/", f"@127.0.0.1:{b.port}/")
            r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                               text=True, timeout=60)
    else:
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert r.returncode == 0, f"{block.id}:\n{r.stdout}\n{r.stderr}"


def load_toml(code: str, folder: Path) -> None:
    tomllib.loads(code)
    path = folder / "leveret.toml"
    path.write_text(code)
    load_config_file(str(path))


@pytest.mark.parametrize("block", blocks_of("toml", runnable=True))
def test_toml_block_loads(block: Block, tmp_path: Path) -> None:
    load_toml(block.code, tmp_path)


def test_a_toml_block_goes_through_the_config_loader(tmp_path: Path) -> None:
    sample = tmp_path / "sample.md"
    sample.write_text("Text.\n\n```toml\n[amqp]\nport = 0\n```\n\n```toml\n[amqp]\nprot = 0\n```\n")
    good, bad = parse_blocks(sample)
    assert (good.lang, good.line, good.marker) == ("toml", 3, None)
    load_toml(good.code, tmp_path)
    with pytest.raises(ConfigError, match="prot"):
        load_toml(bad.code, tmp_path)


@pytest.mark.parametrize("block", blocks_of("json", runnable=True))
def test_json_block_parses(block: Block) -> None:
    """Every JSON block parses; a definitions file (a known section at the top) also goes
    through the broker's own check of definitions."""
    data = json.loads(block.code)
    if isinstance(data, dict) and set(data) & set(APPLIED):
        check_definitions(data, block.id)


# ---------------------------------------------------------------------- shell: the commands


def shell_text(block: Block) -> str:
    """The commands of a block (a console block: its ``$ `` lines)."""
    if block.lang == "console":
        return "\n".join(line[2:] for line in block.code.splitlines() if line.startswith("$ ")) + "\n"
    return block.code


def commands(text: str) -> list[list[str]]:
    """Simple commands: words, split at ``&&``, ``||``, ``;``, ``|``, ``&`` and line ends
    (a backslash-newline continues the line); comments, variable assignments before a
    command and redirections dropped."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.commenters = "#"
        lexer.wordchars += "$%:@,+^[]{}"
        current: list[str] = []
        skip_next = False
        for token in lexer:
            if skip_next:
                skip_next = False
            elif token in (";", "&&", "||", "|", "&"):
                if current:
                    out.append(current)
                current = []
            elif set(token) <= set("<>&"):  # a redirection: > f, >> f, < f, 2>&1
                if token.endswith("&") and current[-1:] == ["2"]:
                    current.pop()
                skip_next = True
            elif not current and re.match(r"^[A-Za-z_]\w*=", token):
                continue
            else:
                current.append(token)
        if current:
            out.append(current)
    return out


@cache
def help_text(*argv: str) -> str:
    r = subprocess.run([*argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (argv, r.stderr)
    return r.stdout


def flags_missing(args: list[str], help_: str) -> list[str]:
    flags = [a.split("=", 1)[0] for a in args if a.startswith("-") and a not in ("-", "--")]
    return [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_)]


def check_command(words: list[str]) -> str | None:
    """What is wrong with one command of ours, or None."""
    python = words[0] in ("python", "python3") or words[0].endswith("/python")
    if python and words[1:3] == ["-m", "leveret.ctl"]:
        words = ["leveret-ctl", *words[3:]]
    elif python and words[1:3] == ["-m", "leveret.perf"]:
        words = ["leveret-perf", *words[3:]]
    elif python and words[1:3] == ["-m", "leveret"]:
        words = ["leveret", *words[3:]]
    name, args = words[0], words[1:]
    if name == "leveret-ctl":
        try:
            opts, rest = ctl_cli.parse_args(args)
        except ctl_cli.CtlError as exc:
            return exc.message
        if opts.version or opts.help or not rest:
            return None if opts.version or opts.help else "no command"
        cmd_name, cmd_args = rest[0], rest[1:]
        if cmd_name == "help":
            return None if len(cmd_args) <= 1 and (not cmd_args or cmd_args[0] in ctl_cli.COMMANDS) else "bad help"
        cmd = ctl_cli.COMMANDS.get(cmd_name)
        if cmd is None:
            return f"no command {cmd_name!r}"
        if len(cmd_args) < cmd.min_args or (cmd.max_args is not None and len(cmd_args) > cmd.max_args):
            return f"{cmd_name} takes {cmd.min_args}..{cmd.max_args} arguments, not {len(cmd_args)}"
        return None
    if name == "leveret":
        missing = flags_missing(args, help_text(sys.executable, "-m", "leveret"))
    elif name == "leveret-perf":
        missing = flags_missing(args, help_text(sys.executable, "-m", "leveret.perf"))
    elif python and len(words) > 1 and re.fullmatch(r"bench/\w+\.py", words[1]):
        missing = flags_missing(words[2:], help_text(sys.executable, words[1]))
    else:
        return None  # pip, curl, git, awk ...: not ours
    return f"unknown option(s) {missing}" if missing else None


def test_commands_split_as_a_shell_does() -> None:
    text = ("A=1 leveret-ctl -p / x 'a b' | awk '$2 > 1' # c\n"
            "leveret --port 1 \\\n  --in-memory && python -c \"x\" > out.txt\n")
    assert commands(text) == [["leveret-ctl", "-p", "/", "x", "a b"], ["awk", "$2 > 1"],
                              ["leveret", "--port", "1", "--in-memory"], ["python", "-c", "x"]]
    assert check_command(["leveret", "--bogus-flag"]) == "unknown option(s) ['--bogus-flag']"
    assert check_command(["leveret-ctl", "list_quees"]) == "no command 'list_quees'"
    assert "unknown option --nope" in (check_command(["leveret-ctl", "--nope", "status"]) or "")
    assert check_command(["leveret-ctl", "purge_queue"]) is not None
    assert check_command(["python", "-m", "leveret.ctl", "-p", "/", "list_queues", "name"]) is None


@pytest.mark.parametrize("block", blocks_of(*SHELL))
def test_shell_block_commands_exist(block: Block) -> None:
    bad = [f"{' '.join(words)}: {problem}" for words in commands(shell_text(block))
           if (problem := check_command(words))]
    assert not bad, f"{block.id}:\n" + "\n".join(bad)


# ---------------------------------------------------------------------- shell: run


@pytest.fixture(scope="module")
def doc_broker() -> Iterator[tuple[BrokerThread, int]]:
    """The state the documents' examples show: queue "orders" (x-max-length 10, 3 messages,
    one consumer) and "events" (empty), both durable, in vhost /."""
    with BrokerThread(Config(port=0, host="127.0.0.1", http_port=0)) as b:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.port))
        ch = conn.channel()
        ch.queue_declare("orders", durable=True, arguments={"x-max-length": 10})
        ch.queue_declare("events", durable=True)
        for _ in range(3):
            ch.basic_publish("", "orders", b"order")
        ch.basic_consume("orders", lambda *args: None)
        conn.process_data_events(0.1)
        assert b.broker is not None and b.broker.http_port
        yield b, b.broker.http_port
        conn.close()


def wrappers(folder: Path, http_port: int) -> dict[str, str]:
    """``leveret-ctl`` and ``python`` on PATH that point leveret-ctl at the test broker."""
    folder.mkdir()
    scripts = {
        "leveret-ctl": f'exec "{BIN / "leveret-ctl"}" -H 127.0.0.1 -P {http_port} "$@"\n',
        "python": (f'if [ "$1" = -m ] && [ "$2" = leveret.ctl ]; then shift 2; '
                   f'exec "{folder / "leveret-ctl"}" "$@"; fi\nexec "{sys.executable}" "$@"\n'),
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEVERET_", "PYTEST_"))}
    env["PATH"] = f"{folder}{os.pathsep}{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def localize(text: str, broker: BrokerThread, http_port: int) -> str:
    text = re.sub(r"\blocalhost:15672\b", f"127.0.0.1:{http_port}", text)
    return re.sub(r"(?<=:)5672\b", str(broker.port), text)


@pytest.mark.parametrize("block", blocks_of(*SHELL, runnable=True))
def test_shell_block_runs(block: Block, doc_broker: tuple[BrokerThread, int], tmp_path: Path) -> None:
    broker, http_port = doc_broker
    env = wrappers(tmp_path / "bin", http_port)
    if block.lang == "sh":
        r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", localize(block.code, broker, http_port)],
                           cwd=tmp_path, env=env, input="s3cret-password\n", capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, f"{block.id}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        return
    # console: each "$ command" with the output shown under it (stderr and stdout, as a terminal)
    steps: list[tuple[str, list[str]]] = []
    for line in block.code.rstrip("\n").splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"{block.id}: output before the first command"
            steps[-1][1].append(line)
    for command, shown in steps:
        r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", localize(command, broker, http_port) + " 2>&1"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{block.id}: {command}: exit {r.returncode}\n{r.stdout}"
        assert r.stdout.splitlines() == shown, f"{block.id}: {command}"
