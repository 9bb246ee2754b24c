import pika


def test_publish(amqp_url, leveret):
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.queue_declare("jobs")
    channel.basic_publish("", "jobs", b"hello")
    connection.close()

    assert leveret.peek("jobs")[0].body == b"hello"
