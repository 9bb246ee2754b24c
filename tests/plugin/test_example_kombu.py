"""kombu: test producer and consumer code, with Leveret instead of RabbitMQ."""

from __future__ import annotations

from kombu import Connection, Exchange, Queue
from kombu.message import Message

from leveret.testing import VhostView

# ---- the code under test ---------------------------------------------------------------

media = Exchange("media", type="direct", durable=True)
video_queue = Queue("video", exchange=media, routing_key="video")


def request_thumbnail(url: str, video_id: int) -> None:
    with Connection(url) as connection:
        producer = connection.Producer(serializer="json")
        producer.publish(
            {"video": video_id, "size": "320x180"},
            exchange=media,
            routing_key="video",
            declare=[video_queue],
            retry=True,
        )


def make_thumbnails(url: str, timeout: float = 0.5) -> list[int]:
    """Consume thumbnail requests until none arrives for ``timeout`` seconds."""
    done: list[int] = []

    def on_request(body: dict, message: Message) -> None:
        done.append(body["video"])
        message.ack()

    with Connection(url) as connection:
        with connection.Consumer(video_queue, callbacks=[on_request], accept=["json"]):
            while True:
                try:
                    connection.drain_events(timeout=timeout)
                except TimeoutError:  # (socket.timeout)
                    return done


# ---- the tests -------------------------------------------------------------------------


def test_request_thumbnail_publishes_json_to_the_video_queue(
    amqp_url: str, leveret: VhostView
) -> None:
    request_thumbnail(amqp_url, 42)

    [message] = leveret.peek("video")
    assert message.json() == {"video": 42, "size": "320x180"}
    assert message.content_type == "application/json"
    assert message.exchange == "media" and message.routing_key == "video"
    [binding] = leveret.bindings()
    assert (binding.source, binding.destination, binding.routing_key) == ("media", "video", "video")


def test_make_thumbnails_consumes_every_request(amqp_url: str, leveret: VhostView) -> None:
    for video_id in (1, 2, 3):
        request_thumbnail(amqp_url, video_id)

    assert make_thumbnails(amqp_url, timeout=0.2) == [1, 2, 3]
    assert leveret.message_count("video") == 0
    assert leveret.stats().acked == 3


def test_a_slow_broker_delays_the_consumer(amqp_url: str, leveret: VhostView) -> None:
    request_thumbnail(amqp_url, 7)
    leveret.delay_deliveries(1.0, queue="video")  # every delivery from "video" waits 1 s

    assert make_thumbnails(amqp_url, timeout=0.3) == []  # gave up before it arrived
    assert leveret.peek("video") == []  # (the message is in flight, not in the queue)
    leveret.clear_faults()  # held deliveries are released: its consumer is gone, so it is requeued
    assert make_thumbnails(amqp_url, timeout=0.3) == [7]
