"""Leveret's server: listener, connections, channels, vhosts, exchanges, queues."""

from leveret.broker.config import Config
from leveret.broker.server import Broker

__all__ = ["Broker", "Config"]
