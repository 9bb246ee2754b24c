"""The layering of Leveret's packages, checked on the source: every ``import`` and
``from ... import`` of every module (module level, under ``if TYPE_CHECKING:``, inside
functions; relative imports resolved; ``importlib.import_module("...")`` with a literal name
too) is matched against the rules below.

Repository folder -> package: ``broker/`` = ``leveret.broker``, ``protocol/`` =
``leveret.protocol``, ``storage/`` = ``leveret.storage``, ``leveret/`` = ``leveret`` (so
``leveret/testing/`` = ``leveret.testing``).

The check is static: ``broker/__init__.py`` (``leveret.broker``) re-exports ``Broker`` from the server, so
importing any ``leveret.broker.*`` module still loads the server at run time; what is checked
here is which modules each module names.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# repository folder -> the package it is installed as
PACKAGE_DIRS = {
    "broker": "leveret.broker",
    "protocol": "leveret.protocol",
    "storage": "leveret.storage",
    "leveret": "leveret",
}


@dataclass(frozen=True)
class Rule:
    name: str
    applies_to: tuple[str, ...]  # modules these packages (prefixes) contain...
    forbidden: tuple[str, ...]  # ...never import these modules/packages (prefixes)
    # if set: the only leveret.* modules they may import (prefixes); the rest is forbidden
    allowed_leveret: tuple[str, ...] | None = None
    # forbidden at run time, but allowed under `if TYPE_CHECKING:` (annotations only)
    type_only: tuple[str, ...] = ()
    # these exact names are allowed too (not their submodules): the root package's version
    allowed_exact: tuple[str, ...] = ()
    why: str = ""


TESTING = "leveret.testing"
SERVER, CLI, WIRE = "leveret.broker.server", "leveret.broker.cli", "leveret.broker.wire"
HTTP = "leveret.broker.http"

# fmt: off
RULES = [
    Rule("protocol-is-standalone",
         applies_to=("leveret.protocol",),
         forbidden=("leveret.broker", "leveret.storage", TESTING, "asyncio"),
         why="the sans-I/O AMQP codec knows no broker, storage, test tooling or event loop"),
    Rule("storage-is-standalone",
         applies_to=("leveret.storage",),
         forbidden=("leveret.broker", "leveret.protocol", TESTING, "asyncio"),
         why="the message log and metadata store know no AMQP and no event loop"),
    Rule("core-is-below-the-wire",
         applies_to=("leveret.broker.core",),
         forbidden=(WIRE, SERVER, CLI, TESTING, HTTP, "leveret.protocol.frames"),
         allowed_leveret=("leveret.broker.core", "leveret.broker.config",
                          "leveret.protocol", "leveret.storage"),
         why="the messaging core reaches consumers and the node through interfaces "
             "(core.consumer.DeliverySink, core.node.Node); framing belongs to the wire layer"),
    Rule("wire-is-below-the-server",
         applies_to=(WIRE,),
         forbidden=(SERVER, CLI, TESTING, HTTP),
         why="connections and channels sit on the core and the codec, under the server, "
             "which they reach through the interface wire.node.WireNode only"),
    Rule("http-is-above-the-server",
         applies_to=(HTTP,),
         forbidden=(CLI, TESTING, WIRE),
         type_only=(SERVER,),
         why="the management API and Prometheus endpoint use the Broker and the core's public "
             "objects (the server, which starts them, is named in annotations only)"),
    Rule("server-never-imports-test-tooling",
         applies_to=("leveret.broker", "leveret.protocol", "leveret.storage"),
         forbidden=(TESTING,),
         why="leveret.testing is built on the server, never the other way round"),
    Rule("ctl-uses-only-the-http-api",
         applies_to=("leveret.ctl",),
         forbidden=("leveret.broker", "leveret.protocol", "leveret.storage", TESTING),
         allowed_leveret=("leveret.ctl",),
         allowed_exact=("leveret", "leveret.__version__"),  # `from leveret import __version__`
         why="leveret-ctl drives a node through its management HTTP API only, so it works "
             "against any node (Leveret's or RabbitMQ's) and installs nothing of the server's"),
    Rule("no-old-top-level-names",
         applies_to=("leveret",),
         forbidden=("broker", "protocol", "storage"),
         why="Leveret installs only `leveret`: `import broker` would be the user's own broker"),
]
# fmt: on


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    path: str  # its file, relative to the repository
    line: int
    text: str  # the statement as written
    targets: tuple[str, ...]  # absolute names it may import: `from a import b` -> a, a.b
    context: str  # "module level", "under TYPE_CHECKING", "in function f"...

    def where(self) -> str:
        return f"{self.path}:{self.line}  {self.text}  [{self.context}]"


def module_name(path: Path) -> tuple[str, bool]:
    """(dotted name, is a package) of a source file."""
    rel = path.relative_to(REPO)
    package = PACKAGE_DIRS[rel.parts[0]]
    parts = [*package.split("."), *rel.parts[1:-1]]
    if rel.name == "__init__.py":
        return ".".join(parts), True
    return ".".join([*parts, rel.stem]), False


def source_files() -> list[Path]:
    files = []
    for folder in PACKAGE_DIRS:
        files += [p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files)


def resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 >= len(base):
        raise ValueError(f"relative import beyond the top-level package in {module}")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class ImportCollector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, path: str, source: str) -> None:
        self.module, self.is_package, self.path, self.source = module, is_package, path, source
        self.context: list[str] = []
        self.imports: list[Import] = []

    def _add(self, node: ast.AST, targets: list[str]) -> None:
        text = " ".join((ast.get_source_segment(self.source, node) or "").split())
        context = ", ".join(self.context) or "module level"
        self.imports.append(
            Import(self.module, self.path, node.lineno, text, tuple(targets), context)
        )

    def _nested(self, label: str, node: ast.AST) -> None:
        self.context.append(label)
        self.generic_visit(node)
        self.context.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._nested(f"in function {node.name}", node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._nested(f"in class {node.name}", node)

    def visit_If(self, node: ast.If) -> None:
        if not is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        self.context.append("under TYPE_CHECKING")
        for child in node.body:
            self.visit(child)
        self.context.pop()
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        self._add(node, [alias.name for alias in node.names])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = resolve(self.module, self.is_package, node.level, node.module)
        targets = [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]
        self._add(node, targets)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if (
            name in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            self._add(node, [node.args[0].value])
        self.generic_visit(node)


@functools.cache
def all_imports() -> dict[str, tuple[Import, ...]]:
    """module name -> its imports, for every module of broker/, protocol/, storage/, leveret/."""
    result = {}
    for path in source_files():
        module, is_package = module_name(path)
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        collector = ImportCollector(module, is_package, path.relative_to(REPO).as_posix(), source)
        collector.visit(tree)
        result[module] = tuple(collector.imports)
    return result


def violations(rule: Rule) -> list[str]:
    found = []
    for module, imports in sorted(all_imports().items()):
        if not any(within(module, p) for p in rule.applies_to):
            continue
        for imp in imports:
            # `from leveret.protocol import methods` names leveret.protocol and
            # leveret.protocol.methods: report the shortest name a forbidden prefix matches
            bad = []
            for prefix in rule.forbidden:
                if prefix in rule.type_only and "under TYPE_CHECKING" in imp.context:
                    continue
                hits = [t for t in imp.targets if within(t, prefix)]
                if hits:
                    bad.append(f"{min(hits, key=len)} (forbidden: {prefix})")
            leveret = [t for t in imp.targets if within(t, "leveret") and t not in rule.allowed_exact]
            if (
                not bad
                and rule.allowed_leveret is not None
                and leveret
                and not any(within(t, a) for t in leveret for a in rule.allowed_leveret)
            ):
                bad.append(f"{min(leveret, key=len)} (not an allowed leveret.* module)")
            if bad:
                found.append(f"  {module}: {imp.where()}\n      -> {'; '.join(bad)}")
    return found


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_layer_rule(rule: Rule) -> None:
    found = violations(rule)
    if found:
        allowed = ""
        if rule.allowed_leveret is not None:
            allowed = f"\n  (allowed leveret.* imports: {', '.join(rule.allowed_leveret)})"
        pytest.fail(
            f"rule {rule.name}: modules under {', '.join(rule.applies_to)} must not import "
            f"{', '.join(rule.forbidden)}{allowed}\n  ({rule.why})\n"
            f"{len(found)} offending import(s):\n" + "\n".join(found),
            pytrace=False,
        )


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_rule_applies_to_some_modules(rule: Rule) -> None:
    """A rule whose packages were renamed away would pass without checking anything."""
    modules = [m for m in all_imports() if any(within(m, p) for p in rule.applies_to)]
    assert modules, f"rule {rule.name}: no module under {', '.join(rule.applies_to)}"


def test_the_layers_exist() -> None:
    modules = set(all_imports())
    for package in (
        "leveret",
        "leveret.broker",
        "leveret.broker.core",
        "leveret.broker.wire",
        "leveret.protocol",
        "leveret.storage",
        "leveret.testing",
    ):
        assert package in modules, f"{package} has no __init__.py: found {sorted(modules)}"


SAMPLE = """
from __future__ import annotations
import os, json as j
from typing import TYPE_CHECKING
from . import sibling
from .. import config
from ..wire.channel import Channel as C, OPEN
from leveret.protocol import methods as M
if TYPE_CHECKING:
    from leveret.broker.server import Broker
