"""``leveret-perf``: an open-loop AMQP 0-9-1 load generator for Leveret or any broker.

``python -m leveret.perf --help`` / ``leveret-perf --help``.  Modules: ``cli`` (options, the
parent process, output), ``worker`` (producer and consumer processes), ``client`` (a minimal
raw AMQP client on asyncio with pre-encoded publishes), ``stats`` (latency histograms).
It imports nothing of the broker.
"""
