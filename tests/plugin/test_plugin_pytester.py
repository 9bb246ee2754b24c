"""The pytest plugin seen from a user's project: pytester runs sample test suites in an
isolated directory (no conftest from this repository), with the plugin loaded through
its ``pytest11`` entry point only."""

from __future__ import annotations

import threading

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""


# hypothesis' pytest plugin costs ~1.5 s per in-process run: leave it out of the samples
FAST = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def _broker_threads() -> set[int | None]:
    return {t.ident for t in threading.enumerate() if t.name == "leveret-broker" and t.is_alive()}


def test_fixtures_isolate_tests_and_clean_up(pytester: pytest.Pytester) -> None:
    before = _broker_threads()
    pytester.makeini(INI)
    pytester.makepyfile(
        test_sample="""
        import pika
        import pytest

        SEEN = []

        @pytest.mark.parametrize("n", range(3))
        def test_same_queue_name_in_every_test(amqp_url, leveret, leveret_broker, n):
            conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
            ch = conn.channel()
            ok = ch.queue_declare("jobs")
            assert ok.method.message_count == 0        # nothing from the other tests
            ch.basic_publish("", "jobs", b"job %d" % n)
            conn.close()
            assert [m.body for m in leveret.peek("jobs")] == [b"job %d" % n]
            assert leveret.vhost in leveret_broker.vhosts()
            assert amqp_url.startswith(f"amqp://guest:guest@{leveret_broker.host}:{leveret_broker.port}/")
            SEEN.append((leveret.vhost, leveret_broker.port))

        def test_vhosts_were_deleted_and_the_broker_shared(leveret_broker):
            assert len(SEEN) == 3
            assert len({vhost for vhost, _ in SEEN}) == 3
            assert len({port for _, port in SEEN}) == 1
            assert leveret_broker.vhosts() == ["/"]
            assert leveret_broker.url == f"amqp://guest:guest@127.0.0.1:{leveret_broker.port}/"
        """
    )
    result = pytester.runpytest(*FAST)
    result.assert_outcomes(passed=4)
    assert _broker_threads() == before  # the session broker was stopped


def test_no_broker_is_started_unless_a_fixture_asks(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(
        """
        import threading

        def threads():
            return {t.ident for t in threading.enumerate() if t.name == "leveret-broker"}

        def pytest_sessionstart(session):
            session.config.broker_threads_at_start = threads()
        """
    )
    pytester.makepyfile(
        test_plain="""
        from conftest import threads

        def test_nothing_running(pytestconfig):
            assert threads() == pytestconfig.broker_threads_at_start
        """
    )
    result = pytester.runpytest(*FAST)
    result.assert_outcomes(passed=1)


def test_coexists_with_asyncio_mode_auto_and_user_fixtures(pytester: pytest.Pytester) -> None:
    """A project with its own `broker` and `url` fixtures and asyncio_mode=auto."""
    pytester.makeini(INI)
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def broker():
            return "the project's own broker fixture"

        @pytest.fixture
        def url():
            return "the project's own url fixture"
        """
    )
    pytester.makepyfile(
        test_async="""
        import aio_pika

        async def test_aio_pika(amqp_url, leveret, broker, url):
            assert broker == "the project's own broker fixture"
            assert url == "the project's own url fixture"
            async with await aio_pika.connect(amqp_url) as conn:
                ch = await conn.channel()
                q = await ch.declare_queue("events")
                await ch.default_exchange.publish(aio_pika.Message(b"e1"), "events")
                msg = await leveret.wait_for_message_async("events", timeout=2)
                assert msg.body == b"e1"
                assert (await q.get(timeout=2)).body == b"e1"
        """
    )
    result = pytester.runpytest(*FAST)
    result.assert_outcomes(passed=1)


def test_markers_give_a_test_its_own_broker(pytester: pytest.Pytester) -> None:
    before = _broker_threads()
    pytester.makeini(INI)
    pytester.makepyfile(
        test_marked="""
        import os
        import pytest

        @pytest.mark.leveret_durable
        def test_durable(leveret, leveret_broker, tmp_path):
            assert leveret.port != leveret_broker.port
            data_dir = leveret.handle.config.data_dir
            assert data_dir.startswith(str(tmp_path)) and os.path.isdir(data_dir)

        @pytest.mark.leveret_subprocess
        def test_subprocess(leveret):
            assert type(leveret.handle).__name__ == "SubprocessBroker"
            assert leveret.handle.pid != os.getpid()
            assert leveret.queues() == []

        @pytest.mark.leveret_config(heartbeat=7, users={"app": "s3cret"})
        def test_config(leveret, amqp_url):
            assert leveret.handle.config.heartbeat == 7
            assert amqp_url.startswith("amqp://app:s3cret@")

        def test_session_broker_is_in_memory(leveret_broker):
            assert leveret_broker.config.data_dir is None
        """
    )
    result = pytester.runpytest(*FAST, "--strict-markers")
    result.assert_outcomes(passed=4)
    assert _broker_threads() == before


def test_subprocess_and_durable_options(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_opts="""
        import os
        import pika

        def test_session_broker_in_a_subprocess(leveret_broker, leveret, amqp_url):
            assert type(leveret_broker).__name__ == "SubprocessBroker"
            assert leveret_broker.pid != os.getpid()
            assert os.path.isdir(leveret_broker.config.data_dir)
            conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
            ch = conn.channel()
            ch.queue_declare("q")
            ch.basic_publish("", "q", b"over the process boundary")
            conn.close()
            assert leveret.wait_for_message(
                "q", timeout=2, predicate=lambda m: m.body.startswith(b"over")
            ).body == b"over the process boundary"
            assert leveret.stats().published == 1
        """
    )
    result = pytester.runpytest(*FAST, "--leveret-subprocess", "--leveret-durable")
    result.assert_outcomes(passed=1)


def test_ini_options(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI + "leveret_subprocess = true\n")
    pytester.makepyfile(
        test_ini="""
        def test_from_ini(leveret_broker):
            assert type(leveret_broker).__name__ == "SubprocessBroker"
        """
    )
    result = pytester.runpytest(*FAST)
    result.assert_outcomes(passed=1)


@pytest.mark.slow
def test_parallel_with_xdist_each_worker_has_its_own_broker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_parallel="""
        import os
        import pathlib

        import pika
        import pytest

        @pytest.mark.parametrize("n", range(8))
        def test_work(amqp_url, leveret, leveret_broker, worker_id, n):
            conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
            ch = conn.channel()
            assert ch.queue_declare("shared-name").method.message_count == 0
            ch.basic_publish("", "shared-name", b"x")
            conn.close()
            assert leveret.message_count("shared-name") == 1
            out = pathlib.Path(os.environ["LEVERET_SAMPLE_OUT"])
            (out / f"{n}.txt").write_text(f"{worker_id} {leveret_broker.port} {os.getpid()}")
        """
    )
    out = pytester.mkdir("out")
    monkeypatch.setenv("LEVERET_SAMPLE_OUT", str(out))
    result = pytester.runpytest_subprocess(*FAST, "-n", "2")
    result.assert_outcomes(passed=8)
    rows = [p.read_text().split() for p in out.iterdir()]
    assert len(rows) == 8
    by_worker: dict[str, set[tuple[str, str]]] = {}
    for worker, port, pid in rows:
        by_worker.setdefault(worker, set()).add((port, pid))
    assert set(by_worker) == {"gw0", "gw1"}
    # one broker (one port) per worker process, and the two differ
    assert all(len(v) == 1 for v in by_worker.values())
    ports = {next(iter(v))[0] for v in by_worker.values()}
    assert len(ports) == 2
