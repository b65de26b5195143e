"""Cross-language check: pika (the reference Python client) against a running broker.

Usage: pika_test.py [AMQP_URL]   (default: $AMQP_URL, then amqp://guest:guest@127.0.0.1:5672/%2f)

Declares an exchange and a queue, binds them, publishes with publisher confirms, consumes
with manual acks, uses basic.get, and checks each result. Prints one line per check and a
"N passed, M failed" summary; exits non-zero when anything failed.
"""

import os
import sys
import traceback
import uuid

import pika

URL = (
    sys.argv[1]
    if len(sys.argv) > 1
    else os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
)
# Every blocking wait in this script is bounded: a broker that hangs fails the run.
TIMEOUT_S = 5

results = []


def check(name):
    def wrap(fn):
        try:
            fn()
            results.append((name, None))
            print(f"ok   {name}", flush=True)
        except Exception as error:  # noqa: BLE001 - report every failure, keep going
            results.append((name, error))
            print(f"FAIL {name}: {error!r}", flush=True)
            traceback.print_exc()
        return fn

    return wrap


def connect():
    params = pika.URLParameters(URL)
    params.socket_timeout = TIMEOUT_S
    params.blocked_connection_timeout = TIMEOUT_S
    params.connection_attempts = 1
    return pika.BlockingConnection(params)


suffix = uuid.uuid4().hex[:8]
EXCHANGE = f"pika.ex.{suffix}"
QUEUE = f"pika.q.{suffix}"
KEY = "pika.key"

connection = connect()
channel = connection.channel()


@check("exchange.declare, queue.declare and queue.bind")
def declare():
    channel.exchange_declare(EXCHANGE, exchange_type="direct", durable=False)
    ok = channel.queue_declare(QUEUE, durable=False)
    assert ok.method.queue == QUEUE, ok.method.queue
    assert ok.method.message_count == 0
    assert ok.method.consumer_count == 0
    channel.queue_bind(QUEUE, EXCHANGE, routing_key=KEY)


@check("publish with confirms: every publish acked, unroutable mandatory returned")
def publish_confirmed():
    channel.confirm_delivery()
    props = pika.BasicProperties(
        content_type="text/plain",
        headers={"n": 1, "nested": {"k": "v"}},
        correlation_id="c-1",
        message_id="m-1",
        delivery_mode=2,
    )
    for i in range(10):
        # With confirms on, BlockingChannel.basic_publish waits for the broker's ack and
        # raises NackError / UnroutableError otherwise.
        channel.basic_publish(EXCHANGE, KEY, f"m{i}".encode(), props, mandatory=True)
    try:
        channel.basic_publish(EXCHANGE, "nowhere", b"lost", mandatory=True)
    except pika.exceptions.UnroutableError as returned:
        assert len(returned.messages) == 1
        assert returned.messages[0].body == b"lost"
    else:
        raise AssertionError("unroutable mandatory publish was not returned")
    ok = channel.queue_declare(QUEUE, passive=True)
    assert ok.method.message_count == 10, ok.method.message_count


@check("basic.get: get-ok with message count, properties intact, ack")
def basic_get():
    method, props, body = channel.basic_get(QUEUE, auto_ack=False)
    assert method is not None, "get-empty on a queue with messages"
    assert body == b"m0", body
    assert method.message_count == 9, method.message_count
    assert not method.redelivered
    assert props.content_type == "text/plain"
    assert props.headers == {"n": 1, "nested": {"k": "v"}}, props.headers
    assert props.correlation_id == "c-1"
    assert props.message_id == "m-1"
    assert props.delivery_mode == 2
    channel.basic_ack(method.delivery_tag)


@check("basic.reject with requeue: redelivered at its original position")
def reject_requeue():
    method, _, body = channel.basic_get(QUEUE, auto_ack=False)
    assert body == b"m1", body
    channel.basic_reject(method.delivery_tag, requeue=True)
    method, _, body = channel.basic_get(QUEUE, auto_ack=False)
    assert body == b"m1", body
    assert method.redelivered
    channel.basic_ack(method.delivery_tag)


@check("basic.consume with prefetch and manual acks: the rest in order")
def consume():
    consumer_channel = connection.channel()
    consumer_channel.basic_qos(prefetch_count=3)
    received = []
    deliveries = consumer_channel.consume(QUEUE, auto_ack=False, inactivity_timeout=TIMEOUT_S)
    for method, _, body in deliveries:
        assert method is not None, f"timed out after {received}"
        received.append(body)
        consumer_channel.basic_ack(method.delivery_tag)
        if len(received) == 8:
            break
    consumer_channel.cancel()
    expected = [f"m{i}".encode() for i in range(2, 10)]
    assert received == expected, received
    consumer_channel.close()


@check("basic.get on an empty queue: get-empty")
def get_empty():
    method, props, body = channel.basic_get(QUEUE, auto_ack=True)
    assert method is None and props is None and body is None


@check("channel error: unknown delivery tag closes the channel with 406")
def unknown_tag():
    bad = connection.channel()
    bad.basic_ack(delivery_tag=999)
    try:
        # The next synchronous call sees the channel.close the ack caused.
        bad.queue_declare(QUEUE, passive=True)
    except pika.exceptions.ChannelClosedByBroker as closed:
        assert closed.reply_code == 406, closed
    else:
        raise AssertionError("channel stayed open after an unknown delivery tag")


@check("queue.delete and exchange.delete")
def cleanup():
    ok = channel.queue_delete(QUEUE)
    assert ok.method.message_count == 0
    channel.exchange_delete(EXCHANGE)


try:
    connection.close()
except Exception as error:  # noqa: BLE001
    results.append(("connection.close", error))
    print(f"FAIL connection.close: {error!r}")

failed = sum(1 for _, error in results if error is not None)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
