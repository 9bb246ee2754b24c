"""``leveret-ctl``: rabbitmqctl's everyday commands (list_queues, add_user, set_permissions,
purge_queue, close_connection, export_definitions, status, ...) over the management HTTP API.

``leveret-ctl help`` / ``python -m leveret.ctl help``.  Modules: ``cli`` (options, commands,
output, exit codes), ``client`` (the HTTP client, standard library only), ``items`` (the
info items of the list commands and how values print).  It imports nothing of the broker:
it works against any node serving RabbitMQ's management API.
"""
