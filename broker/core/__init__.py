"""The messaging core: vhosts, exchanges, routing, queues, consumers, messages, persistence.

It never imports the wire layer (``leveret.broker.wire``) or the server: a queue hands a
message to a consumer through :class:`~leveret.broker.core.consumer.DeliverySink`, which
the wire layer's channel implements, and it reaches the node it runs in through
:class:`~leveret.broker.core.node.Node`, which the server implements.
"""
