"""``leveret-perf``, the load generator: run as a subprocess against the test broker.

The broker is the pytest plugin's session broker (a thread of this process), each test with
a vhost of its own (``amqp_url``), so ``--broker-pid`` of this process samples its RSS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pamqp import frame as pframe

from leveret.perf import stats
from leveret.perf.client import parse_uri, publish_frames
from leveret.perf.worker import Role, assign


def run_perf(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run ``python -m leveret.perf ARGS --json FILE``: its output and the summary."""
    out = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "leveret.perf", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_open_loop_run(amqp_url: str, leveret: Any, tmp_path: Path) -> None:
    proc, s = run_perf(
        tmp_path,
        "--uri", amqp_url, "-x", "1", "-y", "1", "-q", "100", "-s", "256", "-z", "2",
        "--broker-pid", str(os.getpid()),
    )  # fmt: skip
    t = s["totals"]
    assert s["end_reason"] == "time"
    assert t["received"] > 0
    assert t["sent"] >= t["received"]
    lat = s["latency_ms"]
    assert lat["count"] > 0
    assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert len(s["seconds"]) >= 2
    assert len(s["queue_depth"]["series"]) == len(s["seconds"])
    assert s["queue_depth"]["peak"] is not None
    assert s["rates"]["sent_mean"] > 0 and s["rates"]["received_median"] is not None
    assert s["rss_kib"]["peak"] > 0 and len(s["rss_kib"]["series"]) >= 2
    assert s["blocked"] == {"events": 0, "time_s": 0.0}
    assert s["parameters"]["qos"] == 100 and not s["parameters"]["autoack"]
    assert "latency p50/p95/p99" in proc.stdout and "summary:" in proc.stdout
    assert leveret.queue_names() == []  # deleted at the end


def test_publish_then_drain(amqp_url: str, leveret: Any, tmp_path: Path) -> None:
    _, s = run_perf(
        tmp_path,
        "--uri", amqp_url, "-C", "2000", "--drain-after-publish", "-q", "100", "-A", "10",
        "-c", "200", "--persistent", "-s", "100",
    )  # fmt: skip
    assert s["end_reason"] == "drained"
    assert s["totals"] == {"sent": 2000, "confirmed": 2000, "nacked": 0, "received": 2000}
    assert s["latency_ms"]["count"] == 2000
    assert s["publish_duration_s"] is not None
    assert leveret.queue_names() == []


def test_keep_queues_and_fanout(amqp_url: str, leveret: Any, tmp_path: Path) -> None:
    _, s = run_perf(
        tmp_path,
        "--uri", amqp_url, "-x", "1", "-y", "2", "-u", "2", "-t", "fanout", "-C", "300",
        "-a", "--keep-queues", "--queue-prefix", "kept-",
    )  # fmt: skip
    assert s["totals"]["sent"] == 300
    assert s["totals"]["received"] == 600  # every message to both queues
    assert leveret.queue_names() == ["kept-0", "kept-1"]


def test_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "leveret.perf", "--help"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and "--pmessages" in out.stdout
    script = shutil.which("leveret-perf", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("leveret-perf is not installed as a script (pip install -e .)")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--drain-after-publish" in out.stdout


def test_histogram_percentiles() -> None:
    hist: dict[int, int] = {}
    for v in range(1, 10001):  # 1 µs .. 10 ms
        k = stats.bucket(v)
        hist[k] = hist.get(k, 0) + 1
    p50, p99 = stats.percentiles(hist, (50, 99))
    assert p50 is not None and p99 is not None
    assert abs(p50 - 5000) / 5000 < 0.01 and abs(p99 - 9900) / 9900 < 0.01
    assert stats.percentiles({}, (50,)) == [None]
    assert [stats.bucket_value(stats.bucket(v)) for v in (0, 7, 255)] == [0, 7, 255]


def test_uri_frames_and_assignment() -> None:
    u = parse_uri("amqp://u:p%40ss@localhost:5673/%2F")
    assert (u.host, u.port, u.user, u.password, u.vhost) == ("localhost", 5673, "u", "p@ss", "/")
    assert parse_uri("amqp://127.0.0.1").vhost == "/"
    assert parse_uri("amqp://h/v1").vhost == "v1"
    # a body larger than a frame: the timestamp goes first, the rest in further body frames
    prefix, suffix = publish_frames("", "q", 300, True, 128)
    data = prefix + b"TIMESTMP" + suffix
    decoded = []
    while data:
        used, channel, obj = pframe.unmarshal(data)
        decoded.append(obj)
        data = data[used:]
    method, header, *bodies = decoded
    assert method.routing_key == "q" and header.body_size == 300
    assert header.properties.delivery_mode == 2
    assert [len(b.value) for b in bodies] == [120, 120, 60]
    assert bodies[0].value.startswith(b"TIMESTMP")
    roles = [Role("producer", i, i, "q") for i in range(3)] + [
        Role("consumer", 3 + i, i, "q") for i in range(3)
    ]
    groups = assign(roles, 2)
    assert len(groups) == 2
    assert {r.kind for r in groups[0]} == {"producer"} and {r.kind for r in groups[1]} == {
        "consumer"
    }
    assert len(assign(roles, 16)) == 6
    assert len(assign(roles[:1], 4)) == 1
