"""Latency histograms, percentiles and the broker's RSS.

Latencies are kept in microseconds in a log-linear histogram: values below 256 µs exactly,
larger ones with their 8 most significant bits (a relative error under 0.4 %).  The bucket
key of ``v`` is ``v`` below 256, else ``(e << 8) | (v >> e)`` with ``e = v.bit_length() - 8``;
keys sort as their values do.  The consumer computes it inline (see ``client.py``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping


def bucket(v: int) -> int:
    """The histogram key of a latency of ``v`` microseconds."""
    if v < 256:
        return v if v > 0 else 0
    e = v.bit_length() - 8
    return (e << 8) | (v >> e)


def bucket_value(key: int) -> float:
    """The value (µs) a bucket stands for: the middle of its range."""
    e = key >> 8
    if e == 0:
        return float(key)
    return float(((key & 0xFF) << e) + (1 << (e - 1)))


def merge(into: dict[int, int], other: Mapping[int, int]) -> None:
    for k, c in other.items():
        into[k] = into.get(k, 0) + c


def percentiles(hist: Mapping[int, int], ps: Iterable[float]) -> list[float | None]:
    """Nearest-rank percentiles (µs) of a histogram; None for an empty one."""
    wanted = list(ps)
    total = sum(hist.values())
    if not total:
        return [None] * len(wanted)
    ranks = [max(1, math.ceil(p / 100.0 * total)) for p in wanted]
    out: list[float | None] = [None] * len(wanted)
    order = sorted(range(len(wanted)), key=lambda i: ranks[i])
    seen = 0
    j = 0
    for key in sorted(hist):
        seen += hist[key]
        while j < len(order) and ranks[order[j]] <= seen:
            out[order[j]] = bucket_value(key)
            j += 1
        if j == len(order):
            break
    return out


def ms(us: float | None, digits: int = 3) -> float | None:
    return None if us is None else round(us / 1000.0, digits)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def read_rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB (None if it is gone or has none)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
