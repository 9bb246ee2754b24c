"""Leveret: an AMQP 0-9-1 message broker on asyncio, wire-compatible with RabbitMQ.

Everything Leveret installs lives under this one name:

* ``leveret.broker``   the server (``leveret.broker.core``: the messaging core;
  ``leveret.broker.wire``: connections and channels on top of it);
* ``leveret.protocol`` the sans-I/O AMQP 0-9-1 codec;
* ``leveret.storage``  the append-only message log and the metadata store;
* ``leveret.testing``  brokers, inspection and fault injection for tests, and the pytest
  plugin (the server never imports it).

In the repository the first three are the top-level folders ``broker/``, ``protocol/`` and
``storage/``; an installed copy (see ``[tool.setuptools.package-dir]`` in pyproject.toml)
has them inside this package.  Run from a source tree without installing (benchmarks of a
``git archive``), the subpackages are found beside this folder instead.
"""

import os as _os

#: Leveret's version: its one home.  pyproject.toml reads it (``dynamic = ["version"]``), and
#: ``leveret --version``, ``leveret-ctl version``, the server's connection.start ``version``
#: property, the HTTP API's overview (``product_version``) and Prometheus'
#: ``rabbitmq_build_info`` (``product_version``) all show this one.
__version__ = "0.1.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "broker")) and _os.path.isfile(
    _os.path.join(_root, "broker", "core", "__init__.py")
):
    __path__.append(_root)  # noqa: F821  (a source checkout: leveret.broker is ../broker)
