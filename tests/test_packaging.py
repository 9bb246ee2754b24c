"""Leveret installs one top-level name, ``leveret``, and nothing else.

It used to install top-level ``broker``, ``protocol`` and ``storage`` packages.  Those names
are common in users' projects, and Leveret's pytest plugin (the ``pytest11`` entry point) is
loaded in every pytest session of every project that has Leveret installed, so a project with
its own ``broker/`` package got "Error while loading plugin pytest11 ... No module named
'broker.pytest_plugin'" (``python -m pytest``: the project's ``broker`` shadowed Leveret's) or
an AttributeError in its own tests (``pytest``: Leveret's ``broker`` shadowed the project's).

The repository keeps its top-level folders ``broker/``, ``protocol/``, ``storage/``;
``[tool.setuptools.package-dir]`` in pyproject.toml maps them to ``leveret.broker``,
``leveret.protocol``, ``leveret.storage``.  These tests check the result as a user sees it:
a sample project with packages of those names, the wheel, and the two ways to run the broker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts: pytest, leveret

# repository folder -> the package it is installed as
PACKAGE_DIRS = {
    "leveret": "leveret",
    "broker": "leveret.broker",
    "protocol": "leveret.protocol",
    "storage": "leveret.storage",
}


def user_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH (so the Leveret checkout is not on
    sys.path: Leveret is found only as installed), and nothing from this pytest session
    (PYTEST_ADDOPTS, PYTEST_PLUGINS, PYTEST_DISABLE_PLUGIN_AUTOLOAD, xdist's variables...)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PYTEST_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def source_modules() -> dict[str, str]:
    """Every .py file of the installed packages: installed path -> repository path."""
    files = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(REPO / folder).as_posix()
            files[f"{package.replace('.', '/')}/{rel}"] = path.relative_to(REPO).as_posix()
    return files


def project_version() -> str:
    """leveret/__init__.py's ``__version__``, which pyproject.toml reads (``dynamic``)."""
    match = re.search(r'^__version__ = "([^"]+)"$', (REPO / "leveret" / "__init__.py").read_text(), re.M)
    assert match, "leveret/__init__.py must set __version__ to a string literal"
    return match.group(1)


# --------------------------------------------------------------------------------------------
# a. A user's project with its own broker/, protocol/, storage/ packages


SAMPLE_PACKAGES = {
    "broker/__init__.py": """
        NAME = "sample-broker"

        def start():
            return "the sample project's broker started"
        """,
    "broker/server.py": 'KIND = "sample-broker-server"\n',
    "protocol/__init__.py": """
        NAME = "sample-protocol"

        def encode(text):
            return "sample:" + text
        """,
    "protocol/frames.py": 'KIND = "sample-protocol-frames"\n',
    "storage/__init__.py": """
        NAME = "sample-storage"

        def save(item):
            return ["saved", item]
        """,
    "storage/log.py": 'KIND = "sample-storage-log"\n',
}

SAMPLE_TEST = """
    import pathlib
    import sys
    import time

    import pika

    import broker
    import broker.server
    import protocol
    import protocol.frames
    import storage
    import storage.log

    HERE = pathlib.Path(__file__).resolve().parent
    OWN = {"broker": broker, "protocol": protocol, "storage": storage}


    def inside_project(module):
        return pathlib.Path(module.__file__).resolve().is_relative_to(HERE)


    def test_the_projects_own_packages_are_imported():
        assert broker.NAME == "sample-broker"
        assert broker.start() == "the sample project's broker started"
        assert protocol.NAME == "sample-protocol"
        assert protocol.encode("x") == "sample:x"
        assert storage.NAME == "sample-storage"
        assert storage.save(1) == ["saved", 1]
        assert broker.server.KIND == "sample-broker-server"
        assert protocol.frames.KIND == "sample-protocol-frames"
        assert storage.log.KIND == "sample-storage-log"
        for module in (*OWN.values(), broker.server, protocol.frames, storage.log):
            assert inside_project(module), (module.__name__, module.__file__, str(HERE))


    def test_leverets_plugin_was_autoloaded_through_its_entry_point(pytestconfig):
        plugin = pytestconfig.pluginmanager.get_plugin("leveret")   # the entry point's name
        assert plugin is not None, "Leveret's pytest11 entry point was not loaded"
        assert plugin.__name__ == "leveret.testing.pytest_plugin"
        dists = [
            dist.project_name
            for p, dist in pytestconfig.pluginmanager.list_plugin_distinfo()
            if p is plugin
        ]
        assert dists == ["leveret"]
        assert not inside_project(plugin)


    def test_publish_and_get_through_leverets_fixture(amqp_url):
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = connection.channel()
            channel.queue_declare("sample-jobs")
            channel.basic_publish("", "sample-jobs", b"from the sample project")
            deadline = time.monotonic() + 5
            body = None
            while body is None and time.monotonic() < deadline:
                _method, _props, body = channel.basic_get("sample-jobs", auto_ack=True)
        finally:
            connection.close()
        assert body == b"from the sample project"
        # running Leveret's broker did not replace the project's packages
        for name, module in OWN.items():
            assert sys.modules[name] is module, name
        assert sys.modules["leveret.broker"].__name__ == "leveret.broker"
    """

