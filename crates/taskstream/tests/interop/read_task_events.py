#!/usr/bin/env python3
"""Reads task events with confluent-kafka-python and prints one JSON object
per record: key, headers, partition, offset, the wire-format header (magic
byte and schema id) and the value decoded by confluent-kafka's own
SchemaRegistryClient and AvroDeserializer (or as JSON without --registry).

Used by the interop tests to check what taskstream publishes with a client
that taskstream did not write."""

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", default="task-events")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--registry", help="schema registry URL; values are Avro")
    args = parser.parse_args()
    deserialize = None
    if args.registry:
        deserialize = AvroDeserializer(SchemaRegistryClient({"url": args.registry}))

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"interop-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    seen = 0
    deadline = time.monotonic() + args.timeout
    try:
        while seen < args.count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            headers = {k: v.decode() for k, v in (msg.headers() or [])}
            raw = msg.value()
            if deserialize:
                value = deserialize(raw, SerializationContext(msg.topic(), MessageField.VALUE))
            else:
                value = json.loads(raw)
            print(
                json.dumps(
                    {
                        "key": msg.key().decode(),
                        "headers": headers,
                        "partition": msg.partition(),
                        "offset": msg.offset(),
                        "magic": raw[0],
                        "schema_id": int.from_bytes(raw[1:5], "big"),
                        "value": value,
                    },
                    default=str,
                ),
                flush=True,
            )
            seen += 1
    finally:
        consumer.close()
    if seen < args.count:
        print(f"read {seen} of {args.count} records before the timeout", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