else:
    import logging
def f():
    import broker.cli
    class K:
        from storage import *
async def g():
    import importlib
    importlib.import_module("protocol.frames")
"""


def test_collector_sees_every_kind_of_import() -> None:
    """The extractor itself, on a module ``leveret.broker.core.queue``."""
    collector = ImportCollector("leveret.broker.core.queue", False, "x.py", SAMPLE)
    collector.visit(ast.parse(SAMPLE))
    got = {(i.line, i.targets, i.context) for i in collector.imports}
    assert got == {
        (2, ("__future__", "__future__.annotations"), "module level"),
        (3, ("os", "json"), "module level"),
        (4, ("typing", "typing.TYPE_CHECKING"), "module level"),
        (5, ("leveret.broker.core", "leveret.broker.core.sibling"), "module level"),
        (6, ("leveret.broker", "leveret.broker.config"), "module level"),
        (
            7,
            (
                "leveret.broker.wire.channel",
                "leveret.broker.wire.channel.Channel",
                "leveret.broker.wire.channel.OPEN",
            ),
            "module level",
        ),
        (8, ("leveret.protocol", "leveret.protocol.methods"), "module level"),
        (10, ("leveret.broker.server", "leveret.broker.server.Broker"), "under TYPE_CHECKING"),
        (12, ("logging",), "module level"),
        (14, ("broker.cli",), "in function f"),
        (16, ("storage",), "in function f, in class K"),
        (18, ("importlib",), "in function g"),
        (19, ("protocol.frames",), "in function g"),
    }
    assert resolve("leveret.storage", True, 1, "log") == "leveret.storage.log"
    with pytest.raises(ValueError):
        resolve("leveret.storage.log", False, 3, "x")
