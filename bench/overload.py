#!/usr/bin/env python3
"""Open-loop overload scenarios: Leveret against RabbitMQ, in the same run.

Built on ``leveret-perf`` (``leveret/perf``): producers publish as fast as the broker
takes messages, so queues grow whenever the consumers cannot keep up.  Scenarios:

* ``firehose``: 1 producer, 1 manual-ack consumer (prefetch 100), 1 KiB, ``--duration`` s;
* ``drain``: publish ``--drain-messages`` (1,000,000) 1 KiB messages, then drain them
  with a manual-ack consumer; the drain rate is compared with the drain of a short queue
  (``--short-messages``, 20,000; the median of five such drains) on the same broker, and the broker's RSS is read once
  the backlog is gone (memory coming back);
* ``big``: 1 MiB messages, 1 producer, 1 manual-ack consumer (prefetch 10);
* ``multi``: 50 producers, 50 autoack consumers, 50 queues, 1 KiB, ``--duration`` s;
* ``big64k``, ``big1m``: 1 producer, 1 autoack consumer, 64 KiB / 1 MiB bodies;
* ``carry``: one Leveret process carries ``multi``, ``big64k`` and ``big1m`` in a row
  (RSS read ``--after`` s after each, and the broker's idle RSS before the first), then
  ``latency`` runs (1 KiB at a steady ``--latency-rate`` msg/s, autoack) on it and on a
  fresh broker, interleaved (``--latency-runs`` each), for the p99 with and without the
  load before it: one latency run against another differs by more than that on a shared
  machine, so neither side gets a quieter moment than the other.

``multi``, ``big64k``, ``big1m`` and ``carry`` use their own queue names and the default
exchange (``--queue-prefix overload-<pid>-``), so they do not touch other users' queues on
a shared RabbitMQ; leveret-perf deletes its queues at the end.

Brokers alternate between repetitions; a fresh Leveret (its own data directory) is
started for every run, RabbitMQ is the one at ``--rabbitmq-url`` (its RSS is read from
the ``beam.smp`` process).  Prints a Markdown table of medians, writes ``--json`` and,
with matplotlib installed, ``--plot`` (queue depth and rates over time of the last
repetition).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LEVERET, RABBITMQ = "Leveret", "RabbitMQ"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rabbitmq_pid() -> int | None:
    out = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


class LeveretProcess:
    def __init__(self, tree: Path, python: str, extra: list[str]) -> None:
        self.port = free_port()
        self.data = Path(tempfile.mkdtemp(prefix="leveret-overload-"))
        self.log = self.data.with_suffix(".log")
        # older trees (an A/B run against the tree before a change) turned the HTTP API and
        # Prometheus off with 0, newer ones with "off" (0 is a free port there)
        help_text = subprocess.run([python, "-m", "leveret", "--help"], cwd=tree, capture_output=True, text=True).stdout
        off = "off" if "off turns it off" in help_text else "0"
        cmd = [python, "-m", "leveret", "--host", "127.0.0.1", "--port", str(self.port), "--http-port", off,
               "--prometheus-port", off, "--data-dir", str(self.data / "d"), "--log-level", "warning", *extra]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=tree, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Leveret exited: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("Leveret did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.data, ignore_errors=True)
        self.log.unlink(missing_ok=True)


def perf(url: str, pid: int | None, args: list[str], timeout: float) -> dict[str, Any]:
    """One leveret-perf run; its JSON summary."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, "-m", "leveret.perf", "--uri", url, "--quiet", "--json", str(out), *args]
    if pid:
        cmd += ["--broker-pid", str(pid)]
    try:
        r = subprocess.run(cmd, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode:
            raise subprocess.CalledProcessError(r.returncode, cmd, stderr=r.stderr)
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def drain_rate(summary: dict[str, Any]) -> float:
    received = summary["totals"]["received"]
    return received / max(1e-9, summary["duration_s"] - (summary.get("publish_duration_s") or 0.0))


def figures(name: str, s: dict[str, Any]) -> dict[str, Any]:
    """The columns of the table from one leveret-perf summary."""
    series = s.get("seconds") or []
    sent = s["totals"]["sent"]
    received = s["totals"]["received"]
    rss = s.get("rss_kib") or {}
    depth = s.get("queue_depth") or {}
    return {
        "sent_rate": s["rates"].get("sent_mean", 0.0) if isinstance(s.get("rates"), dict) else 0.0,
        "received_rate": s["rates"].get("received_mean", 0.0) if isinstance(s.get("rates"), dict) else 0.0,
        "received_over_sent": received / sent if sent else 0.0,
        "peak_depth": depth.get("peak", 0) if isinstance(depth, dict) else 0,
        "p99_ms": (s.get("latency_ms") or {}).get("p99"),
        "peak_rss_mb": (rss.get("peak") or 0) / 1024 if isinstance(rss, dict) else 0.0,
        "series": series,
    }


#: the open-loop, autoack scenarios over many queues / big bodies (leveret-perf arguments)
OPEN_LOOP = {
    "multi": ["-x", "50", "-y", "50", "-u", "50", "-s", "1024", "-a"],
    "big64k": ["-x", "1", "-y", "1", "-s", str(64 << 10), "-a"],
    "big1m": ["-x", "1", "-y", "1", "-s", str(1 << 20), "-a"],
}
CARRY = ("multi", "big64k", "big1m")


def open_loop(name: str, url: str, pid: int | None, args: argparse.Namespace, idle_kib: int) -> dict[str, Any]:
    """One open-loop scenario, then ``--after`` s of quiet: its figures and the RSS then
    (and how far above the broker's idle RSS that is)."""
    extra = ["-e", "", "--queue-prefix", f"overload-{os.getpid()}-{name}-"]
    s = perf(url, pid, [*OPEN_LOOP[name], "-z", str(args.duration), *extra], args.duration + 120)
    out = figures(name, s)
    time.sleep(args.after)
    out["rss_after_mb"] = rss_kib(pid) / 1024 if pid else 0.0
    out["rss_over_idle_mb"] = (rss_kib(pid) - idle_kib) / 1024 if pid else 0.0
    return out


def latency(url: str, pid: int | None, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    extra = ["-e", "", "--queue-prefix", f"overload-{os.getpid()}-lat{tag}-"]
    s = perf(url, pid, ["-x", "1", "-y", "1", "-s", "1024", "-a", "-r", str(args.latency_rate), "-z", str(args.duration), *extra], args.duration + 120)
    return figures("latency", s)


def run_carry(broker: str, args: argparse.Namespace) -> dict[str, Any]:
    """``carry``: the three open-loop scenarios on one broker, then latency runs on it and
    on a fresh one, interleaved (carried, fresh, fresh, carried, ...: ``--latency-runs``
    each), so that the machine's noise of the moment falls on both alike.  The figures of
    each are the medians of its runs (``carried.p99_runs``, ``fresh.p99_runs``: every
    run's p99).  Leveret's fresh broker is a new process, started after the three
    scenarios; RabbitMQ has one node, so its "fresh" runs are on the same node."""
    lev = LeveretProcess(Path(args.leveret_dir), args.leveret_python, args.leveret_arg) if broker == LEVERET else None
    url, pid = (lev.url, lev.proc.pid) if lev is not None else (args.rabbitmq_url, rabbitmq_pid())
    fresh: LeveretProcess | None = None
    out: dict[str, Any] = {}
    try:
        idle = rss_kib(pid) if pid else 0
        out["idle_rss_mb"] = idle / 1024
        for name in CARRY:
            for k, v in open_loop(name, url, pid, args, idle).items():
                out[f"{name}.{k}"] = v
        if lev is not None:
            fresh = LeveretProcess(Path(args.leveret_dir), args.leveret_python, args.leveret_arg)
        targets = {"carried": (url, pid), "fresh": (fresh.url, fresh.proc.pid) if fresh is not None else (url, pid)}
        runs: dict[str, list[dict[str, Any]]] = {"carried": [], "fresh": []}
        for i in range(args.latency_runs):
            for step in ("carried", "fresh") if i % 2 == 0 else ("fresh", "carried"):
                u, p = targets[step]
                runs[step].append(latency(u, p, args, f"{step[0]}{i}"))
        for step, rs in runs.items():
            for k in rs[0]:
                if k == "series":
                    out[f"{step}.series"] = rs[-1]["series"]
                else:
                    vals = [r[k] for r in rs if r.get(k) is not None]
                    out[f"{step}.{k}"] = statistics.median(vals) if vals else None
            out[f"{step}.p99_runs"] = [r["p99_ms"] for r in rs]
    finally:
        for proc in (lev, fresh):
            if proc is not None:
                proc.stop()
    return out


def run_one(scenario: str, broker: str, args: argparse.Namespace) -> dict[str, Any]:
    if scenario == "carry":
        return run_carry(broker, args)
    lev = None
    if broker == LEVERET:
        lev = LeveretProcess(Path(args.leveret_dir), args.leveret_python, args.leveret_arg)
        url, pid = lev.url, lev.proc.pid
    else:
        url, pid = args.rabbitmq_url, rabbitmq_pid()
    try:
        if scenario == "firehose":
            s = perf(url, pid, ["-x", "1", "-y", "1", "-q", "100", "-s", "1024", "-z", str(args.duration)], args.duration + 120)
            return figures(broker, s)
        if scenario == "big":
            s = perf(url, pid, ["-x", "1", "-y", "1", "-q", "10", "-s", str(1 << 20), "-z", str(args.duration)], args.duration + 120)
            return figures(broker, s)
        if scenario in OPEN_LOOP:
            return open_loop(scenario, url, pid, args, rss_kib(pid) if pid else 0)
        if scenario == "drain":
            # (a short drain takes ~0.2 s: the median of five, so one hiccup is not the figure)
            shorts = [
                drain_rate(perf(url, pid, ["-q", "100", "-s", "1024", "-C", str(args.short_messages), "--drain-after-publish"], 300))
                for _ in range(5)
            ]
            s = perf(url, pid, ["-q", "100", "-s", "1024", "-C", str(args.drain_messages), "--drain-after-publish"], 900)
            time.sleep(args.settle)
            out = figures(broker, s)
            out["publish_rate"] = s["totals"]["sent"] / max(1e-9, s.get("publish_duration_s") or 1.0)
            out["drain_rate"] = drain_rate(s)
            out["short_drain_rate"] = statistics.median(shorts)
            out["drain_ratio"] = out["drain_rate"] / out["short_drain_rate"] if out["short_drain_rate"] else 0.0
            out["rss_after_mb"] = rss_kib(pid) / 1024 if pid else 0.0
            return out
        raise ValueError(scenario)
    finally:
        if lev is not None:
            lev.stop()


def med(runs: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def table(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    lines = []
    for scenario, by_broker in results.items():
        if scenario == "carry":
            lines += [
                f"\n### {scenario} (one broker: {', '.join(CARRY)}; then latency runs at a steady rate on it "
                "and on a fresh broker, interleaved: medians of their runs)",
                "| broker | step | sent msg/s | received msg/s | received / sent | peak RSS MB | RSS after MB (idle) | latency p99 ms |",
                "|---|---|---:|---:|---:|---:|---:|---:|",
            ]
            for b, runs in by_broker.items():
                for step in (*CARRY, "carried", "fresh"):
                    after = (f"{med(runs, step + '.rss_after_mb'):,.0f} ({med(runs, 'idle_rss_mb'):,.0f})"
                             if step in CARRY else "")
                    lines.append(
                        f"| {b} | {step if step in CARRY else 'latency, ' + step} | {med(runs, step + '.sent_rate'):,.0f} | "
                        f"{med(runs, step + '.received_rate'):,.0f} | {med(runs, step + '.received_over_sent'):.2f} | "
                        f"{med(runs, step + '.peak_rss_mb'):,.0f} | {after} | {med(runs, step + '.p99_ms'):,.2f} |"
                    )
            for b, runs in by_broker.items():
                for step in ("carried", "fresh"):
                    each = "; ".join(", ".join(f"{v:.2f}" for v in r.get(f"{step}.p99_runs") or []) for r in runs)
                    lines.append(f"\n{b} latency p99 ms, {step}, every run (repetitions apart by ';'): {each}")
            if LEVERET in by_broker and RABBITMQ in by_broker:
                for step in CARRY:
                    r = med(by_broker[LEVERET], step + ".received_rate") / med(by_broker[RABBITMQ], step + ".received_rate")
                    lines.append(f"\nLeveret / RabbitMQ ({step}, received msg/s): {r:.2f}")
            continue
        if scenario == "drain":
            lines += [
                f"\n### {scenario}",
                "| broker | publish msg/s | drain msg/s | short-queue drain msg/s | drain / short | peak depth | peak RSS MB | RSS after drain MB |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for b, runs in by_broker.items():
                lines.append(
                    f"| {b} | {med(runs, 'publish_rate'):,.0f} | {med(runs, 'drain_rate'):,.0f} | "
                    f"{med(runs, 'short_drain_rate'):,.0f} | {med(runs, 'drain_ratio'):.2f} | {med(runs, 'peak_depth'):,.0f} | "
                    f"{med(runs, 'peak_rss_mb'):,.0f} | {med(runs, 'rss_after_mb'):,.0f} |"
                )
        else:
            lines += [
                f"\n### {scenario}",
                "| broker | sent msg/s | received msg/s | received / sent | peak depth | latency p99 ms | peak RSS MB | RSS after MB |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for b, runs in by_broker.items():
                lines.append(
                    f"| {b} | {med(runs, 'sent_rate'):,.0f} | {med(runs, 'received_rate'):,.0f} | "
                    f"{med(runs, 'received_over_sent'):.2f} | {med(runs, 'peak_depth'):,.0f} | {med(runs, 'p99_ms'):,.0f} | "
                    f"{med(runs, 'peak_rss_mb'):,.0f} | {med(runs, 'rss_after_mb'):,.0f} |"
                )
        if LEVERET in by_broker and RABBITMQ in by_broker:
            key = "drain_rate" if scenario == "drain" else "received_rate"
            r = med(by_broker[LEVERET], key) / med(by_broker[RABBITMQ], key)
            lines.append(f"\nLeveret / RabbitMQ ({key.replace('_', ' ')}): {r:.2f}")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scenarios = [s for s in ("firehose", "drain", "big", *OPEN_LOOP) if s in results]
    if not scenarios:
        return False
    fig, axes = plt.subplots(2, len(scenarios), figsize=(5 * len(scenarios), 6), squeeze=False)
    for col, scenario in enumerate(scenarios):
        for broker, runs in results[scenario].items():
            series = runs[-1].get("series") or []
            t = [p.get("t", i + 1) for i, p in enumerate(series)]
            axes[0][col].plot(t, [p.get("depth", 0) for p in series], label=broker)
            axes[1][col].plot(t, [p.get("received", 0) for p in series], label=f"{broker} received")
            axes[1][col].plot(t, [p.get("sent", 0) for p in series], "--", label=f"{broker} sent")
        axes[0][col].set_title(f"{scenario}: queue depth")
        axes[1][col].set_title(f"{scenario}: msg/s")
        axes[1][col].set_xlabel("s")
        for ax in (axes[0][col], axes[1][col]):
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="firehose,drain,big")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--duration", type=int, default=20, help="seconds of the firehose and big runs")
    p.add_argument("--drain-messages", type=int, default=1_000_000)
    p.add_argument("--short-messages", type=int, default=20_000)
    p.add_argument("--settle", type=float, default=3.0, help="seconds before reading RSS after the drain")
    p.add_argument("--after", type=float, default=10.0, help="seconds before reading RSS after an open-loop scenario")
    p.add_argument("--latency-rate", type=int, default=5000, help="msg/s of the latency runs (carry)")
    p.add_argument("--latency-runs", type=int, default=3,
                   help="latency runs on the carried broker and as many on a fresh one, interleaved (carry)")
    p.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    p.add_argument("--no-rabbitmq", action="store_true")
    p.add_argument("--leveret-dir", default=str(REPO), help="source tree to run Leveret from")
    p.add_argument("--leveret-python", default=sys.executable)
    p.add_argument("--leveret-arg", action="append", default=[])
    p.add_argument("--json", default="", help="write all runs here")
    p.add_argument("--plot", default="", help="write a PNG of depth and rates over time here")
    args = p.parse_args(argv)
    brokers = [LEVERET] if args.no_rabbitmq else [LEVERET, RABBITMQ]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for scenario in args.scenarios.split(","):
        results[scenario] = {b: [] for b in brokers}
        for rep in range(args.repeat):
            for b in brokers if rep % 2 == 0 else reversed(brokers):
                try:
                    r = run_one(scenario, b, args)
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                    print(f"{scenario} {b} #{rep + 1}: failed: {getattr(exc, 'stderr', '') or exc}", flush=True)
                    continue
                results[scenario][b].append(r)
                print(
                    f"{scenario} {b} #{rep + 1}: "
                    + ", ".join(f"{k} {v:,.2f}" for k, v in r.items() if isinstance(v, int | float)),
                    flush=True,
                )
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot and plot(results, Path(args.plot)):
        print(f"plot written to {args.plot}")
    os.environ.pop("_", None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
