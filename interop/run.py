#!/usr/bin/env python3
"""Run every client's interop scenario script against Leveret and print the matrix.

    python interop/run.py                          # every client, a fresh broker each
    python interop/run.py --clients pika,aio-pika  # a few
    python interop/run.py --list                   # clients, scenarios, missing toolchains
    python interop/run.py --url amqp://guest:guest@127.0.0.1:5672/   # another broker (RabbitMQ)
    python interop/run.py --write-readme           # also refresh the matrix in interop/README.md

Each client gets its own ``python -m leveret`` subprocess on a free port and a small TCP
*control* port through which its script can stop, start or restart that broker (on the same
port) to test automatic recovery.  A script learns where everything is from the environment:

    AMQP_URL, AMQP_HOST, AMQP_PORT, AMQP_USER, AMQP_PASSWORD, AMQP_VHOST
    LEVERET_CONTROL   host:port; send "restart [seconds down]\\n", "stop\\n" or "start\\n",
                      read "ok\\n" (or "unsupported\\n" with --url, or "error ...\\n")
    INTEROP_PREFIX    a unique prefix for queue/exchange names

and prints one line per scenario on stdout: ``PASS name``, ``FAIL name: reason`` or
``SKIP name: reason``; every other line is ignored.  A scenario the client is expected to
run but never reports (crash, timeout) fails with the script's exit status and last stderr
line.  The exit status is 1 if any cell fails that is not listed in
``interop/known_failures.txt`` (``client scenario: reason`` per line), or if a client's
toolchain is missing and ``--require-all`` is given (CI does).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLIENTS_DIR = os.path.join(HERE, "clients")
KNOWN_FAILURES = os.path.join(HERE, "known_failures.txt")
README = os.path.join(HERE, "README.md")

# the columns of the two tables, in order
CLIENT_SCENARIOS = [
    "connect", "topology", "confirm", "consume_prefetch", "reject_requeue",
    "fanout", "topic", "tx", "close", "reconnect",
]
LINE_RE = re.compile(r"^(PASS|FAIL|SKIP) ([A-Za-z0-9_.\-]+)(?::\s*(.*))?$")

# ---------------------------------------------------------------------------- requirements

Requirement = Callable[[], "str | None"]  # returns None when met, else what is missing


def py_module(*names: str) -> Requirement:
    def check() -> str | None:
        missing = [n for n in names if importlib.util.find_spec(n) is None]
        return f"python package(s) {', '.join(missing)} not installed" if missing else None
    return check


def executable(name: str) -> Requirement:
    def check() -> str | None:
        return None if shutil.which(name) else f"'{name}' not on PATH"
    return check


def path_exists(rel: str, hint: str) -> Requirement:
    def check() -> str | None:
        return None if os.path.exists(os.path.join(ROOT, rel)) else hint
    return check


def command_ok(argv: list[str], hint: str) -> Requirement:
    def check() -> str | None:
        if shutil.which(argv[0]) is None:
            return f"'{argv[0]}' not on PATH"
        try:
            r = subprocess.run(argv, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return hint
        return None if r.returncode == 0 else hint
    return check


# ---------------------------------------------------------------------------- clients


@dataclass
class Client:
    name: str
    group: str  # "clients" or "frameworks": one table each
    argv: list[str]
    scenarios: list[str]
    requires: list[Requirement] = field(default_factory=list)
    timeout: float = 60.0

    def missing(self) -> str | None:
        for req in self.requires:
            why = req()
            if why:
                return why
        return None


def _py(script: str) -> list[str]:
    return [sys.executable, os.path.join(CLIENTS_DIR, script)]


STD = CLIENT_SCENARIOS
NO_RECONNECT = [s for s in STD if s != "reconnect"]
NODE_DIR = os.path.join(CLIENTS_DIR, "node")

CLIENTS: list[Client] = [
    Client("pika-blocking", "clients", _py("pika_blocking.py"),
           NO_RECONNECT + ["mandatory_return", "priority", "durable_restart"], [py_module("pika")]),
    Client("pika-select", "clients", _py("pika_select.py"), NO_RECONNECT, [py_module("pika")]),
    Client("aio-pika", "clients", _py("aio_pika_client.py"), STD, [py_module("aio_pika")]),
    Client("aiormq", "clients", _py("aiormq_client.py"), NO_RECONNECT, [py_module("aiormq")]),
    Client("py-amqp", "clients", _py("py_amqp_client.py"), NO_RECONNECT, [py_module("amqp")]),
    Client("kombu", "clients", _py("kombu_client.py"),
           [s for s in STD if s != "tx"] + ["simple_queue"], [py_module("kombu")]),
    Client("node-amqplib", "clients", ["node", os.path.join(NODE_DIR, "scenarios.js")],
           [s for s in STD if s != "tx"] + ["reconnect_builtin"],
           [executable("node"),
            path_exists("interop/clients/node/node_modules/amqplib",
                        "node modules missing: run 'npm ci' in interop/clients/node"),
            path_exists("interop/clients/node/node_modules/amqp-connection-manager",
                        "node modules missing: run 'npm ci' in interop/clients/node")]),
    Client("amqp-tools", "clients", ["bash", os.path.join(CLIENTS_DIR, "amqp_tools.sh")],
           ["connect", "topology", "consume_prefetch", "requeue_unacked", "fanout", "topic",
            "close"],
           [executable(n) for n in ("amqp-declare-queue", "amqp-publish", "amqp-consume",
                                    "amqp-get", "amqp-delete-queue")]),
    Client("php-amqplib", "clients", ["php", os.path.join(CLIENTS_DIR, "php_amqplib.php")],
           NO_RECONNECT,
           [executable("php"),
            command_ok(["php", "-r", "require 'PhpAmqpLib/autoload.php';"],
                       "php-amqplib not installed (apt-get install php-amqplib)")]),
    Client("ruby-bunny", "clients", ["ruby", os.path.join(CLIENTS_DIR, "ruby_bunny.rb")], STD,
           [executable("ruby"),
            command_ok(["ruby", "-e", "require 'bunny'"],
                       "bunny not installed (apt-get install ruby-bunny)")]),
    Client("celery", "frameworks", _py("celery_client.py"),
           ["task_result", "retry", "routed_queue", "countdown", "group_chord", "inspect_control",
            "acks_late", "reconnect"],
           [py_module("celery")], timeout=120),
    Client("dramatiq", "frameworks", _py("dramatiq_client.py"),
           ["task", "retry", "delayed", "dead_letter", "reconnect"],
           [py_module("dramatiq", "pika")], timeout=90),
    Client("taskiq", "frameworks", _py("taskiq_client.py"), ["task", "labels_delay", "reconnect"],
           [py_module("taskiq", "taskiq_aio_pika")], timeout=90),
    Client("faststream", "frameworks", _py("faststream_client.py"),
           ["publish_subscribe", "topic_fanout", "request_reply", "ack_nack", "reconnect"],
           [py_module("faststream", "aio_pika")], timeout=90),
]

# ---------------------------------------------------------------------------- broker + control


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_BROKER_HELP: list[str] = []


def broker_storage_args(data_dir: str) -> list[str]:
    """``--data-dir`` when this Leveret has one: parallel brokers must not share the default."""
    if not _BROKER_HELP:
        r = subprocess.run([sys.executable, "-m", "leveret", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        _BROKER_HELP.append(r.stdout)
    return ["--data-dir", data_dir] if "--data-dir" in _BROKER_HELP[0] else []


class Leveret:
    """``python -m leveret`` on a fixed port; stop/start keep the port (for reconnect tests)."""

    def __init__(self, log_path: str, data_dir: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.data_dir = data_dir  # its own, kept across restarts (durable queues survive)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.unexpected_exit: str | None = None

    def start(self, timeout: float = 15.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept by the child
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "leveret", "--host", "127.0.0.1", "--port", str(self.port),
                 "--http-port", "off", "--prometheus-port", "off", "--log-level", "warning", *broker_storage_args(self.data_dir)],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("broker did not start listening")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is not None:
            self.unexpected_exit = f"broker exited by itself with status {proc.returncode}"
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            self.unexpected_exit = "broker ignored SIGTERM for 10 s and was killed"

    def mark(self, text: str) -> None:
        """A timestamped line in the broker log (restarts show up next to its output)."""
        stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"=== {stamp} {text}\n")

    def log_tail(self, n: int = 5) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                lines = [ln.rstrip() for ln in f if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def log_problems(self) -> list[str]:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            return []
        return [ln for ln in text.splitlines()
                if "Traceback" in ln or " ERROR " in ln or " CRITICAL " in ln]


class Control:
    """A line-based TCP server through which a scenario script drives its broker."""

    def __init__(self, broker: Leveret | None) -> None:
        self.broker = broker
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rw", encoding="utf-8", newline="\n") as f:
            for line in f:
                words = line.split()
                if not words:
                    continue
                f.write(self._command(words) + "\n")
                f.flush()

    def _command(self, words: list[str]) -> str:
        if self.broker is None:
            return "unsupported"
        cmd = words[0]
        self.broker.mark(f"control: {' '.join(words)}")
        try:
            with self.lock:
                if cmd == "stop":
                    self.broker.stop()
                elif cmd == "start":
                    self.broker.start()
                elif cmd == "restart":
                    self.broker.stop()
                    time.sleep(float(words[1]) if len(words) > 1 else 0.5)
                    self.broker.start()
                elif cmd == "ping":
                    pass
                else:
                    return f"error unknown command {cmd!r}"
        except Exception as exc:  # noqa: BLE001 - reported to the script
            return f"error {exc}"
        self.broker.mark(f"control: {cmd} done")
        return "ok"

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------- running


@dataclass
class Cell:
    status: str  # pass, fail, known, skip
    reason: str = ""


@dataclass
class ClientRun:
    client: Client
    cells: dict[str, Cell] = field(default_factory=dict)
    missing: str | None = None  # toolchain not installed
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    output: str = ""


def load_known(path: str = KNOWN_FAILURES) -> dict[tuple[str, str], str]:
    known: dict[tuple[str, str], str] = {}
    if not os.path.exists(path):
        return known
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            m = re.match(r"^(\S+)\s+(\S+?):\s*(.+)$", line)
            if not m:
                raise SystemExit(f"{path}:{n}: expected 'client scenario: reason', got {line!r}")
            known[(m.group(1), m.group(2))] = m.group(3)
    return known


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_client(client: Client, url: str | None, workdir: str, verbose: bool,
               only: list[str] | None = None) -> ClientRun:
    run = ClientRun(client)
    expected = [s for s in client.scenarios if not only or s in only]
    run.missing = client.missing()
    if run.missing:
        for s in expected:
            run.cells[s] = Cell("skip", run.missing)
        return run
    t0 = time.monotonic()
    broker = None
    if url is None:
        broker = Leveret(os.path.join(workdir, f"{client.name}.broker.log"),
                         os.path.join(workdir, f"{client.name}.data"))
        broker.start()
        url = f"amqp://guest:guest@127.0.0.1:{broker.port}/"
    control = Control(broker)
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if parts.path not in ("", "/") else "/"
    env = dict(os.environ)
    env.update(
        AMQP_URL=url,
        AMQP_HOST=parts.hostname or "127.0.0.1",
        AMQP_PORT=str(parts.port or 5672),
        AMQP_USER=unquote(parts.username or "guest"),
        AMQP_PASSWORD=unquote(parts.password or "guest"),
        AMQP_VHOST=vhost,
        LEVERET_CONTROL=control.address,
        INTEROP_PREFIX=f"interop-{client.name}-{uuid.uuid4().hex[:8]}",
        PYTHONPATH=CLIENTS_DIR + os.pathsep + ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    if only:
        env["INTEROP_ONLY"] = ",".join(only)
    stderr_path = os.path.join(workdir, f"{client.name}.stderr")
    rc: int | None = None
    timed_out = False
    with open(stderr_path, "w+", encoding="utf-8", errors="replace") as err:
        proc = subprocess.Popen(
            client.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
            stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=client.timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out, _ = proc.communicate()
        finally:
            _kill_group(proc)  # workers the script may have left behind
        err.seek(0)
        stderr = err.read()
    control.close()
    if broker is not None:
        broker.stop()
        if broker.unexpected_exit:
            run.notes.append(broker.unexpected_exit)
        problems = broker.log_problems()
        if problems:
            run.notes.append(f"broker log: {problems[0]} (+{len(problems) - 1} more)"
                             if len(problems) > 1 else f"broker log: {problems[0]}")
    run.output = out + ("\n--- stderr ---\n" + stderr if stderr.strip() else "")
    if broker is not None:
        with open(broker.log_path, encoding="utf-8", errors="replace") as f:
            blog = f.read()
        if blog.strip():
            run.output += "\n--- broker log ---\n" + blog[-6000:]
    if verbose:
        print(f"===== {client.name}\n{run.output}", file=sys.stderr)
    for line in out.splitlines():
        m = LINE_RE.match(line.strip())
        if not m:
            continue
        status, name, reason = m.group(1).lower(), m.group(2), (m.group(3) or "").strip()
        run.cells[name] = Cell(status, reason)
    last_err = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    if timed_out:
        why = f"script timed out after {client.timeout:.0f} s"
    else:
        why = f"script exited with status {rc}"
    if last_err:
        why += f"; stderr: {last_err[:200]}"
    for s in expected:
        if s not in run.cells:
            run.cells[s] = Cell("fail", f"not reported ({why})")
    if (timed_out or rc) and all(c.status != "fail" for c in run.cells.values()):
        run.notes.append(why)
        run.cells.setdefault("exit", Cell("fail", why))
    run.seconds = time.monotonic() - t0
    return run


def apply_known(runs: list[ClientRun], known: dict[tuple[str, str], str]) -> list[str]:
    stale = []
    for run in runs:
        for name, cell in run.cells.items():
            reason = known.get((run.client.name, name)) or known.get((run.client.name, "*"))
            if reason is None:
                continue
            if cell.status == "fail":
                cell.status = "known"
                cell.reason = f"{cell.reason} [known: {reason}]"
            elif cell.status == "pass" and (run.client.name, name) in known:
                stale.append(f"{run.client.name} {name}")
    return stale


# ---------------------------------------------------------------------------- output

SYMBOL = {"pass": "pass", "fail": "**FAIL**", "known": "known", "skip": "skip"}


def matrix(runs: list[ClientRun]) -> str:
    """Clients: one column per scenario.  Frameworks (few shared scenarios): one cell per
    framework listing its scenarios."""
    out: list[str] = []
    rows = [r for r in runs if r.client.group == "clients"]
    if rows:
        cols: list[str] = list(CLIENT_SCENARIOS)
        for r in rows:
            for s in [*r.client.scenarios, *r.cells]:
                if s not in cols:
                    cols.append(s)
        used = {s for r in rows for s in r.cells}
        cols = [c for c in cols if c in used]
        out.append("| client | " + " | ".join(cols) + " |")
        out.append("| --- |" + " --- |" * len(cols))
        for r in rows:
            cells = [SYMBOL[r.cells[c].status] if c in r.cells else "–" for c in cols]
            out.append(f"| {r.client.name} | " + " | ".join(cells) + " |")
        out.append("")
    rows = [r for r in runs if r.client.group == "frameworks"]
    if rows:
        out.append("| framework | scenarios |")
        out.append("| --- | --- |")
        for r in rows:
            names = [*r.client.scenarios, *(s for s in r.cells if s not in r.client.scenarios)]
            cells = [f"{s} {SYMBOL[r.cells[s].status]}" for s in names if s in r.cells]
            out.append(f"| {r.client.name} | " + ", ".join(cells) + " |")
        out.append("")
    notes = []
    for r in runs:
        for name, cell in r.cells.items():
            if cell.status != "pass":
                notes.append(f"- {r.client.name} / {name}: {cell.status}: {cell.reason}")
        for note in r.notes:
            notes.append(f"- {r.client.name}: note: {note}")
    if notes:
        out.append("Not passing:")
        out.append("")
        out.extend(notes)
        out.append("")
    return "\n".join(out)


def write_readme(text: str, command: str) -> None:
    start, end = "<!-- matrix:start -->", "<!-- matrix:end -->"
    with open(README, encoding="utf-8") as f:
        doc = f.read()
    if start not in doc or end not in doc:
        raise SystemExit(f"{README} has no {start} ... {end} markers")
    block = f"{start}\nProduced by `{command}` on {time.strftime('%Y-%m-%d')}:\n\n{text}\n{end}"
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(README, "w", encoding="utf-8") as f:
        f.write(head + block + tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", help="comma-separated client names (default: all)")
    p.add_argument("--only", help="comma-separated scenario names (INTEROP_ONLY for the scripts)")
    p.add_argument("--url", help="run against this broker instead of a fresh Leveret per client")
    p.add_argument("--jobs", type=int, default=4, help="clients run in parallel (default 4)")
    p.add_argument("--require-all", action="store_true",
                   help="a client whose toolchain is missing fails the run (CI)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--write-readme", action="store_true",
                   help="replace the matrix in interop/README.md with this run's")
    p.add_argument("--known-failures", default=KNOWN_FAILURES, metavar="PATH",
                   help="allowed failures (default interop/known_failures.txt)")
    p.add_argument("--list", action="store_true", help="list clients and what they need")
    p.add_argument("-v", "--verbose", action="store_true", help="print every script's output")
    a = p.parse_args(argv)

    clients = CLIENTS
    if a.clients:
        wanted = [c.strip() for c in a.clients.split(",") if c.strip()]
        by_name = {c.name: c for c in CLIENTS}
        unknown = [w for w in wanted if w not in by_name]
        if unknown:
            p.error(f"unknown client(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
        clients = [by_name[w] for w in wanted]
    if a.list:
        for c in clients:
            missing = c.missing()
            state = "MISSING: " + missing if missing else "ready"
            print(f"{c.name:15} {state:60} {' '.join(c.scenarios)}")
        return 0

    only = [s.strip() for s in a.only.split(",") if s.strip()] if a.only else None
    known = load_known(a.known_failures)
    if a.url is None:
        broker_storage_args("")  # ask `python -m leveret --help` once, before the threads
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="leveret-interop-") as workdir:
        with concurrent.futures.ThreadPoolExecutor(max(1, a.jobs)) as pool:
            futures = [pool.submit(run_client, c, a.url, workdir, a.verbose, only) for c in clients]
            runs = [f.result() for f in futures]
    stale = apply_known(runs, known)
    text = matrix(runs)
    print(text)
    failed = [(r.client.name, n, c.reason) for r in runs for n, c in r.cells.items()
              if c.status == "fail"]
    missing = [r for r in runs if r.missing]
    for s in stale:
        print(f"note: '{s}' is in known_failures.txt but passed: remove the entry")
    elapsed = time.monotonic() - t0
    counts = {k: sum(c.status == k for r in runs for c in r.cells.values()) for k in SYMBOL}
    print(f"{counts['pass']} pass, {counts['fail']} fail, {counts['known']} known failures, "
          f"{counts['skip']} skipped in {elapsed:.0f} s")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({
                "clients": {r.client.name: {
                    "missing": r.missing,
                    "seconds": round(r.seconds, 1),
                    "notes": r.notes,
                    "cells": {n: {"status": c.status, "reason": c.reason}
                              for n, c in r.cells.items()},
                    "output": r.output[-4000:],
                } for r in runs},
                "stale_known_failures": stale,
            }, f, indent=2)
    if a.write_readme:
        cmd = "python interop/run.py" + (f" --clients {a.clients}" if a.clients else "")
        write_readme(text, cmd)
    if failed:
        return 1
    if missing and a.require_all:
        print("missing toolchains: " + "; ".join(f"{r.client.name}: {r.missing}" for r in missing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
