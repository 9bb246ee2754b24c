"""Shared helpers for the Python scenario scripts (see interop/run.py for the protocol).

    from interop_common import env, scenario, run_scenarios, control

    @scenario("connect")
    def connect(): ...

    run_scenarios()          # or: asyncio.run(run_async_scenarios())
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any


class Env:
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    host = os.environ.get("AMQP_HOST", "127.0.0.1")
    port = int(os.environ.get("AMQP_PORT", "5672"))
    user = os.environ.get("AMQP_USER", "guest")
    password = os.environ.get("AMQP_PASSWORD", "guest")
    vhost = os.environ.get("AMQP_VHOST", "/")
    control = os.environ.get("LEVERET_CONTROL", "")
    prefix = os.environ.get("INTEROP_PREFIX", f"interop-{os.getpid()}")


env = Env()


def name(suffix: str) -> str:
    """A queue/exchange name unique to this run."""
    return f"{env.prefix}.{suffix}"


class Skip(Exception):
    """Raise to report the scenario as SKIP."""


class Unsupported(Skip):
    pass


def control(command: str, timeout: float = 30.0) -> None:
    """Ask the runner to stop/start/restart the broker; raises Skip when it cannot."""
    if not env.control:
        raise Unsupported("no LEVERET_CONTROL: the broker cannot be restarted")
    host, _, port = env.control.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(command.encode() + b"\n")
        reply = s.makefile("r").readline().strip()
    if reply == "unsupported":
        raise Unsupported("the broker under test cannot be restarted by the runner")
    if reply != "ok":
        raise RuntimeError(f"control {command!r}: {reply}")


def check(cond: Any, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def eq(got: Any, want: Any, what: str = "value") -> None:
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def wait_until(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition",
               poll: Callable[[float], None] | None = None) -> None:
    """Poll ``cond`` until true; ``poll(seconds)`` drives the client's I/O meanwhile."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        (poll or time.sleep)(0.02)


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())[:300]


def report(status: str, scenario_name: str, reason: str = "") -> None:
    line = f"{status} {scenario_name}" + (f": {reason}" if reason else "")
    print(line, flush=True)


_SCENARIOS: list[tuple[str, Callable[[], Any], float]] = []


Fn = Callable[[], Any]


def scenario(scenario_name: str, timeout: float = 20.0) -> Callable[[Fn], Fn]:
    def deco(fn: Callable[[], Any]) -> Callable[[], Any]:
        _SCENARIOS.append((scenario_name, fn, timeout))
        return fn
    return deco


def _only() -> set[str] | None:
    only = os.environ.get("INTEROP_ONLY")
    return set(only.split(",")) if only else None


class _Alarm(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Alarm()


def run_scenarios() -> None:
    """Run the registered (synchronous) scenarios in order, each under a SIGALRM timeout."""
    only = _only()
    signal.signal(signal.SIGALRM, _on_alarm)
    for scenario_name, fn, timeout in _SCENARIOS:
        if only and scenario_name not in only:
            continue
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            fn()
        except _Alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            report("FAIL", scenario_name, f"timed out after {timeout:.0f} s")
        except Skip as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            report("SKIP", scenario_name, str(exc))
        except Exception as exc:  # noqa: BLE001 - becomes the reason
            signal.setitimer(signal.ITIMER_REAL, 0)
            traceback.print_exc(file=sys.stderr)
            report("FAIL", scenario_name, _reason(exc))
        else:
            signal.setitimer(signal.ITIMER_REAL, 0)
            report("PASS", scenario_name)


async def run_async_scenarios() -> None:
    """Run the registered coroutine scenarios in order, each under asyncio.wait_for."""
    only = _only()
    for scenario_name, fn, timeout in _SCENARIOS:
        if only and scenario_name not in only:
            continue
        try:
            await asyncio.wait_for(fn(), timeout)
        except TimeoutError as exc:
            traceback.print_exc(file=sys.stderr)
            why = _reason(exc) if str(exc) else f"timed out after {timeout:.0f} s"
            report("FAIL", scenario_name, why)
        except Skip as exc:
            report("SKIP", scenario_name, str(exc))
        except Exception as exc:  # noqa: BLE001 - becomes the reason
            traceback.print_exc(file=sys.stderr)
            report("FAIL", scenario_name, _reason(exc))
        else:
            report("PASS", scenario_name)
