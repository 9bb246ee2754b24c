"""Leveret's server: listener, connections, channels, vhosts, exchanges, queues."""

from broker.config import Config
from broker.server import Broker

__all__ = ["Broker", "Config"]
