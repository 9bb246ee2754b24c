"""Topic routing cost with many bindings (trie + cache vs a regex scan).

    python bench/routing_bench.py --bindings 10000 --keys 50000
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time

# this tree's leveret (e.g. a `git archive` in /tmp), not an installed one
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from leveret.broker.core.exchange import TopicExchange  # noqa: E402


def pattern_to_regex(p: str) -> re.Pattern[str]:
    parts = []
    for w in p.split("."):
        parts.append({"*": r"[^.]+", "#": r".*"}.get(w, re.escape(w)))
    return re.compile("^" + r"\.".join(parts).replace(r"\..*", r"(\..*)?").replace(r".*\.", r"(.*\.)?") + "$")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindings", type=int, default=10000)
    ap.add_argument("--keys", type=int, default=50000)
    ap.add_argument("--distinct", type=int, default=5000, help="distinct routing keys among --keys")
    a = ap.parse_args()
    rnd = random.Random(1)
    words = [f"w{i}" for i in range(50)]
    x = TopicExchange("t")
    patterns = []
    for i in range(a.bindings):
        ws = [rnd.choice(words) for _ in range(rnd.randint(2, 4))]
        if rnd.random() < 0.3:
            ws[rnd.randrange(len(ws))] = "*"
        if rnd.random() < 0.1:
            ws[-1] = "#"
        p = ".".join(ws)
        patterns.append(p)
        x.bind(f"q{i}", p, {})
    distinct = [".".join(rnd.choice(words) for _ in range(rnd.randint(2, 4))) for _ in range(a.distinct)]
    keys = [rnd.choice(distinct) for _ in range(a.keys)]
    t0 = time.perf_counter()
    hits = sum(len(x.route(k, None)) for k in keys)
    dt = time.perf_counter() - t0
    x._cache.clear()
    t1 = time.perf_counter()
    for k in distinct[:2000]:
        x._cache.clear()
        x.route(k, None)
    dt_miss = (time.perf_counter() - t1) / 2000
    regs = [pattern_to_regex(p) for p in patterns]
    t2 = time.perf_counter()
    for k in keys[:200]:
        sum(1 for r in regs if r.match(k))
    dt_re = (time.perf_counter() - t2) / 200
    print(f"{a.bindings} bindings, {a.keys} routes over {a.distinct} distinct keys: {hits / a.keys:.1f} queues/route")
    print(f"  trie + cache: {dt / a.keys * 1e6:.2f} us/route")
    print(f"  trie, cache miss: {dt_miss * 1e6:.1f} us/route")
    print(f"  regex scan over every binding: {dt_re * 1e6:.0f} us/route")


if __name__ == "__main__":
    main()
