"""AMQP exceptions raised inside the broker and turned into channel.close or
connection.close by the connection."""

from __future__ import annotations

from leveret.protocol.constants import ACCESS_REFUSED, CHANNEL_ERRORS, REPLY_TEXT


class AMQPError(Exception):
    """A channel or connection exception with RabbitMQ's reply code and text.

    Soft codes (403, 404, 405, 406, ...) close the channel; every other code closes the
    connection, as RabbitMQ does.
    """

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(f"{REPLY_TEXT.get(code, 'ERROR')} - {text}")
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

    @property
    def reply_text(self) -> str:
        return f"{REPLY_TEXT.get(self.code, 'ERROR')} - {self.text}"[:255]

    @property
    def closes_channel(self) -> bool:
        return self.code in CHANNEL_ERRORS


class AccessRefused(AMQPError):
    """403: the user lacks a permission (the HTTP API answers it with 401 not_authorised;
    other 403s, such as an operation on the default exchange, are a bad request there)."""

    def __init__(self, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(ACCESS_REFUSED, text, class_id, method_id)


def rs(kind: str, name: str, vhost: str) -> str:
    """RabbitMQ's resource description: ``queue 'q' in vhost '/'``."""
    return f"{kind} '{name}' in vhost '{vhost}'"
