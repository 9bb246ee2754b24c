"""The management API's resources, one module per resource (as rabbitmq_management has
one handler module per resource): each has ``add_routes(api)``, which hooks its paths
into the one route table of ``api.Api``, and the functions that build its JSON objects.
Requests reach them with an ``api.Ctx`` (the user, the path's arguments, the body)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from leveret.broker.http.resources import (
    bindings,
    channels,
    connections,
    consumers,
    definitions,
    exchanges,
    health,
    limits,
    overview,
    permissions,
    queues,
    users,
    vhosts,
)

if TYPE_CHECKING:
    from leveret.broker.http.api import Api

MODULES = (overview, vhosts, limits, users, permissions, exchanges, queues, bindings, connections, channels,
           consumers, definitions, health)


def add_routes(api: Api) -> None:
    for module in MODULES:
        module.add_routes(api)