SAMPLE_TESTS = 3

LAUNCHERS = {
    "pytest": [str(BIN / "pytest")],
    "python -m pytest": [sys.executable, "-m", "pytest"],
}


def make_sample_project(root: Path) -> None:
    (root / "pytest.ini").write_text("[pytest]\n")
    for rel, text in SAMPLE_PACKAGES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    (root / "test_sample.py").write_text(textwrap.dedent(SAMPLE_TEST).lstrip())


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_user_project_with_its_own_broker_protocol_storage_packages(
    pytester: pytest.Pytester, launcher: str
) -> None:
    """The project's own ``broker``/``protocol``/``storage`` are the ones its tests import,
    and Leveret's plugin, autoloaded (no ``-p``), gives them a working ``amqp_url``."""
    make_sample_project(pytester.path)
    env = user_env()
    proc = subprocess.run(
        LAUNCHERS[launcher],
        cwd=pytester.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = f"$ {launcher}  (cwd {pytester.path})\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, output
    outcomes = pytest.RunResult.parse_summary_nouns(proc.stdout.splitlines())
    counted = {k: v for k, v in outcomes.items() if k != "warnings"}
    assert counted == {"passed": SAMPLE_TESTS}, output


# --------------------------------------------------------------------------------------------
# b. The wheel


def copy_checkout(dest: Path) -> None:
    """The files of the checkout (tracked, and new files not ignored by .gitignore), without
    .venv, .git, build/, *.egg-info...: the build runs on this copy, never in the repository."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(
            REPO,
            dest,
            ignore=shutil.ignore_patterns(
                ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
            ),
        )
        return
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():  # a file deleted in the working tree is still in the index
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def build_droppings() -> set[str]:
    return {
        p.name
        for p in REPO.iterdir()
        if p.name in ("build", "dist") or p.name.endswith(".egg-info")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    before = build_droppings()
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist = tmp / "src", tmp / "dist"
    copy_checkout(src)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(dist), str(src)],
        cwd=tmp,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    assert build_droppings() == before, "building the wheel left files in the repository"
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    (tmp / "build.log").write_text(proc.stdout + proc.stderr)
    return wheels[0]


@pytest.mark.slow
def test_wheel_builds_without_setuptools_warnings(wheel: Path) -> None:
    """No deprecation with a deadline (``project.license`` as a table) and no package left
    out of ``packages`` (``leveret.broker.http.static``): setuptools' build warnings."""
    log = (wheel.parent.parent / "build.log").read_text()
    warnings = [line.strip() for line in log.splitlines() if "BuildBackendWarning" in line
                or "SetuptoolsDeprecationWarning" in line]
    assert warnings == [], warnings


def _requirement_names(specs: list[str]) -> set[str]:
    import re

    names = set()
    for spec in specs:
        spec = spec.split("#")[0].strip()
        if spec:
            names.add(re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_every_test_dependency_is_pinned_by_the_constraints_file() -> None:
    """CI installs with tests/constraints.txt: every package the project and its test and
    interop extras name (and interop/requirements.txt) has an exact pin there, and .ci/run
    and interop/install.sh use the file."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _requirement_names(meta["dependencies"])
    for extra in ("test", "interop"):
        wanted |= _requirement_names(meta["optional-dependencies"][extra])
    wanted |= _requirement_names((REPO / "interop" / "requirements.txt").read_text().splitlines())
    pins = {}
    for line in (REPO / "tests" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            pins[name.lower().replace("_", "-")] = version
    assert sorted(wanted - pins.keys()) == []
    assert {"pip", "setuptools", "wheel"} <= pins.keys()
    assert 'PIP_CONSTRAINT="$PWD/tests/constraints.txt"' in (REPO / ".ci" / "run").read_text()
    assert "tests/constraints.txt" in (REPO / "interop" / "install.sh").read_text()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_installs_only_leveret(wheel: Path) -> None:
    dist_info = f"leveret-{project_version()}.dist-info"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()

    stray = [n for n in names if n.split("/")[0] not in ("leveret", dist_info)]
    assert not stray, f"files outside leveret/ and {dist_info}/ in {wheel.name}: {stray}"
    not_shipped = [n for n in names if {"tests", "bench", "interop"} & set(n.split("/")[:-1])]
    assert not not_shipped, f"tests/bench/interop files in {wheel.name}: {not_shipped}"
    for required in (
        "leveret/__init__.py",
        "leveret/__main__.py",
        "leveret/broker/__init__.py",
        "leveret/protocol/__init__.py",
        "leveret/storage/__init__.py",
        "leveret/testing/pytest_plugin.py",
    ):
        assert required in names, f"{required} is not in {wheel.name}: {names}"

    sections: dict[str, dict[str, str]] = {}
    section = None
    for line in entry_points.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = sections.setdefault(line[1:-1], {})
        elif line and section is not None:
            name, _, value = line.partition("=")
            section[name.strip()] = value.strip()
    assert sections.get("console_scripts", {}).get("leveret") == "leveret.broker.cli:main", (
        entry_points
    )
    assert sections.get("console_scripts", {}).get("leveret-ctl") == "leveret.ctl.cli:main", (
        entry_points
    )
    assert sections.get("pytest11", {}).get("leveret") == "leveret.testing.pytest_plugin", (
        entry_points
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_has_every_source_module(wheel: Path) -> None:
    """Every .py file of broker/, protocol/, storage/, leveret/ (subpackages included, e.g.
    broker/core/, broker/wire/) is in the wheel at its installed path."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    missing = {inst: repo for inst, repo in source_modules().items() if inst not in names}
    assert not missing, f"{wheel.name} lacks {len(missing)} module(s): " + ", ".join(
        f"{inst} (from {repo})" for inst, repo in sorted(missing.items())
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_has_the_dashboards_static_files(wheel: Path) -> None:
    """The web dashboard's files (broker/http/static/, package data) are in the wheel where
    ``importlib.resources`` finds them: leveret/broker/http/static/."""
    from leveret.broker.http.dashboard import FILES

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    missing = [f for f in FILES if f"leveret/broker/http/static/{f}" not in names]
    assert not missing, f"{wheel.name} lacks the dashboard's {missing}"


IMPORT_ALL = """
import importlib, json, sys, traceback
wheel, site_dirs, names = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
sys.path[:] = [wheel, *sys.path, *site_dirs]
result = {}
for name in names:
    try:
        module = importlib.import_module(name)
    except BaseException as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = frame.filename + ":" + str(frame.lineno) + ": " + (frame.line or "")
        result[name] = type(exc).__name__ + ": " + str(exc) + "  (at " + where + ")"
    else:
        where = getattr(module, "__file__", "") or ""
        if not where.startswith(wheel):
            result[name] = "imported from " + where + ", not from the wheel"
print(json.dumps(result))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_imports_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """Every module imports from the wheel alone: an interpreter with neither the checkout
    nor the editable install (-I -S: no PYTHONPATH, no .pth files) and the wheel, as a zip,
    first on sys.path, third-party dependencies from this venv's site-packages."""
    names = sorted(
        inst[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        for inst in source_modules()
        if inst != "leveret/__main__.py"  # running it would start the broker
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORT_ALL, str(wheel),
         json.dumps(site.getsitepackages()), json.dumps(names)],
        cwd=tmp_path,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    failed = json.loads(proc.stdout)
    by_reason: dict[str, list[str]] = {}
    for name, why in failed.items():
        by_reason.setdefault(why, []).append(name)
    assert not failed, f"{len(failed)} module(s) do not import from {wheel.name}:\n" + "\n".join(
        f"  {why}\n    modules: {', '.join(names)}" for why, names in by_reason.items()
    )


# --------------------------------------------------------------------------------------------
# c. Running the broker: `python -m leveret` and the `leveret` console script


@pytest.mark.parametrize(
    "command",
    [[sys.executable, "-m", "leveret"], [str(BIN / "leveret")]],
    ids=["python -m leveret", "leveret"],
)
def test_cli_help(command: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [*command, "--help"],
        cwd=tmp_path,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.startswith("usage: leveret"), proc.stdout
