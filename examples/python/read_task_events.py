#!/usr/bin/env python3
"""Lesson 5: read the Task API's own events from `task-events` with
confluent-kafka-python. The values are Avro in the Confluent wire format;
confluent-kafka's AvroDeserializer fetches each schema from the registry by
the id in the record.

    python examples/python/read_task_events.py \
        --bootstrap $(taskstream endpoints kafka) --registry $(taskstream endpoints schema-registry)
"""

import argparse
import time
import uuid

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

parser = argparse.ArgumentParser()
parser.add_argument("--bootstrap", required=True)
parser.add_argument("--registry", required=True)
parser.add_argument("--idle", type=float, default=3.0, help="stop after this many idle seconds")
args = parser.parse_args()

# ANCHOR: avro_consumer
deserialize = AvroDeserializer(SchemaRegistryClient({"url": args.registry}))
consumer = Consumer(
    {
        "bootstrap.servers": args.bootstrap,
        "group.id": f"lesson-reader-{uuid.uuid4()}",  # a fresh group: read everything
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    }
)
consumer.subscribe(["task-events"])
last = time.monotonic()
try:
    while time.monotonic() - last < args.idle:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        event = deserialize(msg.value(), SerializationContext(msg.topic(), MessageField.VALUE))
        print(
            f"partition {msg.partition()} offset {msg.offset()} key {msg.key().decode()}: "
            f"{event['type']} {event['data']['task']['title']!r}",
            flush=True,
        )
        last = time.monotonic()
finally:
    consumer.close()
# ANCHOR_END: avro_consumer
