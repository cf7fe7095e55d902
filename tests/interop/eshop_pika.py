"""A foreign eShop client, written with pika, for the wire-compatibility test.

    eshop_pika.py publish URL         publishes one OrderStatusChangedToPaidIntegrationEvent
                                      as eShopOnContainers' EventBusRabbitMQ does
    eshop_pika.py publish-json URL ROUTING_KEY JSON [TRACEPARENT]
                                      publishes JSON (an event with its Id and CreationDate) the same way,
                                      with a W3C traceparent header as eShop's OpenTelemetry propagator writes it
    eshop_pika.py consume URL QUEUE   declares QUEUE bound to OrderStatusChangedToShippedIntegrationEvent,
                                      prints "ready", then prints the body of the first message as JSON
"""
import json
import sys
import uuid
from datetime import datetime, timezone

import pika

EXCHANGE = "eshop_event_bus"


def channel(url):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    ch = connection.channel()
    # As EventBusRabbitMQ declares it: direct, not durable.
    ch.exchange_declare(exchange=EXCHANGE, exchange_type="direct")
    return connection, ch


def publish(url):
    connection, ch = channel(url)
    event = {
        "Id": str(uuid.uuid4()),
        "CreationDate": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
        "OrderId": 4711,
        "OrderStatus": "paid",
        "BuyerName": "alice",
        "OrderStockItems": [{"ProductId": 7, "Units": 2}],
    }
    ch.basic_publish(
        exchange=EXCHANGE,
        routing_key="OrderStatusChangedToPaidIntegrationEvent",
        body=json.dumps(event).encode(),
        properties=pika.BasicProperties(delivery_mode=2),
    )
    print(json.dumps(event), flush=True)
    connection.close()


def publish_json(url, routing_key, body, traceparent=None):
    connection, ch = channel(url)
    headers = {"traceparent": traceparent} if traceparent else None
    ch.basic_publish(
        exchange=EXCHANGE,
        routing_key=routing_key,
        body=body.encode(),
        properties=pika.BasicProperties(delivery_mode=2, headers=headers),
    )
    connection.close()


def consume(url, queue):
    connection, ch = channel(url)
    ch.queue_declare(queue=queue, durable=True, exclusive=False, auto_delete=False)
    ch.queue_bind(queue=queue, exchange=EXCHANGE, routing_key="OrderStatusChangedToShippedIntegrationEvent")
    print("ready", flush=True)
    for method, _properties, body in ch.consume(queue, inactivity_timeout=30):
        if method is None:
            sys.exit("nothing arrived within 30 s")
        ch.basic_ack(method.delivery_tag)
        print(json.dumps(json.loads(body)), flush=True)
        break
    ch.queue_delete(queue=queue)
    connection.close()


if __name__ == "__main__":
    if sys.argv[1] == "publish":
        publish(sys.argv[2])
    elif sys.argv[1] == "publish-json":
        publish_json(sys.argv[2], sys.argv[3], sys.argv[4], *sys.argv[5:6])
    else:
        consume(sys.argv[2], sys.argv[3])
